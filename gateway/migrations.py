"""The gateway database schema, as an ordered list of named migrations.

A migration is applied once, in order, inside a transaction, and recorded in
``_migrations`` with its name and time. Released migrations are never edited or
reordered: a schema change is a new migration appended at the end, written so
that existing rows survive it (add columns with defaults, copy before drop).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database

Migration = tuple[str, Callable[[Database], None]]


def _gateway_meta(db: Database) -> None:
    # Facts about this gateway that must not change under it (its DID, the
    # schema generation it was created with), as key/value pairs.
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


def _device_registry(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE devices (
            did TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            owner TEXT,
            topics TEXT NOT NULL DEFAULT '[]',
            capabilities TEXT NOT NULL DEFAULT '[]',
            metadata TEXT NOT NULL DEFAULT '{}',
            status TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            replaces TEXT REFERENCES devices(did),
            replaced_by TEXT REFERENCES devices(did)
        )
        """
    )
    db.execute("CREATE INDEX devices_status ON devices(status)")


def _registry_audit(db: Database) -> None:
    # Append-only: who did what to which device, when and why.
    db.execute(
        """
        CREATE TABLE registry_audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            device TEXT NOT NULL REFERENCES devices(did),
            reason TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '{}'
        )
        """
    )
    db.execute("CREATE INDEX registry_audit_device ON registry_audit(device, id)")
    for verb in ("UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER registry_audit_no_{verb.lower()} BEFORE {verb} ON registry_audit "
            "BEGIN SELECT RAISE(ABORT, 'registry_audit is append-only'); END"
        )


def _resolution_cache(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE did_cache (
            did TEXT PRIMARY KEY,
            document TEXT NOT NULL,
            source TEXT NOT NULL,
            retrieved_at REAL NOT NULL
        )
        """
    )


def _chain(db: Database) -> None:
    # The tamper-evident record (gateway/chain/store.py explains every column).
    # Actors are stored once and referred to by number: a DID is ~56 bytes and
    # the same few devices write most entries.
    db.execute("CREATE TABLE chain_actors (id INTEGER PRIMARY KEY, did TEXT NOT NULL UNIQUE)")
    db.execute(
        """
        CREATE TABLE chain_entries (
            seq INTEGER PRIMARY KEY,
            ts INTEGER NOT NULL,
            kind TEXT NOT NULL,
            actor INTEGER NOT NULL REFERENCES chain_actors(id),
            commitment BLOB NOT NULL,
            prev_hash BLOB NOT NULL,
            hash BLOB NOT NULL,
            salt BLOB,
            payload BLOB,
            erased_by INTEGER
        )
        """
    )
    # Hashes of perfect Merkle subtrees (level >= 4); the rest is recomputed from
    # the entries when a proof needs it.
    db.execute(
        "CREATE TABLE chain_nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, "
        "hash BLOB NOT NULL, PRIMARY KEY (level, idx)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE chain_checkpoints (size INTEGER PRIMARY KEY, root BLOB NOT NULL, "
        "ts INTEGER NOT NULL, text TEXT NOT NULL)"
    )
    # The record only grows. The one permitted change is erasure: payload and
    # salt become NULL and erased_by names the erasure entry.
    db.execute(
        "CREATE TRIGGER chain_entries_no_delete BEFORE DELETE ON chain_entries "
        "BEGIN SELECT RAISE(ABORT, 'the chain is append-only'); END"
    )
    db.execute(
        "CREATE TRIGGER chain_entries_no_rewrite "
        "BEFORE UPDATE OF seq, ts, kind, actor, commitment, prev_hash, hash ON chain_entries "
        "BEGIN SELECT RAISE(ABORT, 'the chain is append-only'); END"
    )
    db.execute(
        "CREATE TRIGGER chain_entries_erase_only BEFORE UPDATE OF salt, payload, erased_by "
        "ON chain_entries WHEN NEW.payload IS NOT NULL OR NEW.salt IS NOT NULL "
        "OR NEW.erased_by IS NULL OR OLD.erased_by IS NOT NULL "
        "BEGIN SELECT RAISE(ABORT, 'chain payloads can only be erased, once'); END"
    )
    for table in ("chain_nodes", "chain_checkpoints"):
        for verb in ("UPDATE", "DELETE"):
            db.execute(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'the chain is append-only'); END"
            )


def _chain_keys(db: Database) -> None:
    # Idempotent appends: an entry may carry a key unique per (actor, kind), such as
    # a device's reading sequence number, so that a reading sent twice (its ack was
    # lost) is found instead of recorded twice. Also answers "last seq of device X".
    db.execute(
        "CREATE TABLE chain_keys (actor INTEGER NOT NULL, kind TEXT NOT NULL, "
        "key INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (actor, kind, key)) WITHOUT ROWID"
    )
    for verb in ("UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER chain_keys_no_{verb.lower()} BEFORE {verb} ON chain_keys "
            "BEGIN SELECT RAISE(ABORT, 'the chain is append-only'); END"
        )


def _anchors(db: Database) -> None:
    # Checkpoints on their way to the ledger (gateway/anchor/queue.py explains the
    # states). A row is written before its transaction is broadcast, so a crash
    # between the two re-sends the same signed bytes rather than a second anchor.
    db.execute(
        """
        CREATE TABLE anchors (
            id INTEGER PRIMARY KEY,
            size INTEGER NOT NULL UNIQUE,
            root BLOB NOT NULL,
            checkpoint TEXT NOT NULL,
            created_ms INTEGER NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('queued', 'sent', 'confirmed', 'superseded')),
            covered_by INTEGER REFERENCES anchors(id),
            chain_id INTEGER,
            address TEXT,
            nonce INTEGER,
            tx_hash BLOB,
            raw_tx BLOB,
            sent_ms INTEGER,
            sends INTEGER NOT NULL DEFAULT 0,
            block_number INTEGER,
            block_hash BLOB,
            confirmed_ms INTEGER
        )
        """
    )
    db.execute("CREATE INDEX anchors_state ON anchors(state, size)")
    # Health of the anchoring loop as the last attempt left it: read by
    # `didgw anchor status` from another process.
    db.execute(
        "CREATE TABLE anchor_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
        "updated_ms INTEGER NOT NULL)"
    )


def _energy_market(db: Database) -> None:
    # Meters the gateway vouches for (gateway/energy/meter.py): their key is the gateway's
    # to hold; port and equipment id as enrolled and as first seen on the wire.
    db.execute(
        """
        CREATE TABLE meters (
            did TEXT PRIMARY KEY REFERENCES devices(did),
            household TEXT NOT NULL REFERENCES devices(did),
            port TEXT NOT NULL,
            key_file TEXT NOT NULL,
            equipment_id TEXT,
            peak_export_w INTEGER NOT NULL DEFAULT 0,
            created_ms INTEGER NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX meters_household ON meters(household)")
    # The registers of every vouched reading, for settlement (the reading itself, signed,
    # is chain entry `entry`).
    db.execute(
        "CREATE TABLE meter_readings (meter TEXT NOT NULL, seq INTEGER NOT NULL, "
        "ts INTEGER NOT NULL, import_wh INTEGER NOT NULL, export_wh INTEGER NOT NULL, "
        "power_export_w INTEGER NOT NULL, entry INTEGER NOT NULL, PRIMARY KEY (meter, seq)) "
        "WITHOUT ROWID"
    )
    db.execute("CREATE INDEX meter_readings_ts ON meter_readings(meter, ts)")
    # The market (gateway/market/): accepted orders, cleared intervals, trades, statements;
    # each row names the chain entry that records it.
    db.execute(
        "CREATE TABLE market_orders (household TEXT NOT NULL, seq INTEGER NOT NULL, "
        "interval INTEGER NOT NULL, side TEXT NOT NULL CHECK (side IN ('sell', 'buy')), "
        "wh INTEGER NOT NULL, price INTEGER NOT NULL, entry INTEGER NOT NULL, "
        "received_ms INTEGER NOT NULL, PRIMARY KEY (household, seq))"
    )
    db.execute("CREATE INDEX market_orders_interval ON market_orders(interval)")
    db.execute(
        "CREATE TABLE market_intervals (interval INTEGER PRIMARY KEY, cleared_ms INTEGER, "
        "price INTEGER, volume_wh INTEGER NOT NULL DEFAULT 0, settled_ms INTEGER)"
    )
    db.execute(
        "CREATE TABLE market_trades (interval INTEGER NOT NULL, idx INTEGER NOT NULL, "
        "seller TEXT NOT NULL, offer_seq INTEGER NOT NULL, buyer TEXT NOT NULL, "
        "bid_seq INTEGER NOT NULL, wh INTEGER NOT NULL, price INTEGER NOT NULL, "
        "entry INTEGER NOT NULL, PRIMARY KEY (interval, idx))"
    )
    db.execute(
        "CREATE TABLE market_statements (interval INTEGER NOT NULL, household TEXT NOT NULL, "
        "body TEXT NOT NULL, entry INTEGER NOT NULL, PRIMARY KEY (interval, household))"
    )
    for table in ("meter_readings", "market_orders", "market_trades", "market_statements"):
        for verb in ("UPDATE", "DELETE"):
            db.execute(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )


def _credentials(db: Database) -> None:
    # Credentials the gateway issued: what they are and to whom, never their claims (the
    # holder keeps those). ``status_index`` is the credential's bit in the gateway's
    # revocation list; a revocation sets ``revoked_ms`` and is never undone.
    db.execute(
        """
        CREATE TABLE credentials (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            subject TEXT NOT NULL,
            format TEXT NOT NULL CHECK (format IN ('vc', 'sd-jwt')),
            status_index INTEGER NOT NULL UNIQUE,
            issued_ms INTEGER NOT NULL,
            expires_ms INTEGER NOT NULL,
            revoked_ms INTEGER,
            revoked_by TEXT,
            revoke_reason TEXT
        )
        """
    )
    db.execute("CREATE INDEX credentials_subject ON credentials(subject)")
    db.execute(
        "CREATE TRIGGER credentials_no_unrevoke BEFORE UPDATE ON credentials "
        "WHEN OLD.revoked_ms IS NOT NULL "
        "BEGIN SELECT RAISE(ABORT, 'a revoked credential stays revoked'); END"
    )
    db.execute(
        "CREATE TRIGGER credentials_no_delete BEFORE DELETE ON credentials "
        "BEGIN SELECT RAISE(ABORT, 'issued credentials are never deleted'); END"
    )


def _anchor_txs(db: Database) -> None:
    # Every transaction signed for an anchor, with its bytes. One that sits unmined is
    # replaced by another with the same nonce and higher fees, and either may end up in a
    # block: the gateway looks for all of them, so a checkpoint is never anchored twice.
    # The bytes of the one mined are kept with the anchor, to be sent again if a
    # re-organisation takes its block away after it counted as confirmed.
    db.execute(
        "CREATE TABLE anchor_txs (tx_hash BLOB PRIMARY KEY, "
        "anchor_id INTEGER NOT NULL REFERENCES anchors(id), nonce INTEGER NOT NULL, "
        "sent_ms INTEGER NOT NULL, raw BLOB)"
    )
    db.execute("CREATE INDEX anchor_txs_anchor ON anchor_txs(anchor_id, nonce)")
    db.execute(
        "INSERT INTO anchor_txs (tx_hash, anchor_id, nonce, sent_ms, raw) "
        "SELECT tx_hash, id, nonce, sent_ms, raw_tx FROM anchors WHERE tx_hash IS NOT NULL"
    )


def _web_sessions(db: Database) -> None:
    # People signed in over HTTP. A row is keyed by the SHA-256 of the cookie's token (the
    # token itself is only in the browser); it keeps what the sign-in established (the
    # permissions, and the revocation bits of the credentials behind them, so a revocation
    # ends the session) and is deleted at sign-out, expiry or revocation.
    db.execute(
        """
        CREATE TABLE web_sessions (
            token_hash TEXT PRIMARY KEY,
            did TEXT NOT NULL,
            method TEXT NOT NULL CHECK (method IN ('presentation', 'passkey')),
            csrf TEXT NOT NULL,
            created_ms INTEGER NOT NULL,
            seen_ms INTEGER NOT NULL,
            expires_ms INTEGER NOT NULL,
            permissions TEXT NOT NULL,
            status_indexes TEXT NOT NULL DEFAULT '[]',
            presentations TEXT NOT NULL DEFAULT '[]',
            disclosure INTEGER
        )
        """
    )
    db.execute("CREATE INDEX web_sessions_did ON web_sessions(did)")


def _passkeys(db: Database) -> None:
    # Passkeys (WebAuthn) bound to a person's DID after a presentation sign-in. A passkey
    # login presents no credential, so the row keeps what the binding established: the
    # permissions, the status indexes of the credentials behind them (re-checked at every
    # login: revoked or expired refuses it) and the earliest of their expiries.
    db.execute(
        """
        CREATE TABLE passkeys (
            credential_id TEXT PRIMARY KEY,
            did TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            public_key BLOB NOT NULL,
            sign_count INTEGER NOT NULL,
            user_handle TEXT NOT NULL,
            created_ms INTEGER NOT NULL,
            last_used_ms INTEGER,
            permissions TEXT NOT NULL,
            status_indexes TEXT NOT NULL,
            expires_ms INTEGER NOT NULL,
            presentations TEXT NOT NULL DEFAULT '[]',
            disclosure INTEGER
        )
        """
    )
    db.execute("CREATE INDEX passkeys_did ON passkeys(did)")


def _credential_offers(db: Database) -> None:
    # OpenID4VCI pre-authorized offers. No secret is stored: the offer id (in the offer URL),
    # the pre-authorized code and the access token as SHA-256, the PIN as an HMAC keyed by
    # the code. ``claims`` waits here until the credential is issued, then is cleared.
    # ``credential_id`` is '' while the credential is being issued, its id once it is.
    db.execute(
        """
        CREATE TABLE credential_offers (
            id_hash TEXT PRIMARY KEY,
            code_hash TEXT NOT NULL UNIQUE,
            pin_mac TEXT NOT NULL,
            kind TEXT NOT NULL,
            claims TEXT NOT NULL,
            created_ms INTEGER NOT NULL,
            expires_ms INTEGER NOT NULL,
            used_ms INTEGER,
            locked_ms INTEGER,
            failed_pins INTEGER NOT NULL DEFAULT 0,
            token_hash TEXT UNIQUE,
            token_expires_ms INTEGER,
            credential_id TEXT
        )
        """
    )


def _api_tokens(db: Database) -> None:
    # Tokens for the JSON API. Only the SHA-256 of a token is kept (the token is shown once
    # when created); a revoked token keeps its row, so a name is never reused.
    db.execute(
        """
        CREATE TABLE api_tokens (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('operator', 'facility-manager', 'reader')),
            token_hash TEXT NOT NULL UNIQUE,
            created_ms INTEGER NOT NULL,
            created_by TEXT NOT NULL,
            expires_ms INTEGER,
            last_used_ms INTEGER,
            revoked_ms INTEGER,
            revoked_by TEXT
        )
        """
    )


def _device_pages(db: Database) -> None:
    # The API lists devices a page at a time in registration order (created_at, did), all
    # of them or of one status: each page is an index range, however many devices there are.
    db.execute("CREATE INDEX devices_order ON devices(created_at, did)")
    db.execute("CREATE INDEX devices_status_order ON devices(status, created_at, did)")


def _credential_suspension(db: Database) -> None:
    # A credential the operator suspended: refused at every sign-in and the sessions behind
    # it ended, until it is resumed (which clears the three columns). Suspension is this
    # gateway's own, not published in its status list (docs/formats.md). A revoked credential
    # cannot be suspended or resumed: the ``credentials_no_unrevoke`` trigger refuses any
    # change to its row.
    for column in ("suspended_ms INTEGER", "suspended_by TEXT", "suspend_reason TEXT"):
        db.execute(f"ALTER TABLE credentials ADD COLUMN {column}")


def _entry_kind(db: Database) -> None:
    """The record by kind, newest first (the console's record page and
    ``/api/chain/entries?kind=``): without it a rare kind is found by reading the whole
    record backwards, and the list of kinds by reading all of it. One more small b-tree
    write per entry appended (docs/development.md has the ingest figures with it)."""
    db.execute("CREATE INDEX IF NOT EXISTS chain_entries_kind ON chain_entries (kind, seq)")


def _device_table(db: Database) -> None:
    # The facility manager's table sorts devices by name and filters them by kind: a page
    # of the name order is an index range; devices change rarely, readings never touch it.
    db.execute("CREATE INDEX devices_name_order ON devices(name, did)")
    db.execute("CREATE INDEX devices_kind ON devices(kind, created_at, did)")


def _passkey_bindings(db: Database) -> None:
    # Which ``passkey-bound`` entry bound each passkey: an order signed with the passkey
    # names it, so whoever checks the order finds the key's binding to the person on the
    # record (gateway/market/passkey_orders.py). NULL for a passkey bound before entries
    # carried the key: such a passkey signs no order until it is bound again.
    db.execute("ALTER TABLE passkeys ADD COLUMN bound_entry INTEGER")


def _homeassistant(db: Database) -> None:
    # The households that opted in to Home Assistant (gateway/market/homeassistant_households.py):
    # the gateway publishes their discovery and states, and each has a read-only broker
    # account named here (its password is never stored: the household was shown it once).
    db.execute(
        "CREATE TABLE homeassistant_households (household TEXT PRIMARY KEY REFERENCES "
        "devices(did), username TEXT NOT NULL, enabled_ms INTEGER NOT NULL)"
    )


def _inverters(db: Database) -> None:
    # SunSpec inverters the gateway vouches for (gateway/energy/inverter.py): their Modbus
    # link as enrolled, their serial number (given at enrolment or first seen) and the
    # entry of the gateway's statement binding them to the household; then their readings
    # (the signed reading itself is chain entry `entry`), for settlement's cross-check.
    db.execute(
        """
        CREATE TABLE inverters (
            did TEXT PRIMARY KEY REFERENCES devices(did),
            household TEXT NOT NULL REFERENCES devices(did),
            link TEXT NOT NULL,
            unit INTEGER NOT NULL,
            baudrate INTEGER NOT NULL,
            parity TEXT NOT NULL,
            key_file TEXT NOT NULL,
            serial TEXT,
            binding_entry INTEGER NOT NULL,
            created_ms INTEGER NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX inverters_household ON inverters(household)")
    db.execute(
        "CREATE TABLE inverter_readings (inverter TEXT NOT NULL, seq INTEGER NOT NULL, "
        "ts INTEGER NOT NULL, power_w INTEGER NOT NULL, energy_wh INTEGER NOT NULL, "
        "entry INTEGER NOT NULL, PRIMARY KEY (inverter, seq)) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX inverter_readings_ts ON inverter_readings(inverter, ts)")
    for verb in ("UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER inverter_readings_no_{verb.lower()} BEFORE {verb} ON "
            "inverter_readings BEGIN SELECT RAISE(ABORT, 'inverter_readings is append-only'); "
            "END"
        )


MIGRATIONS: list[Migration] = [
    ("0001_gateway_meta", _gateway_meta),
    ("0002_device_registry", _device_registry),
    ("0003_registry_audit", _registry_audit),
    ("0004_resolution_cache", _resolution_cache),
    ("0005_chain", _chain),
    ("0006_chain_keys", _chain_keys),
    ("0007_anchors", _anchors),
    ("0008_energy_market", _energy_market),
    ("0009_credentials", _credentials),
    ("0010_anchor_txs", _anchor_txs),
    ("0011_web_sessions", _web_sessions),
    ("0012_passkeys", _passkeys),
    ("0013_credential_offers", _credential_offers),
    ("0014_api_tokens", _api_tokens),
    ("0015_device_pages", _device_pages),
    ("0016_credential_suspension", _credential_suspension),
    ("0017_device_table", _device_table),
    ("0018_entry_kind", _entry_kind),
    ("0019_passkey_bindings", _passkey_bindings),
    ("0020_homeassistant", _homeassistant),
    ("0021_inverters", _inverters),
]

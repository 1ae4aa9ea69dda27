"""Composition root: the one place that builds the gateway's parts from its configuration.

The CLI and ``didgw run`` call :func:`init_gateway` and :func:`open_gateway`, and build
the resolver, the credential issuer and the status lists here; nothing else wires core
objects to files, the network or the clock. It may import every layer below the running
parts (foundations, the core, ``transports/``), and nothing imports it from the core.

State directory layout::

    <state>/            0700
      keys/             0700
        gateway.pem     0600, PKCS#8, optionally encrypted
        ledger.pem      0600, PKCS#8 secp256k1: the ledger account that signs anchors
        broker-token.key  0600, 32 random bytes: seals broker session tokens (nothing else)
      broker/           the broker plugin's files, unless [mqtt] token_dir puts them elsewhere
        token.key       0640, the broker's copy of broker-token.key (its group reads it)
        deny            DIDs whose earlier tokens are void (gateway/run/broker_sessions.py)
      didgw.db          SQLite (WAL), named migrations
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from sqlite_utils import Database

from gateway import db as database
from gateway.chain.store import ChainStore
from gateway.config import Config
from gateway.credentials.issuer import CredentialIssuer
from gateway.credentials.status_source import StatusLists
from gateway.errors import KeyStoreError, StateError
from gateway.identity import keystore
from gateway.identity.cache import SqliteResolutionCache
from gateway.identity.did_key import did_from_public_key
from gateway.identity.resolver import (
    DidResolver,
    Freshness,
    MemoryCache,
    ResolutionCache,
    Resolver,
)
from gateway.identity.signing import Signer
from gateway.market.service import MarketSettings
from gateway.registry import Registry

KEY_FILE = Path("keys") / "gateway.pem"
LEDGER_KEY_FILE = Path("keys") / "ledger.pem"
TOKEN_KEY_FILE = Path("keys") / "broker-token.key"


@dataclass
class Gateway:
    """The parts of an initialised gateway that commands work with."""

    config: Config
    state_dir: Path
    did: str
    db: Database
    resolver: DidResolver
    registry: Registry

    def signer(self, env: Mapping[str, str]) -> Signer:
        """The gateway's own signing key (needs the passphrase if the key is encrypted)."""
        passphrase = keystore.read_passphrase(self.config.keys.passphrase_file, env)
        key = keystore.load_private_key(self.state_dir / KEY_FILE, passphrase)
        signer = Signer.for_did_key(key)
        if signer.did != self.did:
            raise StateError(f"{self.state_dir / KEY_FILE} does not hold the key of {self.did}")
        return signer

    def ledger_key(self, env: Mapping[str, str]) -> ec.EllipticCurvePrivateKey:
        """The ledger account key (same passphrase as the gateway key)."""
        path = self.state_dir / LEDGER_KEY_FILE
        if not path.exists():
            raise StateError(
                f"{path} does not exist: this gateway has no ledger account yet; "
                f"run: didgw init --state-dir {self.state_dir}"
            )
        passphrase = keystore.read_passphrase(self.config.keys.passphrase_file, env)
        return keystore.load_ledger_key(path, passphrase)

    def broker_token_key(self) -> bytes:
        """The key that seals broker session tokens, made if this gateway has none yet
        (one initialised before tokens), with the broker's copy where the broker reads it."""
        key = _token_key(self.state_dir / TOKEN_KEY_FILE)
        publish_token_key(token_dir(self.config, self.state_dir), key)
        return key

    def ledger_binding(self) -> str | None:
        """The signed statement binding the gateway DID to its ledger address, if made."""
        return _meta(self.db, "ledger_binding")

    def chain(self) -> ChainStore:
        """The record, on this gateway's database connection (for commands and tests)."""
        return ChainStore(self.db)

    def checkpoint(self, env: Mapping[str, str], *, now: float) -> str:
        """Sign a checkpoint of the record as it is now, keep it, and return its text."""
        from gateway.chain.checkpoint import checkpoint_body, sign_checkpoint

        chain = self.chain()
        root = chain.root()
        text = sign_checkpoint(
            checkpoint_body(self.did, chain.size, root, int(now)), self.signer(env)
        )
        chain.add_checkpoint(chain.size, root, int(now * 1000), text)
        return text

    def issuer(self) -> CredentialIssuer:
        """The gateway's credential issuer, on this gateway's database connection."""
        return build_issuer(self.config, self.db, self.did)

    def status_lists(self, issuer: CredentialIssuer) -> StatusLists:
        """Status lists as this gateway checks them (its own from ``issuer``)."""
        return build_status_lists(self.config, self.resolver, issuer)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class InitResult:
    state_dir: Path
    did: str
    created_key: bool
    migrations: list[str]
    encrypted: bool
    ledger_address: str = ""
    created_ledger_key: bool = False


def build_resolver(config: Config, cache: ResolutionCache | None = None) -> DidResolver:
    """The DID resolver the configuration asks for; network fetching only if it can be used."""
    from gateway.transports.http import make_fetch

    r = config.resolver
    return DidResolver(
        fetch=make_fetch(timeout=r.timeout, max_bytes=r.max_document_bytes, ca_file=r.ca_file),
        cache=cache if cache is not None else MemoryCache(),
        freshness=Freshness(ttl=r.cache_ttl, max_stale=r.cache_max_stale),
        did_web=r.did_web,
        universal_resolver=r.universal_resolver,
        allow_http_localhost=r.allow_http_localhost,
    )


def build_issuer(config: Config, db: Database, gateway_did: str) -> CredentialIssuer:
    """The gateway's credential issuer on ``db`` (one per thread: each has its connection)."""
    c = config.credentials
    return CredentialIssuer(
        db,
        gateway_did=gateway_did,
        list_url=c.status_list_url,
        validity_seconds=c.validity_days * 86400,
        status_valid_seconds=c.status_valid_seconds,
    )


def market_settings(config: Config) -> MarketSettings:
    """The market's rules from ``[market]``."""
    m = config.market
    return MarketSettings(
        interval_ms=m.interval_seconds * 1000,
        max_ahead=m.max_ahead_intervals,
        max_wh=m.max_order_wh,
        max_price=m.max_price,
        retail=m.retail_price,
        feed_in=m.feed_in_price,
        production_tolerance_wh=m.production_tolerance_wh,
    )


def build_status_lists(config: Config, resolver: Resolver, issuer: CredentialIssuer) -> StatusLists:
    """Our own list from ``issuer``'s database; others' fetched, under the resolver's freshness."""
    from gateway.transports.http import make_fetch

    r = config.resolver
    return StatusLists(
        resolver=resolver,
        freshness=Freshness(ttl=r.cache_ttl, max_stale=r.cache_max_stale),
        local=issuer.local_list,
        local_suspended=issuer.local_suspended,
        fetch=make_fetch(timeout=r.timeout, max_bytes=1 << 20, ca_file=r.ca_file),
    )


def init_gateway(config: Config, state_dir: Path, env: Mapping[str, str]) -> InitResult:
    """Create the state directory, the gateway key and the database; never overwrite a key."""
    passphrase = keystore.read_passphrase(config.keys.passphrase_file, env)
    _make_private_dir(state_dir)
    _make_private_dir(state_dir / KEY_FILE.parent)
    key_path = state_dir / KEY_FILE
    created = not key_path.exists()
    if created:
        key = keystore.generate_key()
        keystore.write_private_key(key_path, key, passphrase)
    else:
        key = keystore.load_private_key(key_path, passphrase)
    did = did_from_public_key(keystore.public_bytes(key))
    ledger_key, created_ledger = _ledger_key(state_dir / LEDGER_KEY_FILE, passphrase)
    publish_token_key(token_dir(config, state_dir), _token_key(state_dir / TOKEN_KEY_FILE))
    db = database.connect(state_dir / database.DB_NAME)
    try:
        now = time.time()
        applied = database.migrate(db, now=now, backup_path=state_dir / database.DB_NAME)
        recorded = _meta(db, "gateway_did")
        if recorded is None:
            with db.atomic():
                db.execute("INSERT INTO meta (key, value) VALUES ('gateway_did', ?)", [did])
        elif recorded != did:
            raise StateError(
                f"{state_dir}: the database belongs to gateway {recorded}, but {key_path} "
                f"holds the key of {did}; refusing to mix them"
            )
        address = _bind_ledger_account(db, Signer.for_did_key(key), ledger_key, now)
    finally:
        db.close()
    return InitResult(
        state_dir, did, created, applied, passphrase is not None, address, created_ledger
    )


def _ledger_key(path: Path, passphrase: bytes | None) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    """The ledger account key, created if this state directory has none yet (never replaced)."""
    if path.exists():
        return keystore.load_ledger_key(path, passphrase), False
    key = keystore.generate_ledger_key()
    keystore.write_private_key(path, key, passphrase)
    return key, True


def _token_key(path: Path) -> bytes:
    """The broker-token key, created if this state directory has none yet (never replaced).

    Not under the gateway's passphrase: the broker needs it in the clear all the same."""
    from gateway.auth.broker_tokens import KEY_BYTES, TokenError, check_key
    from gateway.files import read_secret, write_private

    if not path.exists():
        key = os.urandom(KEY_BYTES)
        write_private(path, key, error=KeyStoreError, exists=f"{path} already exists")
        return key
    key = read_secret(path, "broker token key", KeyStoreError, max_bytes=KEY_BYTES)
    try:
        return check_key(key)
    except TokenError:
        raise KeyStoreError(f"broker token key {path} is not {KEY_BYTES} random bytes") from None


def token_dir(config: Config, state_dir: Path) -> Path:
    """Where the broker's didgw plugin reads the token key and the deny file."""
    return Path(config.mqtt.token_dir) if config.mqtt.token_dir else state_dir / "broker"


def publish_token_key(directory: Path, key: bytes) -> None:
    """Put the broker's copy of ``key`` where it reads it (``token.key``, 0640: the token
    directory's group is the broker's), unless it is there already; the plugin picks a new
    one up by itself. The public key of earlier versions (``token.pub``) goes."""
    path = directory / "token.key"
    try:
        if path.exists() and path.read_bytes() == key:
            return
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        new = path.with_name(".token.key.new")
        new.unlink(missing_ok=True)
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with open(fd, "wb") as file:
            os.fchmod(fd, 0o640)  # group only now, and only the token directory's group
            file.write(key)
            file.flush()
            os.fsync(fd)
        os.replace(new, path)
        (directory / "token.pub").unlink(missing_ok=True)
    except OSError as exc:
        raise StateError(f"cannot write the broker's token key {path}: {exc.strerror}") from None


def _bind_ledger_account(
    db: Database, signer: Signer, key: ec.EllipticCurvePrivateKey, now: float
) -> str:
    """Sign and keep the DID-to-address statement, unless one for this address is kept."""
    import base64
    import json

    from gateway.anchor.account import binding_statement, ledger_address

    address = ledger_address(key)
    kept = _meta(db, "ledger_binding")
    if kept is not None:
        part = kept.split(".")[1]
        body = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        if body.get("address") == address and body.get("did") == signer.did:
            return address
    statement = binding_statement(signer, address, issued=int(now))
    with db.atomic():
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('ledger_binding', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [statement],
        )
    return address


def open_gateway(config: Config, state_dir: Path) -> Gateway:
    """Open an initialised gateway (upgrading its schema if needed); refuse anything else."""
    db_path = state_dir / database.DB_NAME
    if not (state_dir / KEY_FILE).exists() or not db_path.exists():
        raise StateError(f"no gateway in {state_dir}; run: didgw init --state-dir {state_dir}")
    db = database.connect(db_path)
    try:
        database.migrate(db, now=time.time(), backup_path=db_path)
        did = _meta(db, "gateway_did")
        if did is None:
            raise StateError(f"{db_path} has no gateway DID; run didgw init again")
    except BaseException:
        db.close()
        raise
    resolver = build_resolver(config, SqliteResolutionCache(db))
    registry = Registry(db, resolver, chain=ChainStore(db), gateway_did=did)
    return Gateway(config, state_dir, did, db, resolver, registry)


def _meta(db: Database, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return None if row is None else str(row[0])


def _make_private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"cannot create {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise StateError(f"{path} exists and is not a directory")
    if path.stat().st_mode & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as exc:
            raise KeyStoreError(
                f"{path} is readable by others and cannot be fixed: {exc.strerror}"
            ) from None

"""The JSON API's database side: the same core the CLI calls, on the edge's desk thread.

Every method runs on the desk thread (:meth:`HttpEdge.desk`) with the edge's own
connection; the objects are built once and kept. Nothing here speaks HTTP: the handlers
in ``api.py`` parse, ask :mod:`gateway.auth.api_access`, call one method, answer.
"""

from __future__ import annotations

import base64
import itertools
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.anchor.queue import Anchor, AnchorQueue
from gateway.anchor.status import anchor_status
from gateway.auth import api_tokens
from gateway.auth import person_requests as requests
from gateway.auth.api_tokens import ApiTokens
from gateway.chain import activity as chain_activity
from gateway.chain.check import entry_fields
from gateway.chain.store import ChainStore, Entry, NewEntry
from gateway.config import Config
from gateway.credentials.issuer import IssuedRecord
from gateway.market.service import Market
from gateway.ops.health import stored_health
from gateway.registry import Device, Registry, table
from gateway.registry.table import Cursor, DeviceFilter
from gateway.run.http.server import Principal
from gateway.run.ingest import REORDER_WINDOW
from gateway.service import build_issuer, build_resolver, market_settings

#: The record's kinds, one index seek each (a loose scan of chain_entries_kind), not a
#: read of every entry.
_KINDS = (
    "WITH RECURSIVE k(kind) AS (SELECT min(kind) FROM chain_entries UNION ALL "
    "SELECT (SELECT min(kind) FROM chain_entries WHERE kind > k.kind) FROM k "
    "WHERE k.kind IS NOT NULL) SELECT kind FROM k WHERE kind IS NOT NULL"
)


class ApiDesk:
    """Registry, issuer, record, market, anchors and tokens on one connection."""

    def __init__(self, config: Config, db: Any, gateway_did: str) -> None:
        self.config = config
        self.db = db
        self.gateway_did = gateway_did
        self.resolver = build_resolver(config)
        self.chain = ChainStore(db)
        self.registry = Registry(db, self.resolver, chain=self.chain, gateway_did=gateway_did)
        self.issuer = build_issuer(config, db, gateway_did)
        self.tokens = ApiTokens(db, gateway_did=gateway_did)
        settings = market_settings(config)
        self.market = Market(db, self.registry, self.resolver, None, settings)

    # -- who is asking ---------------------------------------------------------------

    def token_auth(self, secret: str, now_ms: int) -> Principal | None:
        """``HttpEdge.token_auth``: the principal of a usable token, else None."""
        token = self.tokens.check(secret, now_ms)
        if token is None:
            return None
        return Principal(
            api_tokens.principal_name(token.name),
            api_tokens.permissions_of(token),
            scope=token.role,
        )

    # -- devices -----------------------------------------------------------------------

    def devices(
        self, limit: int, sort: str, after: Cursor | None, where: DeviceFilter, now_ms: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of devices, each with its activity (:meth:`activity`), and the cursor
        of the next page (None on the last)."""
        page, cursor = table.page(self.db, limit=limit, sort=sort, after=after, where=where)
        seen = self.activity([d.did for d in page], now_ms)
        rows = [{**d.to_json(), **seen[d.did]} for d in page]
        return rows, None if cursor is None else cursor.encode()

    def activity(self, dids: Sequence[str], now_ms: int) -> dict[str, dict[str, Any]]:
        """``last_seen`` (its newest reading's time) and ``readings_today`` (since the
        gateway's local midnight) of each device, from the record."""
        found = chain_activity.activity(
            self.db, dids, since_ms=local_midnight_ms(now_ms), slack=REORDER_WINDOW
        )
        return {
            did: {
                "last_seen": None if a.last_seen_ms is None else iso(a.last_seen_ms / 1000),
                "readings_today": a.readings_since,
            }
            for did, a in found.items()
        }

    def device(self, did: str, now_ms: int | None = None) -> dict[str, Any]:
        """The device, its history, its activity and its newest readings."""
        device = self.registry.get(did)
        history = self.registry.history(did)
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        newest = sorted(chain_activity.recent(self.db, did, limit=10), reverse=True)
        readings = [self.chain.get(seq) for seq in newest]
        return {
            **device.to_json(),
            **self.activity([did], now_ms)[did],
            "history": [r.to_json() for r in history],
            "recent_readings": [
                {"seq": e.seq, "time": iso(e.ts / 1000), "bytes": len(e.payload or b"")}
                for e in readings
            ],
        }

    def change_device(
        self, principal: Principal, action: str, did: str, fields: Mapping[str, Any]
    ) -> Device:
        """Register, suspend, resume, revoke or rotate as ``principal``: a person's change
        carries a ``person-action`` entry with the digests of her presentations."""
        now = time.time()
        detail = {"new_device": fields["new_did"]} if action == "rotate" else {}
        also = person_action(principal, action, did, **detail)
        reason = str(fields.get("reason") or "")
        actor = principal.name
        if action == "register":
            return self.registry.register(
                did,
                name=fields["name"],
                kind=fields["kind"],
                owner=fields.get("owner"),
                topics=fields.get("topics", ()),
                capabilities=fields.get("capabilities", ()),
                metadata=fields.get("metadata"),
                actor=actor,
                reason=reason or "registered",
                now=now,
                also=also,
            )
        if action == "rotate":
            return self.registry.rotate(
                did, fields["new_did"], actor=actor, reason=reason, now=now, also=also
            )
        change: Callable[..., Device] = getattr(self.registry, action)
        return change(did, actor=actor, reason=reason, now=now, also=also)

    # -- credentials ---------------------------------------------------------------------

    def credentials(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.issuer.records()]

    def change_credential(self, action: str, cred_id: str, by: str, reason: str) -> IssuedRecord:
        """``suspend``, ``resume`` or ``revoke`` (:data:`CREDENTIAL_ACTIONS`)."""
        change = {
            "suspend": self.issuer.suspend,
            "resume": self.issuer.resume,
            "revoke": self.issuer.revoke,
        }[action]
        return change(cred_id, by=by, reason=reason, now=time.time())

    # -- the market ------------------------------------------------------------------------

    def next_interval(self, now_ms: int) -> int:
        step = self.market.settings.interval_ms
        return now_ms - now_ms % step + step

    def orders(self, interval: int) -> list[dict[str, Any]]:
        book = self.market.book(interval)
        return [
            {"household": o.id.household, "seq": o.id.seq, "side": o.side, "wh": o.wh,
             "price": o.price}
            for o in sorted(book, key=lambda o: (o.side, o.price, o.id))
        ]  # fmt: skip

    def trades(self, interval: int | None) -> list[dict[str, Any]]:
        return self.market.trades(interval)

    def statements(self, household: str, interval: int | None) -> list[dict[str, Any]]:
        return self.market.statements(household, interval)

    # -- the record --------------------------------------------------------------------------

    def entries(self, after: int | None, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Up to ``limit`` entries with a seq greater than ``after``, and the record's size."""
        start = 0 if after is None else after + 1
        found = [entry_json(e) for e in itertools.islice(self.chain.entries(start), limit)]
        return found, self._size()

    def newest(
        self, kind: str, before: int | None, limit: int
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Up to ``limit`` entries of ``kind`` (any when "") with a seq below ``before``,
        newest first, and the kinds the record holds (for the filter)."""
        below = 2**62 if before is None else before
        if kind:  # the index chain_entries_kind (kind, seq): no scan
            rows = self.db.execute(
                "SELECT seq FROM chain_entries WHERE kind = ? AND seq < ? "
                "ORDER BY seq DESC LIMIT ?",
                [kind, below, limit],
            ).fetchall()
        else:
            rows = self.db.execute(
                "SELECT seq FROM chain_entries WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                [below, limit],
            ).fetchall()
        kinds = [str(r[0]) for r in self.db.execute(_KINDS).fetchall()]
        return [entry_json(self.chain.get(int(r[0]))) for r in rows], kinds

    def entry(self, seq: int) -> dict[str, Any]:
        return entry_json(self.chain.get(seq))

    def inclusion(self, seq: int, size: int | None) -> dict[str, Any]:
        self.chain.resync()
        size = size or self.chain.size
        path = self.chain.inclusion_proof(seq, size)
        return {
            "leaf_index": seq,
            "tree_size": size,
            "leaf_hash": self.chain.leaf(seq).hex(),
            "path": [h.hex() for h in path],
            "root": self.chain.root_at(size).hex(),
        }

    def consistency(self, first: int, second: int) -> dict[str, Any]:
        self.chain.resync()
        path = self.chain.consistency_proof(first, second)
        return {
            "first": first,
            "second": second,
            "path": [h.hex() for h in path],
            "first_root": self.chain.root_at(first).hex(),
            "second_root": self.chain.root_at(second).hex(),
        }

    def record_size(self) -> int:
        return self._size()

    def _size(self) -> int:
        row = self.db.execute("SELECT max(seq) FROM chain_entries").fetchone()
        return 0 if row is None or row[0] is None else int(row[0]) + 1

    # -- anchors and health --------------------------------------------------------------------

    def anchors(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` anchors: size, state, root, the signed checkpoint, and where
        on the ledger (``didgw anchor list`` with the checkpoints)."""
        return [_anchor_json(a) for a in AnchorQueue(self.db).recent(limit)]

    def confirmed_size(self) -> int | None:
        """The size of the newest anchor confirmed on the ledger (None: none yet)."""
        last = AnchorQueue(self.db).last_confirmed()
        return None if last is None else last.size

    def anchor_of_size(self, size: int) -> dict[str, Any] | None:
        found = AnchorQueue(self.db).of_size(size)
        return None if found is None else _anchor_json(found)

    def anchor_status(self) -> dict[str, Any]:
        """What ``didgw anchor status --offline --json`` shows (no ledger probe)."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'ledger_binding'").fetchone()
        return anchor_status(
            AnchorQueue(self.db),
            self.chain,
            self.config.anchor,
            size=self._size(),
            binding=None if row is None else str(row[0]),
            now=time.time(),
        )

    def status(self) -> dict[str, Any]:
        """The stored health figures (``didgw status`` reads the same)."""
        h = stored_health(self.db.conn)
        return {
            "running": True,
            "gateway": self.gateway_did,
            "record_entries": h.chain_entries,
            "devices": h.devices,
            "anchored_entries": h.anchored_entries,
            "anchor_age_seconds": h.anchor_age_s,
            "anchor_queue": h.anchor_queue,
            "ledger": h.ledger,
            "market_intervals_cleared": h.market_intervals_cleared,
            "live": None,
        }


def person_action(principal: Principal, action: str, did: str, **detail: Any) -> Sequence[NewEntry]:
    """The ``person-action`` entry of a change a signed-in person makes to the device
    ``did`` (none for an API token): her presentations' digests and where what they
    disclosed is, as the MQTT path records them."""
    session = principal.session
    if session is None:
        return ()
    request = requests.PersonRequest(
        "http-" + secrets.token_hex(8), action, {"did": did, "via": "http"}
    )
    return [
        requests.action_entry(
            principal.name,
            request,
            digests=list(session.presentations),
            disclosure=session.disclosure,
            **detail,
        )
    ]


def local_midnight_ms(now_ms: int) -> int:
    """The start of the gateway's local day that ``now_ms`` falls in ("today")."""
    from datetime import datetime

    now = datetime.fromtimestamp(now_ms / 1000).astimezone()
    return int(now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)


def _anchor_json(a: Anchor) -> dict[str, Any]:
    return {
        "size": a.size,
        "state": a.state,
        "root": a.root.hex(),
        "checkpoint": a.checkpoint,
        "created": iso(a.created_ms / 1000),
        "chain_id": a.chain_id,
        "tx_hash": None if a.tx_hash is None else "0x" + a.tx_hash.hex(),
        "block_number": a.block_number,
        "confirmed": None if a.confirmed_ms is None else iso(a.confirmed_ms / 1000),
    }


def iso(ts: float | None) -> str | None:
    from datetime import UTC, datetime

    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def entry_json(entry: Entry) -> dict[str, Any]:
    """An entry as ``didgw chain show`` prints it."""
    payload: Any = None
    if entry.payload is not None:
        try:
            payload = entry.payload.decode("utf-8")
        except UnicodeDecodeError:
            payload = {"base64": base64.b64encode(entry.payload).decode()}
    return {
        **entry_fields(entry),
        "time": iso(entry.ts / 1000),
        "payload": payload,
        "erased": entry.erased,
        "erased_by": entry.erased_by,
    }

"""Everything the gateway holds about one person's DID, and its erasure when she asks.

* :func:`everything_about` gathers it for ``/my-data``: the record entries whose actor is
  her DID (her sign-ins' ``disclosure`` and ``person-session`` entries, her
  ``person-action`` entries, her erasure requests), her web sessions' metadata (never a
  token or its hash, never the CSRF token), her passkeys (never the public key or user
  handle: what she may see is that they exist and when they were used) and the records of
  credentials issued to her (never the claims: the gateway does not keep them).
* :func:`ask_for_erasure` records an entry of kind ``erasure-request`` (actor: her DID).
  Idempotent: while one is pending the same entry is answered, so a person cannot fill the
  record by asking again and again.
* :func:`erase_actor` carries it out (``didgw chain erase --actor DID``): the payload of
  every entry whose actor is the DID is erased with the record's own erasure
  (:meth:`ChainStore.erase`: the commitment stays, so every proof and ``didgw chain verify``
  still pass), her web sessions end and her passkeys are deleted. The erasure request
  itself is erased last, so a request shows as done only once everything else is, and a
  run broken off half way is finished by running it again.

What stays: the credentials table's rows (issued credentials are never deleted: the
revocation list depends on them; they hold her DID and the credential's type, no claims)
and the commitments of erased entries (hashes that reveal nothing without the payload).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from gateway.chain.store import ChainStore, Entry

ERASURE_REQUEST_KIND = "erasure-request"
ERASURE_KIND = "erasure"
_REQUEST_PAYLOAD = b'{"asks":"erase all personal data of the actor"}'


@dataclass(frozen=True)
class ErasureState:
    """Her latest erasure request: pending (``done_ms`` None) or carried out."""

    request: int
    asked_ms: int
    done_ms: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "request": self.request,
            "asked": self.asked_ms,
            "state": "pending" if self.done_ms is None else "done",
            "done": self.done_ms,
        }


def _seqs_of(db: Database, did: str, kind: str | None = None) -> list[int]:
    sql = "SELECT e.seq FROM chain_entries e JOIN chain_actors a ON a.id = e.actor WHERE a.did = ?"
    args: list[Any] = [did]
    if kind is not None:
        sql += " AND e.kind = ?"
        args.append(kind)
    return [int(r[0]) for r in db.conn.execute(sql + " ORDER BY e.seq", args)]


def entries_of(chain: ChainStore, db: Database, did: str) -> list[Entry]:
    """Every record entry whose actor is ``did``, oldest first."""
    return [chain.get(seq) for seq in _seqs_of(db, did)]


def erasure_state(chain: ChainStore, db: Database, did: str) -> ErasureState | None:
    """Her latest erasure request and whether it was carried out, or None if she never asked."""
    seqs = _seqs_of(db, did, ERASURE_REQUEST_KIND)
    if not seqs:
        return None
    request = chain.get(seqs[-1])
    done = None if request.erased_by is None else chain.get(request.erased_by).ts
    return ErasureState(request.seq, request.ts, done)


def ask_for_erasure(chain: ChainStore, db: Database, did: str, *, now_ms: int) -> ErasureState:
    """Record her request, or answer the one still pending."""
    state = erasure_state(chain, db, did)
    if state is not None and state.done_ms is None:
        return state
    entry = chain.append(ERASURE_REQUEST_KIND, did, _REQUEST_PAYLOAD, now_ms=now_ms)
    return ErasureState(entry.seq, entry.ts, None)


def pending_requests(chain: ChainStore, db: Database) -> list[Entry]:
    """Erasure requests not yet carried out, oldest first (for the operator)."""
    rows = db.conn.execute(
        "SELECT seq FROM chain_entries WHERE kind = ? AND erased_by IS NULL ORDER BY seq",
        [ERASURE_REQUEST_KIND],
    )
    return [chain.get(int(r[0])) for r in rows]


@dataclass(frozen=True)
class Erased:
    """What :func:`erase_actor` did."""

    entries: list[int]  # the seqs whose payloads were erased
    sessions: int
    passkeys: int


def erase_actor(
    chain: ChainStore, db: Database, did: str, *, reason: str, by: str, gateway: str, now_ms: int
) -> Erased:
    """Erase all personal data of ``did`` (see the module's docstring)."""
    todo = [e for e in entries_of(chain, db, did) if not e.erased and e.kind != ERASURE_KIND]
    todo.sort(key=lambda e: e.kind == ERASURE_REQUEST_KIND)  # requests last: done means done
    for entry in todo:
        chain.erase(entry.seq, reason=reason, by=by, actor=gateway, now_ms=now_ms)
    with db.conn:
        sessions = db.conn.execute("DELETE FROM web_sessions WHERE did = ?", [did]).rowcount
        passkeys = db.conn.execute("DELETE FROM passkeys WHERE did = ?", [did]).rowcount
    return Erased([e.seq for e in todo], sessions, passkeys)


def _payload(entry: Entry) -> Any:
    if entry.payload is None:
        return None
    try:
        return json.loads(entry.payload)
    except ValueError:
        return entry.payload.decode("utf-8", "replace")


def everything_about(chain: ChainStore, db: Database, did: str, *, now_ms: int) -> dict[str, Any]:
    """Her data as one JSON object (the ``/my-data`` download and ``GET /api/my-data``)."""
    q = db.conn.execute
    sessions = q(
        "SELECT method, created_ms, seen_ms, expires_ms, permissions, disclosure "
        "FROM web_sessions WHERE did = ? AND expires_ms > ? ORDER BY created_ms",
        [did, now_ms],
    ).fetchall()
    passkeys = q(
        "SELECT name, created_ms, last_used_ms, expires_ms FROM passkeys WHERE did = ? "
        "ORDER BY created_ms",
        [did],
    ).fetchall()
    credentials = q(
        "SELECT id, type, format, issued_ms, expires_ms, revoked_ms, suspended_ms "
        "FROM credentials WHERE subject = ? ORDER BY issued_ms",
        [did],
    ).fetchall()
    state = erasure_state(chain, db, did)
    return {
        "did": did,
        "at": now_ms,
        "record": [
            {
                "seq": e.seq,
                "ts": e.ts,
                "kind": e.kind,
                "erased": e.erased,
                "payload": _payload(e),
            }
            for e in entries_of(chain, db, did)
        ],
        "sessions": [
            {
                "method": m,
                "created": c,
                "seen": s,
                "expires": x,
                "permissions": json.loads(p),
                "disclosure_entry": d,
            }
            for m, c, s, x, p, d in sessions
        ],
        "passkeys": [
            {"name": n, "created": c, "last_used": u, "expires": x} for n, c, u, x in passkeys
        ],
        "credentials": [
            {
                "id": i,
                "kind": t,
                "format": f,
                "issued": iss,
                "expires": x,
                "revoked": r,
                "suspended": s,
            }
            for i, t, f, iss, x, r, s in credentials
        ],
        "erasure": None if state is None else state.to_json(),
    }

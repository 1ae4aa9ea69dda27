"""People signed in over HTTP: server-side sessions, their lifetimes, their end.

A session is opened after a verified presentation (OpenID4VP) or a passkey assertion and
lives in SQLite (``web_sessions``); the browser holds only a random token in a cookie,
and the table holds only the token's SHA-256, so a copy of the database signs nobody in.
Each session also carries its anti-CSRF token (sent back by the page with every change).

A session ends at whichever comes first: ``idle_ms`` without a request, ``max_ms`` after
sign-in, the expiry of a credential behind it, sign-out, or the revocation or suspension
of a credential behind it. The last is checked against the gateway's own credentials table
on every lookup (an indexed query), so a revoked or suspended person's next request is
refused whatever the sweeper's pace; :meth:`WebSessions.close_revoked` deletes the rows as
well. A resumption does not bring an ended session back.

Time and randomness come in as arguments; nothing here reads the clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from sqlite_utils import Database

from gateway.credentials.permissions import Permissions
from gateway.db import write_transaction

TOKEN_BYTES = 32
#: A session's ``seen_ms`` is written at most this often (a request does not cost a write).
TOUCH_EVERY_MS = 10_000
METHODS = ("presentation", "passkey")


@dataclass(frozen=True)
class WebSession:
    """One signed-in person, as a request sees her."""

    did: str
    method: str  # "presentation" or "passkey"
    csrf: str
    created_ms: int
    seen_ms: int
    expires_ms: int  # the absolute end (sign-in + max, or a credential's expiry)
    permissions: Permissions
    status_indexes: frozenset[int]
    presentations: tuple[str, ...]  # digests of the presentations behind it
    disclosure: int | None  # the record entry holding what they disclosed

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class WebSessions:
    """The ``web_sessions`` table of one database connection (used from one thread)."""

    def __init__(
        self,
        db: Database,
        *,
        idle_ms: int,
        max_ms: int,
        random_bytes: Callable[[int], bytes],
    ) -> None:
        self._db = db
        self.idle_ms, self.max_ms = idle_ms, max_ms
        self._random = random_bytes
        self._status_signature: tuple[object, ...] | None = None  # see close_revoked

    def open(
        self,
        did: str,
        method: str,
        permissions: Permissions,
        *,
        now_ms: int,
        expires_ms: int | None = None,
        status_indexes: Collection[int] = (),
        presentations: Sequence[str] = (),
        disclosure: int | None = None,
    ) -> tuple[str, WebSession]:
        """A new session for ``did``: (the cookie's token, the session). ``expires_ms``
        caps the absolute lifetime (a credential's expiry)."""
        if method not in METHODS:
            raise ValueError(f"sign-in method {method!r}")
        token, csrf = _b64u(self._random(TOKEN_BYTES)), _b64u(self._random(TOKEN_BYTES))
        end = now_ms + self.max_ms
        if expires_ms is not None:
            end = min(end, expires_ms)
        session = WebSession(
            did,
            method,
            csrf,
            now_ms,
            now_ms,
            end,
            permissions,
            frozenset(status_indexes),
            tuple(presentations),
            disclosure,
        )
        with write_transaction(self._db.conn):
            self._db.execute(
                "INSERT INTO web_sessions (token_hash, did, method, csrf, created_ms, seen_ms, "
                "expires_ms, permissions, status_indexes, presentations, disclosure) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    token_hash(token),
                    did,
                    method,
                    csrf,
                    now_ms,
                    now_ms,
                    end,
                    json.dumps(permissions.to_json(), separators=(",", ":")),
                    json.dumps(sorted(session.status_indexes)),
                    json.dumps(list(session.presentations)),
                    disclosure,
                ],
            )
        return token, session

    def find(self, token: str, *, now_ms: int, touch: bool = True) -> WebSession | None:
        """The live session of ``token``, or None (unknown, idle too long, past its end, or
        a credential behind it revoked or suspended: such a session is deleted on the way).
        ``touch`` False looks without counting it as the person's activity (a live view
        checking its session must not keep it from going idle)."""
        if not token or len(token) > 128:
            return None
        key = token_hash(token)
        row = self._db.execute(
            "SELECT did, method, csrf, created_ms, seen_ms, expires_ms, permissions, "
            "status_indexes, presentations, disclosure FROM web_sessions WHERE token_hash = ?",
            [key],
        ).fetchone()
        if row is None:
            return None
        did, method, csrf, created, seen, expires, perms, indexes, digests, disclosure = row
        status_indexes = frozenset(int(i) for i in json.loads(indexes))
        if now_ms >= expires or now_ms - seen >= self.idle_ms or self._revoked(status_indexes):
            self._delete("token_hash = ?", [key])
            return None
        if touch and now_ms - seen >= TOUCH_EVERY_MS:
            with write_transaction(self._db.conn):
                self._db.execute(
                    "UPDATE web_sessions SET seen_ms = ? WHERE token_hash = ?", [now_ms, key]
                )
            seen = now_ms
        return WebSession(
            did,
            method,
            csrf,
            created,
            seen,
            expires,
            Permissions.from_json(json.loads(perms)),
            status_indexes,
            tuple(json.loads(digests)),
            disclosure,
        )

    def close(self, token: str) -> bool:
        """Sign out: whether there was such a session."""
        return self._delete("token_hash = ?", [token_hash(token)]) > 0

    def close_person(self, did: str) -> int:
        """End every session of ``did`` (how many there were)."""
        return self._delete("did = ?", [did])

    def close_revoked(self) -> int:
        """End every session that a revoked or suspended credential is behind. Cheap when
        nothing changed (one look at the credentials table): the sessions are searched
        only after a revocation, suspension or resumption since the last call."""
        signature = self._db.execute(
            "SELECT count(revoked_ms), count(suspended_ms), max(suspended_ms) FROM credentials"
        ).fetchone()
        if signature == self._status_signature:
            return 0
        gone = self._delete(
            "status_indexes != '[]' AND EXISTS (SELECT 1 FROM json_each(web_sessions."
            "status_indexes) AS j JOIN credentials AS c ON c.status_index = j.value "
            "WHERE c.revoked_ms IS NOT NULL OR c.suspended_ms IS NOT NULL)",
            [],
        )
        self._status_signature = signature
        return gone

    def sweep(self, *, now_ms: int) -> int:
        """Delete sessions past their end or idle too long (how many). Housekeeping only:
        :meth:`find` refuses such a session anyway."""
        return self._delete("expires_ms <= ? OR seen_ms <= ?", [now_ms, now_ms - self.idle_ms])

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM web_sessions").fetchone()[0])

    def _revoked(self, indexes: frozenset[int]) -> bool:
        return bool(indexes) and bool(self._revoked_among(indexes))

    def _revoked_among(self, indexes: Collection[int]) -> set[int]:
        if not indexes:
            return set()
        marks = ",".join("?" * len(indexes))
        rows = self._db.execute(
            "SELECT status_index FROM credentials "  # noqa: S608 - only placeholders
            "WHERE (revoked_ms IS NOT NULL OR suspended_ms IS NOT NULL) "
            f"AND status_index IN ({marks})",
            list(indexes),
        ).fetchall()
        return {int(r[0]) for r in rows}

    def _delete(self, where: str, args: list[object]) -> int:
        with write_transaction(self._db.conn):
            cursor = self._db.execute(f"DELETE FROM web_sessions WHERE {where}", args)  # noqa: S608
        return int(cursor.rowcount)

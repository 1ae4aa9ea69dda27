"""API tokens: how programs (integrations, scripts, monitoring) call the JSON API.

A token is ``didgw_`` followed by 43 characters (base64url of 32 random bytes): the
prefix lets secret scanners find a leaked one. It is shown once, when created; the
``api_tokens`` table keeps only its SHA-256, so a copy of the database calls nothing.

Each token has a unique name and one role (:data:`ROLES`):

* ``operator``: everything the API offers, reading and changing;
* ``facility-manager``: the devices, reading and changing;
* ``reader``: everything the API offers, reading only.

Creating and revoking a token are on the record (kind ``api-token``, actor the gateway,
naming the token, its role and who made the change; never the secret), in the same
transaction as the change. A revoked token stays listed and never works again; an
expired one neither. Using a token writes its ``last_used_ms`` at most once a minute.

Sans-IO: time and randomness are arguments; nothing here reads the clock.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from gateway.chain.store import ChainStore, NewEntry
from gateway.credentials.permissions import Decision, Permissions
from gateway.db import write_transaction
from gateway.errors import DidgwError

PREFIX = "didgw_"
TOKEN_BYTES = 32
TOKEN_LENGTH = len(PREFIX) + 43
RECORD_KIND = "api-token"
#: ``last_used_ms`` is written at most this often (a request does not cost a write).
TOUCH_EVERY_MS = 60_000

#: role -> what it may do, in words (docs/api.md says the same)
ROLES: dict[str, str] = {
    "operator": "everything the API offers, reading and changing",
    "facility-manager": "the devices: reading and changing",
    "reader": "everything the API offers, reading only",
}
#: The parts of the API, each read and (some) changed.
AREAS = ("devices", "credentials", "market", "energy", "chain", "anchors", "status")

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_DURATION = re.compile(r"([1-9][0-9]{0,4})([hdw])")
_UNIT_MS = {"h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
_TOKEN = re.compile(re.escape(PREFIX) + r"[A-Za-z0-9_-]{43}")


class TokenError(DidgwError):
    """An API token operation was refused (bad name or role, unknown, already revoked)."""

    code = "token_refused"


@dataclass(frozen=True)
class ApiToken:
    """What the gateway keeps of a token: never the token itself."""

    name: str
    role: str
    created_ms: int
    created_by: str
    expires_ms: int | None = None
    last_used_ms: int | None = None
    revoked_ms: int | None = None
    revoked_by: str | None = None

    def usable(self, now_ms: int) -> bool:
        return self.revoked_ms is None and (self.expires_ms is None or now_ms < self.expires_ms)

    def state(self, now_ms: int) -> str:
        if self.revoked_ms is not None:
            return "revoked"
        return "active" if self.usable(now_ms) else "expired"

    def to_json(self, now_ms: int) -> dict[str, Any]:
        return {**self.__dict__, "state": self.state(now_ms)}


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise TokenError(
            f"token name {name!r} must be 1-64 characters: lower-case letters, digits, "
            "'_', '.', '-', starting with a letter or digit"
        )
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise TokenError(f"unknown role {role!r}; use one of: {', '.join(ROLES)}")
    return role


def parse_duration(text: str) -> int:
    """``90d``, ``12h``, ``2w`` as milliseconds."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise TokenError(f"duration {text!r}: give a number and h, d or w (e.g. 90d)")
    return int(found[1]) * _UNIT_MS[found[2]]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def principal_name(token_name: str) -> str:
    return f"token:{token_name}"


def permissions_of(token: ApiToken) -> Permissions:
    """What a token's role means in a person's terms (for code that asks a Permissions)."""
    return Permissions(
        principal_name(token.name), facility_manager=token.role in ("operator", "facility-manager")
    )


def role_may(role: str, area: str, *, change: bool) -> Decision:
    """Whether a token of ``role`` may read (or change) ``area`` of the API."""
    if area not in AREAS:
        return Decision(False, "unknown_area")
    if role == "operator":
        return Decision(True, "ok")
    if role == "reader":
        return Decision(not change, "ok" if not change else "read_only_token")
    if role == "facility-manager":
        return Decision(area == "devices", "ok" if area == "devices" else "devices_only_token")
    return Decision(False, "unknown_role")


class ApiTokens:
    """The ``api_tokens`` table of one database connection (used from one thread)."""

    def __init__(self, db: Database, *, gateway_did: str) -> None:
        self._db = db
        self._chain = ChainStore(db)
        self._did = gateway_did

    def create(
        self,
        name: str,
        role: str,
        *,
        by: str,
        now_ms: int,
        random_bytes: Callable[[int], bytes],
        expires_ms: int | None = None,
    ) -> tuple[str, ApiToken]:
        """A new token: (the secret, shown once; what is kept)."""
        check_name(name)
        check_role(role)
        if not by.strip():
            raise TokenError("creating a token needs who makes it")
        if expires_ms is not None and expires_ms <= now_ms:
            raise TokenError("a token's expiry must be in the future")
        secret = PREFIX + base64.urlsafe_b64encode(random_bytes(TOKEN_BYTES)).rstrip(b"=").decode()
        token = ApiToken(name, role, now_ms, by, expires_ms)
        with self._transaction():
            if self.find(name) is not None:
                raise TokenError(f"a token named {name!r} exists already (names are never reused)")
            self._db.execute(
                "INSERT INTO api_tokens (name, role, token_hash, created_ms, created_by, "
                "expires_ms) VALUES (?, ?, ?, ?, ?, ?)",
                [name, role, token_hash(secret), now_ms, by, expires_ms],
            )
            self._record("create", token, now_ms, by=by, expires=expires_ms)
        return secret, token

    def revoke(self, name: str, *, by: str, now_ms: int) -> ApiToken:
        """End a token for good."""
        if not by.strip():
            raise TokenError("revoking a token needs who makes it")
        with self._transaction():
            token = self.get(name)
            if token.revoked_ms is not None:
                raise TokenError(f"token {name!r} is already revoked")
            self._db.execute(
                "UPDATE api_tokens SET revoked_ms = ?, revoked_by = ? WHERE name = ?",
                [now_ms, by, name],
            )
            self._record("revoke", token, now_ms, by=by)
        return self.get(name)

    def tokens(self) -> list[ApiToken]:
        rows = self._db.execute(_SELECT + " ORDER BY created_ms, name").fetchall()
        return [ApiToken(*row) for row in rows]

    def find(self, name: str) -> ApiToken | None:
        row = self._db.execute(_SELECT + " WHERE name = ?", [name]).fetchone()
        return None if row is None else ApiToken(*row)

    def get(self, name: str) -> ApiToken:
        token = self.find(name)
        if token is None:
            raise TokenError(f"no API token named {name!r}")
        return token

    def check(self, secret: str, now_ms: int) -> ApiToken | None:
        """The usable token whose secret this is, or None (malformed, unknown, revoked,
        expired: the caller is told no more than that)."""
        if len(secret) != TOKEN_LENGTH or not _TOKEN.fullmatch(secret):
            return None
        row = self._db.execute(_SELECT + " WHERE token_hash = ?", [token_hash(secret)]).fetchone()
        if row is None:
            return None
        token = ApiToken(*row)
        if not token.usable(now_ms):
            return None
        if token.last_used_ms is None or now_ms - token.last_used_ms >= TOUCH_EVERY_MS:
            with write_transaction(self._db.conn):
                self._db.execute(
                    "UPDATE api_tokens SET last_used_ms = ? WHERE name = ?", [now_ms, token.name]
                )
        return token

    def _record(self, action: str, token: ApiToken, now_ms: int, **extra: Any) -> None:
        body = {"action": action, "token": token.name, "role": token.role, **extra}
        payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        self._chain.append_within([NewEntry(RECORD_KIND, self._did, payload)], now_ms=now_ms)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        try:
            with write_transaction(self._db.conn):
                yield
        except BaseException:
            self._chain.resync()
            raise


_SELECT = (
    "SELECT name, role, created_ms, created_by, expires_ms, last_used_ms, revoked_ms, "
    "revoked_by FROM api_tokens"
)

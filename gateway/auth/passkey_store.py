"""The ``passkeys`` table: each passkey, the DID it is bound to, and what binding it proved.

A passkey login presents no credential, so the row keeps what the binding presentation
established: the permissions, the revocation bits (status indexes) of the credentials
behind it, the earliest of their expiries, the presentations' digests and the record
entry holding what they disclosed. :meth:`PasskeyStore.check_credentials` re-reads the
gateway's credentials table at every login: a credential revoked, expired or unknown
refuses the login (fail closed).

Binding and removal go on the record (``passkey-bound``, ``passkey-removed``) in the same
transaction as the row. One connection, used from one thread; time comes in.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from gateway.auth import passkeys as core
from gateway.auth.passkeys import NewPasskey, PasskeyRefused
from gateway.chain.store import ChainStore
from gateway.credentials.permissions import Permissions
from gateway.db import write_transaction

MAX_PER_PERSON = 10
MAX_NAME = 64


@dataclass(frozen=True)
class Passkey:
    credential_id: str  # base64url
    did: str
    name: str
    public_key: bytes
    sign_count: int
    user_handle: str
    created_ms: int
    last_used_ms: int | None
    permissions: Permissions
    status_indexes: frozenset[int]
    expires_ms: int  # the earliest expiry of the credentials behind it
    presentations: tuple[str, ...]
    disclosure: int | None
    bound_entry: int | None = None  # the passkey-bound entry (None: bound before it was kept)

    @property
    def label(self) -> str:
        return self.name or f"passkey {core.credential_id_hash(self.credential_id)[:8]}"


_COLUMNS = (
    "credential_id, did, name, public_key, sign_count, user_handle, created_ms, last_used_ms, "
    "permissions, status_indexes, expires_ms, presentations, disclosure, bound_entry"
)


def _passkey(row: tuple[Any, ...]) -> Passkey:
    cid, did, name, key, count, handle, created, used, perms, idx, exp, digests, disc, bound = row
    return Passkey(
        str(cid),
        str(did),
        str(name),
        bytes(key),
        int(count),
        str(handle),
        int(created),
        None if used is None else int(used),
        Permissions.from_json(json.loads(str(perms))),
        frozenset(int(i) for i in json.loads(str(idx))),
        int(exp),
        tuple(json.loads(str(digests))),
        None if disc is None else int(disc),
        None if bound is None else int(bound),
    )


class PasskeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.chain = ChainStore(db)

    def of(self, did: str) -> list[Passkey]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM passkeys WHERE did = ? ORDER BY created_ms",  # noqa: S608
            [did],
        ).fetchall()
        return [_passkey(r) for r in rows]

    def find(self, credential_id: str) -> Passkey | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM passkeys WHERE credential_id = ?",  # noqa: S608
            [credential_id],
        ).fetchone()
        return None if row is None else _passkey(row)

    def credentials_expiry(self, status_indexes: Collection[int], *, now_ms: int) -> int:
        """The earliest expiry of these credentials, or a refusal (none, unknown, revoked,
        suspended, expired): the check of every passkey binding and login."""
        if not status_indexes:
            raise PasskeyRefused(
                "no_credential", "no credential of this gateway's is behind this sign-in"
            )
        marks = ",".join("?" * len(status_indexes))
        rows = self._db.execute(
            f"SELECT status_index, expires_ms, revoked_ms, suspended_ms FROM credentials "  # noqa: S608
            f"WHERE status_index IN ({marks})",
            sorted(status_indexes),
        ).fetchall()
        if len(rows) != len(status_indexes):
            raise PasskeyRefused("no_credential", "a credential behind this passkey is unknown")
        if any(revoked is not None for _, _, revoked, _ in rows):
            raise PasskeyRefused(
                "revoked",
                "the credential behind this passkey was revoked; "
                "ask for a new one and sign in with it",
            )
        if any(suspended is not None for _, _, _, suspended in rows):
            raise PasskeyRefused(
                "suspended",
                "the credential behind this passkey is suspended; "
                "ask the gateway's operator to resume it",
            )
        earliest = min(int(expires) for _, expires, _, _ in rows)
        if earliest <= now_ms:
            raise PasskeyRefused(
                "expired",
                "the credential behind this passkey has expired; "
                "ask for a new one and sign in with it",
            )
        return earliest

    def bind(
        self,
        new: NewPasskey,
        *,
        did: str,
        name: str,
        permissions: Permissions,
        status_indexes: Collection[int],
        presentations: list[str],
        disclosure: int | None,
        now_ms: int,
    ) -> Passkey:
        """Keep a verified passkey for ``did`` and put the binding on the record."""
        expires = self.credentials_expiry(status_indexes, now_ms=now_ms)
        name = " ".join(name.split())[:MAX_NAME]
        try:
            with write_transaction(self._db.conn):
                count = self._db.execute(
                    "SELECT count(*) FROM passkeys WHERE did = ?", [did]
                ).fetchone()[0]
                if count >= MAX_PER_PERSON:
                    raise PasskeyRefused(
                        "too_many",
                        "at most {limit} passkeys; remove one first",
                        limit=MAX_PER_PERSON,
                    )
                if self.find(new.credential_id) is not None:
                    raise PasskeyRefused("exists", "this passkey is already bound")
                [bound] = self.chain.append_within(
                    [
                        core.bound_entry(
                            did, new.credential_id, presentations, disclosure, new.public_key
                        )
                    ],
                    now_ms=now_ms,
                )
                self._db.execute(
                    f"INSERT INTO passkeys ({_COLUMNS}) "  # noqa: S608
                    "VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?)",
                    [
                        new.credential_id,
                        did,
                        name,
                        new.public_key,
                        new.sign_count,
                        new.user_handle,
                        now_ms,
                        json.dumps(permissions.to_json(), separators=(",", ":")),
                        json.dumps(sorted(status_indexes)),
                        expires,
                        json.dumps(presentations),
                        disclosure,
                        bound.seq,
                    ],
                )
        except BaseException:
            self.chain.resync()
            raise
        found = self.find(new.credential_id)
        assert found is not None  # noqa: S101 - just written
        return found

    def remove(self, did: str, credential_id: str, *, reason: str, now_ms: int) -> bool:
        """Forget one of ``did``'s passkeys, on the record; whether she had it."""
        try:
            with write_transaction(self._db.conn):
                gone = self._db.execute(
                    "DELETE FROM passkeys WHERE did = ? AND credential_id = ?",
                    [did, credential_id],
                ).rowcount
                if gone:
                    self.chain.append_within(
                        [core.removed_entry(did, credential_id, reason)], now_ms=now_ms
                    )
        except BaseException:
            self.chain.resync()
            raise
        return bool(gone)

    def counted(self, passkey: Passkey, sign_count: int, *, now_ms: int) -> None:
        """A signature by ``passkey`` (an order): its new sign count kept."""
        with write_transaction(self._db.conn):
            self._db.execute(
                "UPDATE passkeys SET sign_count = ?, last_used_ms = ? WHERE credential_id = ?",
                [sign_count, now_ms, passkey.credential_id],
            )

    def signed_in(self, passkey: Passkey, sign_count: int, *, now_ms: int) -> int:
        """A login by ``passkey``: the new sign count kept, the session on the record (like
        a presentation sign-in's, naming the binding's presentations). Returns the new
        session entry's sequence number."""
        try:
            with write_transaction(self._db.conn):
                self._db.execute(
                    "UPDATE passkeys SET sign_count = ?, last_used_ms = ? WHERE credential_id = ?",
                    [sign_count, now_ms, passkey.credential_id],
                )
                [entry] = self.chain.append_within(
                    [
                        core.session_entry(
                            passkey.did,
                            credential_id=passkey.credential_id,
                            digests=list(passkey.presentations),
                            disclosure=passkey.disclosure,
                            expires_ms=passkey.expires_ms,
                        )
                    ],
                    now_ms=now_ms,
                )
        except BaseException:
            self.chain.resync()
            raise
        return entry.seq

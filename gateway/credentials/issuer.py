"""The gateway as an issuer: issue, list, suspend, resume and revoke credentials, and sign
its status list.

Only what a credential *is* is kept (id, kind, subject DID, format, status bit, times):
its claims stay with the holder. Each issuance, suspension, resumption and revocation is
a ``credential`` entry on the record, written in the same transaction as the table, so
neither can exist without the other. Status bits are picked at random among the free ones
(the specification's advice: consecutive bits would tell a verifier who was issued when).

A revocation is for good and published (the credential's bit in the status list). A
suspension is undone by a resumption and is *not* published: it is enforced by this
gateway only, which trusts no issuer but itself and reads its own table at every check
(:meth:`CredentialIssuer.local_suspended`; docs/formats.md says why).

Time and randomness come in as arguments; nothing here reads the clock.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from gateway.chain.store import ChainStore, NewEntry
from gateway.credentials import sd_jwt, status_list
from gateway.credentials.data_integrity import add_proof, format_datetime
from gateway.credentials.kinds import check_claims, kind_named
from gateway.credentials.vc import V2_CONTEXT
from gateway.db import write_transaction
from gateway.errors import CredentialError, DidgwError
from gateway.identity.did_key import parse_did_key
from gateway.identity.signing import Signer

FORMATS = ("vc", "sd-jwt")
RandomBytes = Callable[[int], bytes]


@dataclass(frozen=True)
class IssuedRecord:
    """What the gateway remembers of a credential it issued."""

    id: str
    type: str
    subject: str
    format: str
    status_index: int
    issued_ms: int
    expires_ms: int
    revoked_ms: int | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    suspended_ms: int | None = None
    suspended_by: str | None = None
    suspend_reason: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_ms is not None

    @property
    def suspended(self) -> bool:
        """Suspended now (a revoked credential may have been suspended before: revoked wins)."""
        return self.suspended_ms is not None and not self.revoked

    @property
    def state(self) -> str:
        """``revoked``, ``suspended`` or ``valid`` (expiry is not a state: it needs a clock)."""
        return "revoked" if self.revoked else "suspended" if self.suspended else "valid"

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "revoked": self.revoked, "suspended": self.suspended}


@dataclass(frozen=True)
class Issued:
    record: IssuedRecord
    text: str  # the credential as the holder receives it (JSON, or the SD-JWT)


class CredentialIssuer:
    """Issuing, listing, revoking, and the signed status list of one gateway."""

    def __init__(
        self,
        db: Database,
        *,
        gateway_did: str,
        list_url: str,
        validity_seconds: int,
        status_valid_seconds: int,
    ) -> None:
        self._db = db
        self._chain = ChainStore(db)
        self._did = gateway_did
        self.list_url = list_url or default_list_url(gateway_did)
        self._validity = validity_seconds
        self._status_valid = status_valid_seconds

    # -- issuing --------------------------------------------------------------

    def issue(
        self,
        kind_name: str,
        subject: str,
        claims: Mapping[str, str],
        *,
        fmt: str,
        signer: Signer,
        now: float,
        random_bytes: RandomBytes,
    ) -> Issued:
        """Issue a credential of ``kind_name`` about ``subject`` (a DID)."""
        kind = kind_named(kind_name)
        claims = check_claims(kind, claims)
        if fmt not in FORMATS:
            raise CredentialError(f"format {fmt!r} is not one of {list(FORMATS)}")
        if signer.did != self._did:
            raise CredentialError("the signer is not this gateway")
        holder_key = _subject_key(subject) if fmt == "sd-jwt" else b""
        if fmt == "vc":
            _subject_key_or_did(subject)
        cred_id = f"urn:uuid:{uuid.UUID(bytes=random_bytes(16), version=4)}"
        issued_ms, expires_ms = int(now * 1000), int((now + self._validity) * 1000)
        with self._transaction():
            index = self._free_index(random_bytes)
            record = IssuedRecord(cred_id, kind.name, subject, fmt, index, issued_ms, expires_ms)
            self._db.execute(
                "INSERT INTO credentials (id, type, subject, format, status_index, issued_ms, "
                "expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [cred_id, kind.name, subject, fmt, index, issued_ms, expires_ms],
            )
            self._record("issue", record, now)
        if fmt == "vc":
            document = {
                "@context": [V2_CONTEXT],
                "id": cred_id,
                "type": ["VerifiableCredential", kind.vc_type],
                "issuer": self._did,
                "validFrom": format_datetime(now),
                "validUntil": format_datetime(now + self._validity),
                "credentialSubject": {"id": subject, **claims},
                "credentialStatus": status_list.status_entry(self.list_url, index),
            }
            text = json.dumps(add_proof(document, signer, created=format_datetime(now)), indent=2)
        else:
            clear = {
                "iss": self._did,
                "iat": int(now),
                "exp": int(now + self._validity),
                "vct": kind.vct,
                "sub": subject,
                "cnf": {"jwk": sd_jwt.ed25519_jwk(holder_key)},
                "status": {"status_list": {"idx": index, "uri": self.list_url}},
            }
            text = sd_jwt.issue(clear, claims, signer, random_bytes=random_bytes)
        return Issued(record, text)

    def _free_index(self, random_bytes: RandomBytes) -> int:
        for _ in range(64):
            index = int.from_bytes(random_bytes(4), "big") % status_list.MIN_BITS
            taken = self._db.execute(
                "SELECT 1 FROM credentials WHERE status_index = ?", [index]
            ).fetchone()
            if taken is None:
                return index
        raise CredentialError("the status list is full; no revocation bit is free")

    # -- listing, suspending and revoking -------------------------------------------

    def records(self) -> list[IssuedRecord]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM credentials ORDER BY issued_ms, id"  # noqa: S608
        ).fetchall()
        return [IssuedRecord(*row) for row in rows]

    def has_issued_to(self, subject: str) -> bool:
        """Whether any credential was ever issued to ``subject`` (revoked or expired too)."""
        row = self._db.execute(
            "SELECT 1 FROM credentials WHERE subject = ? LIMIT 1", [subject]
        ).fetchone()
        return row is not None

    def get(self, cred_id: str) -> IssuedRecord:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM credentials WHERE id = ?",  # noqa: S608
            [cred_id],
        ).fetchone()
        if row is None:
            raise CredentialError(f"no credential {cred_id!r} was issued by this gateway")
        return IssuedRecord(*row)

    def revoke(self, cred_id: str, *, by: str, reason: str, now: float) -> IssuedRecord:
        """Set the credential's revocation bit, for good."""
        if not reason.strip() or not by.strip():
            raise CredentialError("a revocation needs a reason and who makes it")
        with self._transaction():
            record = self.get(cred_id)
            if record.revoked:
                raise CredentialError(f"{cred_id} is already revoked")
            self._db.execute(
                "UPDATE credentials SET revoked_ms = ?, revoked_by = ?, revoke_reason = ? "
                "WHERE id = ?",
                [int(now * 1000), by, reason, cred_id],
            )
            revoked = self.get(cred_id)
            self._record("revoke", revoked, now, by=by, reason=reason)
        return revoked

    def suspend(self, cred_id: str, *, by: str, reason: str, now: float) -> IssuedRecord:
        """Refuse the credential at every sign-in here, and end the sessions behind it,
        until :meth:`resume`. Not published in the status list (see the module docstring)."""
        return self._suspension("suspend", cred_id, by=by, reason=reason, now=now)

    def resume(self, cred_id: str, *, by: str, reason: str, now: float) -> IssuedRecord:
        """Undo :meth:`suspend`: new sign-ins with the credential go through again (the
        sessions that the suspension ended stay ended)."""
        return self._suspension("resume", cred_id, by=by, reason=reason, now=now)

    def _suspension(
        self, action: str, cred_id: str, *, by: str, reason: str, now: float
    ) -> IssuedRecord:
        noun = "suspension" if action == "suspend" else "resumption"
        if not reason.strip() or not by.strip():
            raise CredentialError(f"a {noun} needs a reason and who makes it")
        with self._transaction():
            record = self.get(cred_id)
            if record.revoked:
                raise CredentialError(
                    f"{cred_id} is revoked, which is permanent: it cannot be {action}d"
                )
            if action == "suspend" and record.suspended:
                raise CredentialError(f"{cred_id} is already suspended")
            if action == "resume" and not record.suspended:
                raise CredentialError(f"{cred_id} is already in force (it is not suspended)")
            values = [int(now * 1000), by, reason] if action == "suspend" else [None] * 3
            self._db.execute(
                "UPDATE credentials SET suspended_ms = ?, suspended_by = ?, suspend_reason = ? "
                "WHERE id = ?",
                [*values, cred_id],
            )
            changed = self.get(cred_id)
            self._record(action, changed, now, by=by, reason=reason)
        return changed

    def suspended_indexes(self) -> list[int]:
        rows = self._db.execute(
            "SELECT status_index FROM credentials "
            "WHERE suspended_ms IS NOT NULL AND revoked_ms IS NULL"
        ).fetchall()
        return [int(r[0]) for r in rows]

    def ended_indexes(self) -> list[int]:
        """The status bits of credentials that end the sessions behind them: revoked or
        suspended."""
        rows = self._db.execute(
            "SELECT status_index FROM credentials "
            "WHERE revoked_ms IS NOT NULL OR suspended_ms IS NOT NULL"
        ).fetchall()
        return [int(r[0]) for r in rows]

    def revoked_indexes(self) -> list[int]:
        rows = self._db.execute(
            "SELECT status_index FROM credentials WHERE revoked_ms IS NOT NULL"
        ).fetchall()
        return [int(r[0]) for r in rows]

    def revision(self) -> int:
        """Changes whenever the list changes (how many revocations so far)."""
        row = self._db.execute(
            "SELECT count(*) FROM credentials WHERE revoked_ms IS NOT NULL"
        ).fetchone()
        return int(row[0])

    # -- the status list ----------------------------------------------------------

    def status_list_credential(self, signer: Signer, *, now: float) -> dict[str, Any]:
        """The signed ``BitstringStatusListCredential``, valid for ``status_valid_seconds``."""
        bits = status_list.bitstring(self.revoked_indexes())
        unsigned = status_list.list_credential(
            self._did,
            self.list_url,
            bits,
            valid_from=format_datetime(now),
            valid_until=format_datetime(now + self._status_valid),
        )
        return add_proof(unsigned, signer, created=format_datetime(now))

    def local_list(self, url: str, issuer: str) -> bytes | None:
        """For :class:`StatusLists`: our own list's bits, straight from our database."""
        if url != self.list_url or issuer != self._did:
            return None
        return status_list.bitstring(self.revoked_indexes())

    def local_suspended(self, url: str, issuer: str, index: int) -> bool | None:
        """For :class:`StatusLists`: whether our credential at ``index`` is suspended, from
        our database (None: not our list, so not ours to say)."""
        if url != self.list_url or issuer != self._did:
            return None
        row = self._db.execute(
            "SELECT 1 FROM credentials WHERE status_index = ? AND suspended_ms IS NOT NULL",
            [index],
        ).fetchone()
        return row is not None

    # -- internals -----------------------------------------------------------------

    def _record(self, action: str, record: IssuedRecord, now: float, **extra: str) -> None:
        body = {"action": action, "id": record.id, "type": record.type, "subject": record.subject}
        payload = json.dumps({**body, **extra}, sort_keys=True, separators=(",", ":")).encode()
        self._chain.append_within(
            [NewEntry("credential", self._did, payload)], now_ms=int(now * 1000)
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        try:
            with write_transaction(self._db.conn):
                yield
        except BaseException as exc:
            self._chain.resync()
            if isinstance(exc, sqlite3.Error):
                raise CredentialError(f"cannot write credentials: {exc}; nothing changed") from None
            raise


_COLUMNS = (
    "id, type, subject, format, status_index, issued_ms, expires_ms, revoked_ms, revoked_by, "
    "revoke_reason, suspended_ms, suspended_by, suspend_reason"
)


def default_list_url(gateway_did: str) -> str:
    """Where the gateway's revocation list is named when ``[credentials] status_list_url``
    is empty: a URN (it is published over MQTT and CoAP, not at an HTTP address)."""
    return f"urn:didgw:status-list:{gateway_did}"


def _subject_key(subject: str) -> bytes:
    """The holder key of an SD-JWT VC: the subject must be a did:key (its key is the DID)."""
    try:
        return parse_did_key(subject).public_key
    except DidgwError as exc:
        raise CredentialError(
            f"an SD-JWT credential is bound to the holder's key, so --subject must be a "
            f"did:key: {exc}"
        ) from None


def _subject_key_or_did(subject: str) -> None:
    from gateway.identity.document import check_did_syntax

    try:
        check_did_syntax(subject)
    except DidgwError as exc:
        raise CredentialError(f"subject: {exc}") from None

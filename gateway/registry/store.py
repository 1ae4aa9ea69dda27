"""The registry in the gateway database: devices, and an append-only audit of every change.

Every change and its audit record are written in one transaction, so the
history can never disagree with the state. Inputs are checked, and the DID
resolved, before the transaction starts: a refused command changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlite_utils import Database

from gateway.chain.store import ChainStore, NewEntry
from gateway.db import write_transaction
from gateway.errors import RegistryError
from gateway.identity.document import check_did_syntax, usable_ed25519_methods
from gateway.identity.resolver import Resolver
from gateway.registry.model import (
    AuditRecord,
    Device,
    Status,
    check_capability,
    check_kind,
    check_name,
    check_topic,
    next_status,
)

if TYPE_CHECKING:
    from gateway.registry.bulk import DeviceRow

_DEVICE_COLUMNS = (
    "did, name, kind, owner, topics, capabilities, metadata, status, "
    "created_at, updated_at, replaces, replaced_by"
)
# Built once from the constant above; never from input.
_SELECT_DEVICES = f"SELECT {_DEVICE_COLUMNS} FROM devices"  # noqa: S608
_INSERT_DEVICE = f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES ({', '.join('?' * 12)})"  # noqa: S608
_SELECT_AUDIT = "SELECT id, ts, actor, action, device, reason, detail FROM registry_audit"
_INSERT_AUDIT = (
    "INSERT INTO registry_audit (ts, actor, action, device, reason, detail) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


class Registry:
    """Register, look up and change devices; every change is audited."""

    def __init__(
        self,
        db: Database,
        resolver: Resolver,
        *,
        chain: ChainStore | None = None,
        gateway_did: str | None = None,
    ) -> None:
        """With ``chain`` (and the ``gateway_did`` that records), every change is also
        appended to the record, in the same transaction as the change itself."""
        self._db = db
        self._resolver = resolver
        self._chain = chain
        self._gateway_did = gateway_did

    # -- reading -----------------------------------------------------------

    def find(self, did: str) -> Device | None:
        row = self._db.execute(_SELECT_DEVICES + " WHERE did = ?", [did]).fetchone()
        return device_of_row(row) if row else None

    def status(self, did: str) -> Status | None:
        """``did``'s status (None: not registered), from its row's one column: asked twice per
        handshake (whose pool its challenge goes in, then whether it may have a session), so
        without reading and decoding the rest of the row as :meth:`find` does."""
        row = self._db.conn.execute("SELECT status FROM devices WHERE did = ?", (did,)).fetchone()
        return None if row is None else Status(row[0])

    def get(self, did: str) -> Device:
        check_did_syntax(did)
        device = self.find(did)
        if device is None:
            raise RegistryError(f"no device {did} is registered")
        return device

    def devices(self, status: Status | None = None) -> list[Device]:
        sql = _SELECT_DEVICES
        args: list[Any] = []
        if status is not None:
            sql += " WHERE status = ?"
            args.append(status.value)
        return [
            device_of_row(row) for row in self._db.execute(sql + " ORDER BY created_at, did", args)
        ]

    def page(
        self,
        *,
        limit: int,
        after: tuple[float, str] | None = None,
        status: Status | None = None,
        query: str = "",
    ) -> list[Device]:
        """Up to ``limit`` devices in registration order (``created_at``, ``did``) after the
        position ``after`` (a cursor: the last device of the previous page), of one
        ``status``, whose name or DID contains ``query``. An index range (``devices_order``,
        ``devices_status_order``), so a page costs the same however many devices there are."""
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            where.append("status = ?")
            args.append(status.value)
        if after is not None:
            where.append("(created_at, did) > (?, ?)")
            args += [after[0], after[1]]
        if query:
            pattern = (
                "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            )
            where.append("(name LIKE ? ESCAPE '\\' OR did LIKE ? ESCAPE '\\')")
            args += [pattern, pattern]
        sql = _SELECT_DEVICES + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._db.execute(sql + " ORDER BY created_at, did LIMIT ?", [*args, limit])
        return [device_of_row(row) for row in rows]

    def known(self, dids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Which of ``dids`` are registered (in any status): DID → (name, status)."""
        found: dict[str, tuple[str, str]] = {}
        for i in range(0, len(dids), 500):
            chunk = dids[i : i + 500]
            sql = (
                f"SELECT did, name, status FROM devices WHERE did IN ({','.join('?' * len(chunk))})"  # noqa: S608
            )
            found.update((r[0], (r[1], r[2])) for r in self._db.execute(sql, chunk))
        return found

    def history(self, did: str) -> list[AuditRecord]:
        rows = self._db.execute(_SELECT_AUDIT + " WHERE device = ? ORDER BY id", [did])
        return [_audit_record(row) for row in rows]

    def last_change(self) -> int:
        """The id of the newest audit record (0 when there is none)."""
        row = self._db.execute("SELECT max(id) FROM registry_audit").fetchone()
        return int(row[0] or 0)

    def changes_after(self, ts: float) -> list[AuditRecord]:
        """Audit records made at or after ``ts`` (Unix s), oldest first."""
        rows = self._db.execute(_SELECT_AUDIT + " WHERE ts >= ? ORDER BY id", [ts])
        return [_audit_record(row) for row in rows]

    def changes_since(self, audit_id: int) -> list[AuditRecord]:
        """Audit records newer than ``audit_id``, oldest first (for a running gateway)."""
        rows = self._db.execute(_SELECT_AUDIT + " WHERE id > ? ORDER BY id", [audit_id])
        return [_audit_record(row) for row in rows]

    # -- changing ----------------------------------------------------------

    def register(
        self,
        did: str,
        *,
        name: str,
        kind: str,
        actor: str,
        now: float,
        owner: str | None = None,
        topics: Iterable[str] = (),
        capabilities: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
        reason: str = "registered",
        also: Sequence[NewEntry] = (),
    ) -> Device:
        """Add a device. Its DID must resolve to a document with an Ed25519 authentication key.

        ``also``: entries to append to the record in the same transaction (a person's
        action with the digest of the presentation that allowed it)."""
        device = self._new_device(
            did,
            name=name,
            kind=kind,
            now=now,
            owner=owner,
            topics=topics,
            capabilities=capabilities,
            metadata=metadata,
        )
        _check_actor(actor, reason)
        self._refuse_known(did)
        self._check_resolvable(did, now)
        with self._transaction():
            self._insert(device)
            detail = {"kind": device.kind, "name": device.name}
            self._audit("register", did, actor=actor, reason=reason, now=now, detail=detail)
            self._also(also, now)
        return device

    def register_many(
        self,
        rows: Sequence[DeviceRow],
        *,
        actor: str,
        reason: str,
        now: float,
        also: Callable[[Device], Sequence[NewEntry]] | None = None,
    ) -> list[Device]:
        """Add every device of ``rows`` (checked by :mod:`gateway.registry.bulk`) in one
        transaction, each audited and on the record as :meth:`register` does, or none.

        One transaction and one batch of record entries instead of one each per device:
        what makes 10,000 devices take seconds, not minutes."""
        _check_actor(actor, reason)
        devices = [
            self._new_device(
                r.did, name=r.name, kind=r.kind, now=now, owner=r.owner, topics=(),
                capabilities=(), metadata=r.metadata,
            )
            for r in rows
        ]  # fmt: skip
        known = self.known([d.did for d in devices])
        if known:
            did = next(iter(known))
            raise RegistryError(f"{did} is already registered; nothing was registered")
        for device in devices:
            self._check_resolvable(device.did, now)
        entries: list[NewEntry] = []
        audits: list[tuple[Any, ...]] = []
        for d in devices:
            detail = {"kind": d.kind, "name": d.name}
            audits.append(
                (now, actor, "register", d.did, reason, json.dumps(detail, sort_keys=True))
            )
            if self._chain is not None and self._gateway_did is not None:
                entries.append(self._audit_entry("register", d.did, actor, reason, detail))
            if also is not None:
                entries.extend(also(d))
        with self._transaction():
            try:
                self._db.conn.executemany(_INSERT_DEVICE, [_device_row(d) for d in devices])
            except sqlite3.IntegrityError:
                raise RegistryError(
                    "a device of the file was registered meanwhile; nothing was registered"
                ) from None
            self._db.conn.executemany(_INSERT_AUDIT, audits)
            if entries:
                if self._chain is None:
                    raise RegistryError("this registry has no record to append the action to")
                self._chain.append_within(entries, now_ms=int(now * 1000))
        return devices

    def check_resolvable(self, did: str, now: float) -> None:
        """Raise unless ``did`` resolves to a document with an Ed25519 authentication key."""
        self._check_resolvable(did, now)

    def suspend(
        self, did: str, *, actor: str, reason: str, now: float, also: Sequence[NewEntry] = ()
    ) -> Device:
        """Stop a device temporarily (a stolen sensor, a meter under repair)."""
        return self._transition("suspend", did, actor=actor, reason=reason, now=now, also=also)

    def resume(
        self, did: str, *, actor: str, reason: str, now: float, also: Sequence[NewEntry] = ()
    ) -> Device:
        return self._transition("resume", did, actor=actor, reason=reason, now=now, also=also)

    def revoke(
        self, did: str, *, actor: str, reason: str, now: float, also: Sequence[NewEntry] = ()
    ) -> Device:
        """Remove a device for good. Its DID can never be registered again."""
        return self._transition("revoke", did, actor=actor, reason=reason, now=now, also=also)

    def rotate(
        self,
        old: str,
        new: str,
        *,
        actor: str,
        reason: str,
        now: float,
        also: Sequence[NewEntry] = (),
    ) -> Device:
        """Move a device to a new DID (new key): the new one takes over, the old is revoked."""
        _check_actor(actor, reason)
        current = self.get(old)
        next_status("rotate", old, current.status)
        if new == old:
            raise RegistryError("the new DID is the same as the old one")
        replacement = self._new_device(
            new,
            name=current.name,
            kind=current.kind,
            now=now,
            owner=current.owner,
            topics=current.topics,
            capabilities=current.capabilities,
            metadata=current.metadata,
        )
        replacement = Device(**{**replacement.__dict__, "replaces": old})
        self._refuse_known(new)
        self._check_resolvable(new, now)
        with self._transaction():
            self._insert(replacement)
            self._db.execute(
                "UPDATE devices SET status = ?, replaced_by = ?, updated_at = ? WHERE did = ?",
                [Status.REVOKED.value, new, now, old],
            )
            self._audit(
                "rotate", old, actor=actor, reason=reason, now=now, detail={"replaced_by": new}
            )
            self._audit(
                "register", new, actor=actor, reason=reason, now=now, detail={"replaces": old}
            )
            self._also(also, now)
        return replacement

    # -- internals ---------------------------------------------------------

    def _new_device(
        self,
        did: str,
        *,
        name: str,
        kind: str,
        now: float,
        owner: str | None,
        topics: Iterable[str],
        capabilities: Iterable[str],
        metadata: Mapping[str, Any] | None,
    ) -> Device:
        check_did_syntax(did)
        if owner is not None:
            check_did_syntax(owner)
        return Device(
            did=did,
            name=check_name(name),
            kind=check_kind(kind),
            status=Status.ACTIVE,
            created_at=now,
            updated_at=now,
            owner=owner,
            topics=tuple(dict.fromkeys(check_topic(t) for t in topics)),
            capabilities=tuple(dict.fromkeys(check_capability(c) for c in capabilities)),
            metadata=dict(metadata or {}),
        )

    def _refuse_known(self, did: str) -> None:
        existing = self.find(did)
        if existing is not None:
            hint = (
                " (revoked DIDs cannot be registered again)"
                if existing.status is Status.REVOKED
                else ""
            )
            raise RegistryError(
                f"{did} is already registered as {existing.name!r}, {existing.status.value}{hint}"
            )

    def _check_resolvable(self, did: str, now: float) -> None:
        document = self._resolver.resolve(did, now=now).document
        if not usable_ed25519_methods(document, "authentication"):
            raise RegistryError(
                f"the DID document of {did} has no Ed25519 authentication key, "
                "so the device could never authenticate"
            )

    def _transition(
        self,
        action: str,
        did: str,
        *,
        actor: str,
        reason: str,
        now: float,
        also: Sequence[NewEntry] = (),
    ) -> Device:
        _check_actor(actor, reason)
        device = self.get(did)
        after = next_status(action, did, device.status)
        with self._transaction():
            self._db.execute(
                "UPDATE devices SET status = ?, updated_at = ? WHERE did = ? AND status = ?",
                [after.value, now, did, device.status.value],
            )
            detail = {"from": device.status.value, "to": after.value}
            self._audit(action, did, actor=actor, reason=reason, now=now, detail=detail)
            self._also(also, now)
        return self.get(did)

    def _also(self, entries: Sequence[NewEntry], now: float) -> None:
        if entries:
            if self._chain is None:
                raise RegistryError("this registry has no record to append the action to")
            self._chain.append_within(list(entries), now_ms=int(now * 1000))

    def _insert(self, device: Device) -> None:
        try:
            self._db.execute(_INSERT_DEVICE, _device_row(device))
        except sqlite3.IntegrityError:
            raise RegistryError(f"{device.did} is already registered") from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        try:
            with write_transaction(self._db.conn):
                yield
        except BaseException as exc:
            if self._chain is not None:
                self._chain.resync()
            if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
                raise RegistryError(
                    f"cannot write the registry: {exc}; nothing was changed"
                ) from None
            raise

    def _audit(
        self, action: str, did: str, *, actor: str, reason: str, now: float, detail: dict[str, Any]
    ) -> None:
        self._db.execute(
            _INSERT_AUDIT, [now, actor, action, did, reason, json.dumps(detail, sort_keys=True)]
        )
        if self._chain is not None and self._gateway_did is not None:
            entry = self._audit_entry(action, did, actor, reason, detail)
            self._chain.append_within([entry], now_ms=int(now * 1000))

    def _audit_entry(
        self, action: str, did: str, actor: str, reason: str, detail: dict[str, Any]
    ) -> NewEntry:
        """The record's copy of one audit record (the gateway's ``registry`` entry)."""
        record = {"action": action, "device": did, "by": actor, "reason": reason, **detail}
        payload = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        return NewEntry("registry", str(self._gateway_did), payload)


def _device_row(device: Device) -> list[Any]:
    return [
        device.did,
        device.name,
        device.kind,
        device.owner,
        json.dumps(list(device.topics)),
        json.dumps(list(device.capabilities)),
        json.dumps(device.metadata, sort_keys=True),
        device.status.value,
        device.created_at,
        device.updated_at,
        device.replaces,
        device.replaced_by,
    ]


def _check_actor(actor: str, reason: str) -> None:
    if not actor.strip():
        raise RegistryError("every registry change needs an actor (who is making it)")
    if not reason.strip():
        raise RegistryError("every registry change needs a reason")


def _audit_record(row: tuple[Any, ...]) -> AuditRecord:
    return AuditRecord(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]))


def device_of_row(row: tuple[Any, ...]) -> Device:
    """A ``devices`` row (every column, in table order) as a :class:`Device`."""
    return Device(
        did=row[0],
        name=row[1],
        kind=row[2],
        owner=row[3],
        topics=tuple(json.loads(row[4])),
        capabilities=tuple(json.loads(row[5])),
        metadata=json.loads(row[6]),
        status=Status(row[7]),
        created_at=row[8],
        updated_at=row[9],
        replaces=row[10],
        replaced_by=row[11],
    )

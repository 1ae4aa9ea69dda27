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


MIGRATIONS: list[Migration] = [
    ("0001_gateway_meta", _gateway_meta),
    ("0002_device_registry", _device_registry),
    ("0003_registry_audit", _registry_audit),
    ("0004_resolution_cache", _resolution_cache),
]

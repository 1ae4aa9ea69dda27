"""Named migrations: recorded, atomic, never lose data, refuse a newer schema; the files are
readable by their owner alone."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path

import pytest
from sqlite_utils import Database

from gateway.db import applied_migrations, connect, migrate, pending_migrations
from gateway.errors import StateError
from gateway.migrations import MIGRATIONS


def test_fresh_database_gets_every_migration_recorded_by_name(tmp_path: Path) -> None:
    db = connect(tmp_path / "g.db")
    applied = migrate(db, now=123.0)
    assert applied == [name for name, _ in MIGRATIONS]
    assert applied_migrations(db) == applied
    assert {r[0] for r in db.execute("SELECT applied_at FROM _migrations")} == {123.0}
    assert migrate(db, now=124.0) == []  # idempotent
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_upgrade_keeps_existing_rows_and_takes_a_backup(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    old = connect(path)
    migrate(old, now=1.0, migrations=MIGRATIONS[:2])  # an older release's schema
    with old.atomic():
        old.execute(
            "INSERT INTO devices (did, name, kind, status, created_at, updated_at) "
            "VALUES ('did:key:z6Mkx', 'pump', 'actuator', 'active', 1, 1)"
        )
    old.close()

    new = connect(path)
    applied = migrate(new, now=2.0, backup_path=path)
    assert applied == [name for name, _ in MIGRATIONS[2:]]
    assert new.execute("SELECT name FROM devices").fetchall() == [("pump",)]
    new.close()
    backup = tmp_path / f"g.db.pre-{MIGRATIONS[2][0]}"
    with sqlite3.connect(backup) as copy:
        assert copy.execute("SELECT name FROM devices").fetchall() == [("pump",)]
    copy.close()


def test_failing_migration_changes_nothing(tmp_path: Path) -> None:
    def broken(db: Database) -> None:
        db.execute("CREATE TABLE half (x)")
        raise RuntimeError("disk on fire")

    db = connect(tmp_path / "g.db")
    migrate(db, now=1.0)
    with pytest.raises(RuntimeError):
        migrate(db, now=2.0, migrations=[*MIGRATIONS, ("0099_broken", broken)])
    assert "half" not in db.table_names()
    assert applied_migrations(db) == [name for name, _ in MIGRATIONS]
    db.close()


def test_database_from_a_newer_didgw_is_refused(tmp_path: Path) -> None:
    db = connect(tmp_path / "g.db")
    migrate(db, now=1.0)
    with db.atomic():
        db.execute("INSERT INTO _migrations (name, applied_at) VALUES ('0999_future', 1)")
    with pytest.raises(StateError, match=r"0999_future.*newer didgw"):
        pending_migrations(db)
    db.close()


def test_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match="cannot open database"):
        connect(path)


def test_audit_table_is_append_only(tmp_path: Path) -> None:
    db = connect(tmp_path / "g.db")
    migrate(db, now=1.0)
    with db.atomic():
        db.execute(
            "INSERT INTO devices (did, name, kind, status, created_at, updated_at) "
            "VALUES ('did:key:z6Mkx', 'pump', 'actuator', 'active', 1, 1)"
        )
        db.execute(
            "INSERT INTO registry_audit (ts, actor, action, device, reason) "
            "VALUES (1, 'me', 'register', 'did:key:z6Mkx', 'new')"
        )
    for sql in ("UPDATE registry_audit SET reason = 'forged'", "DELETE FROM registry_audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"), db.atomic():
            db.execute(sql)
    assert db.execute("SELECT reason FROM registry_audit").fetchall() == [("new",)]
    db.close()


def modes(directory: Path) -> dict[str, str]:
    return {p.name: f"{stat.S_IMODE(p.stat().st_mode):04o}" for p in directory.iterdir()}


def test_the_database_its_journal_and_its_backups_are_0600_under_umask_022(
    tmp_path: Path,
) -> None:
    before = os.umask(0o022)
    try:
        path = tmp_path / "g.db"
        old = connect(path)
        migrate(old, now=1.0, migrations=MIGRATIONS[:2])
        with old.atomic():
            old.execute(
                "INSERT INTO devices (did, name, kind, status, created_at, updated_at) "
                "VALUES ('did:key:z6Mkx', 'pump', 'actuator', 'active', 1, 1)"
            )
        new = connect(path)  # the write-ahead log and shared memory exist while it is open
        migrate(new, now=2.0, backup_path=path)
        found = modes(tmp_path)
        new.close()
        old.close()
    finally:
        os.umask(before)
    assert {"g.db", "g.db-wal", "g.db-shm", f"g.db.pre-{MIGRATIONS[2][0]}"} <= set(found)
    assert set(found.values()) == {"0600"}, found


def test_database_files_left_readable_by_others_are_narrowed_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "g.db"
    connect(path).close()
    (tmp_path / "g.db.pre-0002_x").write_bytes(b"")
    (tmp_path / "unrelated").write_bytes(b"")
    for p in tmp_path.iterdir():
        p.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="gateway.db"):
        connect(path).close()
        connect(path).close()
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path}: g.db, g.db.pre-0002_x were readable by group or others; now 0600 "
        "(the record holds personal data)"
    ]
    assert modes(tmp_path) == {"g.db": "0600", "g.db.pre-0002_x": "0600", "unrelated": "0644"}

"""Opening the gateway database and bringing its schema up to date without losing data.

SQLite settings: WAL journal (readers never block the writer, and a crash leaves
the last committed transaction intact), ``synchronous=FULL`` (a commit is on
disk when it returns: the registry is small and rarely written, so durability
costs nothing here), foreign keys on, and a busy timeout so a CLI command and
the running service can share the file.

Before pending migrations touch a database that already holds data, a copy is
taken with SQLite's online backup (``didgw.db.pre-<migration>``), so an upgrade
can always be rolled back by hand. A database written by a newer didgw (it has
migrations this one does not know) is refused rather than guessed at.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from sqlite_utils import Database

from gateway.errors import StateError
from gateway.migrations import MIGRATIONS, Migration

DB_NAME = "didgw.db"


def connect(path: Path | str) -> Database:
    """Open (creating if needed) a database file with the gateway's settings."""
    try:
        conn = sqlite3.connect(str(path), timeout=10.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.DatabaseError as exc:
        raise StateError(f"cannot open database {path}: {exc}") from None
    # execute_plugins=False: no third-party sqlite-utils plugin runs in the gateway.
    return Database(conn, execute_plugins=False)


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any error.

    IMMEDIATE takes the write lock up front, so a transaction that reads and then
    writes (the registry, the record) cannot be overtaken by another process in
    between; it waits for the lock (busy timeout) instead of failing half-way.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def open_read_only(path: Path) -> sqlite3.Connection:
    """Open a database file for reading only (verification must never change what it checks)."""
    if not path.is_file():
        raise StateError(f"no database at {path}")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StateError(f"cannot read database {path}: {exc}") from None
    return conn


def applied_migrations(db: Database) -> list[str]:
    if "_migrations" not in db.table_names():
        return []
    return [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY id")]


def pending_migrations(db: Database, migrations: list[Migration] = MIGRATIONS) -> list[Migration]:
    """The migrations still to apply; refuse a database from a newer or foreign schema."""
    applied = applied_migrations(db)
    known = [name for name, _ in migrations]
    if applied != known[: len(applied)]:
        unknown = [name for name in applied if name not in known]
        raise StateError(
            "database schema does not match this didgw: "
            + (
                f"it has migrations this version does not know ({', '.join(unknown)}); "
                "was it written by a newer didgw?"
                if unknown
                else "migrations applied out of order"
            )
        )
    return migrations[len(applied) :]


def migrate(
    db: Database,
    *,
    now: float,
    backup_path: Path | None = None,
    migrations: list[Migration] = MIGRATIONS,
) -> list[str]:
    """Apply pending migrations, each in its own transaction; return the names applied."""
    pending = pending_migrations(db, migrations)
    if not pending:
        return []
    has_data = any(
        db.execute(f'SELECT 1 FROM "{t}" LIMIT 1').fetchone()  # noqa: S608 - names from sqlite_master
        for t in db.table_names()
        if not t.startswith(("_", "sqlite_"))
    )
    if has_data and backup_path is not None:
        target = backup_path.with_name(f"{backup_path.name}.pre-{pending[0][0]}")
        with sqlite3.connect(str(target)) as copy:
            db.conn.backup(copy)
        copy.close()
    db.execute(
        "CREATE TABLE IF NOT EXISTS _migrations "
        "(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, applied_at REAL NOT NULL)"
    )
    for name, apply in pending:
        with db.atomic():
            apply(db)
            db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", [name, now])
    return [name for name, _ in pending]

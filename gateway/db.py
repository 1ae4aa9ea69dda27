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

The record holds personal data (readings, disclosed claims), so the database, its
journal files and its backups are readable by their owner alone: the database file
is created 0600 before SQLite opens it, and SQLite gives its write-ahead log and
shared-memory files the database file's mode. Files left wider by earlier versions
are narrowed when the database is opened, and a warning names them (once: after
that they are 0600).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from sqlite_utils import Database

from gateway.errors import StateError
from gateway.files import make_private
from gateway.migrations import MIGRATIONS, Migration

log = logging.getLogger(__name__)

DB_NAME = "didgw.db"


def connect(path: Path | str) -> Database:
    """Open (creating if needed, 0600) a database file with the gateway's settings."""
    if str(path) != ":memory:":
        _private_database_files(Path(path))
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


def _private_database_files(path: Path) -> None:
    """Create the database file 0600 if it is missing; narrow it, its journal files and its
    backups (``<name>-wal``, ``<name>-shm``, ``<name>.pre-…``) to 0600 if they are wider."""
    try:
        # Never open an existing database file here: closing any descriptor of a file drops
        # every POSIX lock this process holds on it, the locks of SQLite's open connections
        # included. O_EXCL opens only a file that did not exist.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        kin = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
        narrowed = make_private(sorted(kin))
    except OSError as exc:
        raise StateError(f"cannot make database {path} private: {exc.strerror}") from None
    if narrowed:
        log.warning(
            "%s: %s were readable by group or others; now 0600 (the record holds personal data)",
            path.parent,
            ", ".join(p.name for p in narrowed),
        )


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
        _private_database_files(target)  # 0600 before SQLite writes it
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

"""``didgw backup``: the gateway's state in one archive, taken while it runs, checked.

A gateway that loses its card loses its identity (the keys: its DID, its ledger account,
its certificate authority, its meters' keys) and its record (the database). Neither is
any use without the other: the record is signed by the keys, and the keys without the
record start a gateway that has forgotten every device. So one archive holds both, and
the configuration file, and nothing is called a backup until its copy of the record
verifies.

* The database is copied with SQLite's online backup API in one step: one read
  transaction, so the copy is the record exactly as it was committed when the backup
  began, whatever ``didgw run`` writes meanwhile (WAL readers never block the writer). A
  plain file copy of a database in use can be torn.
* The copy is checked by the same function as ``didgw chain verify`` before the archive
  is written.
* The archive (tar, format below) is written to a temporary 0600 file next to FILE,
  fsynced and renamed into place, so FILE is either absent, the old one (``--force``) or
  the whole new backup; a full disk leaves nothing behind.

Archive format (version 1): a plain tar whose first member is ``MANIFEST.json``::

    {"format": "didgw-backup", "version": 1, "didgw": "0.1.0", "created": 1764950400,
     "gateway_did": "did:key:…", "entries": 1234, "root": "<hex>", "head": "<hex>",
     "dirs": {"keys": 448, …},
     "members": {"state/didgw.db": {"sha256": "<hex>", "size": 1, "mode": 384}, …}}

then ``state/didgw.db`` (the database, journal mode DELETE: one self-contained file),
``state/<path>`` for every other regular file of the state directory (keys, the CA's
certificate, the broker's token key) and ``config/gateway.toml`` when a configuration
file is in use. Regular files only; the restore refuses anything else.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import sqlite3
import stat
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, BinaryIO

from gateway.chain.check import check_database
from gateway.db import DB_NAME, open_read_only
from gateway.errors import DidgwError
from gateway.files import private_file
from gateway.ops.state_lock import LOCK_NAME

FORMAT = "didgw-backup"
VERSION = 1
MANIFEST = "MANIFEST.json"
DB_MEMBER = f"state/{DB_NAME}"
CONFIG_MEMBER = "config/gateway.toml"
#: Names in the state directory that a backup leaves out: the live database and its
#: journal, lock and pre-migration copies (the copy made here stands for them), the lock.
_SKIPPED_PREFIXES = (DB_NAME, LOCK_NAME)
#: Directories a restore moved an earlier state into (gateway/ops/restore.py).
ASIDE_PREFIX = "replaced-"


class BackupError(DidgwError):
    """A backup or restore that was refused or failed; nothing was written."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    entries: int
    root: str
    head: str
    gateway_did: str
    members: list[str]


def take_backup(
    state_dir: Path,
    config_file: Path | None,
    target: Path,
    *,
    force: bool,
    now: float,
    version: str,
) -> BackupResult:
    """Write a verified backup of ``state_dir`` (and ``config_file``) to ``target``."""
    db_path = state_dir / DB_NAME
    if not db_path.is_file():
        raise BackupError(f"no gateway in {state_dir} (no {DB_NAME}); nothing to back up")
    _check_target(state_dir, target, force=force)
    with _database_copy(db_path, target) as copy:
        manifest = _verified_manifest(copy, now=now, version=version)
        files = {f"state/{name}": (data, mode) for name, data, mode in _state_files(state_dir)}
        if config_file is not None:
            files[CONFIG_MEMBER] = (_read(config_file), 0o600)
        manifest["dirs"] = _state_dirs(state_dir)
        members: dict[str, Any] = {DB_MEMBER: {**_digest_file(copy), "mode": 0o600}}
        for name, (data, mode) in files.items():
            members[name] = {
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "mode": mode,
            }
        manifest["members"] = members
        with private_file(target, replace=True, error=BackupError) as out:
            _write_tar(out, manifest, copy, {k: v[0] for k, v in files.items()}, now)
    return BackupResult(
        path=target,
        size=target.stat().st_size,
        entries=manifest["entries"],
        root=manifest["root"],
        head=manifest["head"],
        gateway_did=manifest["gateway_did"],
        members=sorted(members),
    )


def _check_target(state_dir: Path, target: Path, *, force: bool) -> None:
    if target.exists() or target.is_symlink():
        if not force:
            raise BackupError(f"{target} already exists; not overwriting it (use --force)")
        if target.is_symlink() or not target.is_file():
            raise BackupError(f"{target} is not a regular file; not replacing it")
    parent = target.parent
    if not parent.is_dir():
        raise BackupError(f"cannot write {target}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BackupError(f"cannot write {target}: the directory {parent} is not writable")
    if parent.resolve().is_relative_to(state_dir.resolve()):
        raise BackupError(
            f"{target} is inside the state directory {state_dir}: each backup would hold the "
            "ones before it; write it elsewhere"
        )


@contextlib.contextmanager
def _database_copy(db_path: Path, target: Path) -> Iterator[Path]:
    """A consistent copy of the database beside ``target`` (0600), removed afterwards."""
    copy = target.with_name(f".{target.name}.{secrets.token_hex(4)}.db")
    try:
        os.close(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except OSError as exc:
        raise BackupError(f"cannot write {target}: {exc.strerror}") from None
    try:
        try:
            with (
                contextlib.closing(open_read_only(db_path)) as source,
                contextlib.closing(sqlite3.connect(str(copy))) as dest,
            ):
                source.backup(dest)  # pages=-1: the whole database, one read transaction
                dest.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        except sqlite3.Error as exc:
            raise BackupError(
                f"cannot copy the database {db_path} next to {target}: {exc}"
            ) from None
        yield copy
    finally:
        for path in (copy, copy.with_name(copy.name + "-journal")):
            path.unlink(missing_ok=True)


def _verified_manifest(copy: Path, *, now: float, version: str) -> dict[str, Any]:
    """The manifest's head, once the copy's record verifies (as ``didgw chain verify``)."""
    with contextlib.closing(open_read_only(copy)) as conn:
        report = check_database(conn)
        if not report.ok:
            raise BackupError(f"the copy of the record does NOT verify: {report.problem}")
        head = conn.execute("SELECT hash FROM chain_entries ORDER BY seq DESC LIMIT 1").fetchone()
        did = conn.execute("SELECT value FROM meta WHERE key = 'gateway_did'").fetchone()
    return {
        "format": FORMAT,
        "version": VERSION,
        "didgw": version,
        "created": int(now),
        "gateway_did": "" if did is None else str(did[0]),
        "entries": report.size,
        "root": report.root.hex(),
        "head": "" if head is None else bytes(head[0]).hex(),
    }


def skipped(relative: PurePath) -> bool:
    """Left out: the live database and its kin, the lock, temporary files, replaced states."""
    top = relative.parts[0]
    return (
        top.startswith(_SKIPPED_PREFIXES)
        or top.startswith(ASIDE_PREFIX)
        or any(part.startswith(".") for part in relative.parts)
    )


def _state_files(state_dir: Path) -> Iterator[tuple[str, bytes, int]]:
    """(relative name, content, permission bits) of each regular file the backup keeps;
    symbolic links are not followed (a link could point at another account's files)."""
    for root, dirs, names in os.walk(state_dir):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            relative = path.relative_to(state_dir)
            if skipped(relative):
                continue
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode):
                continue
            yield relative.as_posix(), _read(path), stat.S_IMODE(info.st_mode)


def _state_dirs(state_dir: Path) -> dict[str, int]:
    """The permission bits of each directory inside the state (the broker's is 0755)."""
    found = {}
    for root, dirs, _ in os.walk(state_dir):
        for name in dirs:
            relative = (Path(root) / name).relative_to(state_dir)
            if not skipped(relative):
                found[relative.as_posix()] = stat.S_IMODE((Path(root) / name).lstat().st_mode)
    return found


def _read(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    with open(fd, "rb") as file:
        return file.read()


def _digest_file(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest(), "size": path.stat().st_size}


def _write_tar(
    out: BinaryIO, manifest: dict[str, Any], copy: Path, files: dict[str, bytes], now: float
) -> None:
    """The manifest first (a restore checks every member against it), then the members."""
    members = manifest["members"]

    def info(name: str, size: int) -> tarfile.TarInfo:
        entry = tarfile.TarInfo(name)
        entry.size, entry.mtime = size, int(now)
        entry.mode = members.get(name, {}).get("mode", 0o600)
        return entry

    body = json.dumps(manifest, indent=1, sort_keys=True).encode()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info(MANIFEST, len(body)), io.BytesIO(body))
        with copy.open("rb") as db:
            tar.addfile(info(DB_MEMBER, members[DB_MEMBER]["size"]), db)
        for name, data in files.items():
            tar.addfile(info(name, len(data)), io.BytesIO(data))


#: How a backup made by ``didgw backup --dir`` is named: the time sorts them.
DATED_PREFIX = "didgw-"
DATED_SUFFIX = ".tar"


def dated_name(now: float) -> str:
    """``didgw-20261205T031500Z.tar``: names that sort as the backups were taken."""
    return f"{DATED_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}{DATED_SUFFIX}"


def prune(directory: Path, keep: int) -> list[Path]:
    """Remove all but the ``keep`` newest dated backups in ``directory``; return the removed.

    Only names ``dated_name`` makes are touched: other files there are not the timer's."""
    if keep < 1:
        raise BackupError("--keep must be at least 1 (the backup just written)")
    pattern = re.compile(rf"{re.escape(DATED_PREFIX)}\d{{8}}T\d{{6}}Z{re.escape(DATED_SUFFIX)}")
    dated = sorted(
        path
        for path in directory.iterdir()
        if pattern.fullmatch(path.name) and path.is_file() and not path.is_symlink()
    )
    removed = dated[: max(0, len(dated) - keep)]
    for path in removed:
        path.unlink()
    return removed

"""``didgw restore``: a backup made by ``didgw backup`` back into a state directory.

Nothing is trusted before it is checked, and nothing is replaced before everything is:

1. the state directory is locked (``ops/state_lock.py``: a running gateway holds the same
   lock, so its state is refused) and must be empty, or ``--force`` given;
2. the archive is read once without writing anything: the manifest (format, version),
   then every member against it: a plain relative name (no absolute path, no ``..``), a
   regular file (no link, device or directory), listed, the size and SHA-256 listed;
3. it is read again into a staging directory inside the state directory (the same file
   system, so the final moves are renames), each member checked again as it is written,
   and the record in the staged database verified as ``didgw chain verify`` does, with
   the size and root the manifest promised;
4. only then, with ``--force``, what the state held is moved into ``replaced-<time>/``
   inside it, and the staged files are moved into place: keys 0600, the database 0600,
   the state directory and ``keys/`` 0700, other files and folders never wider than they
   were (and never group- or other-writable).

A failure at any step removes the staging directory and leaves the state as it was.
When root restores into a state directory owned by another account (the service's),
the restored files are given to that account, so the service can read its keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from gateway.chain.check import check_database
from gateway.db import DB_NAME, open_read_only
from gateway.files import write_private
from gateway.ops.backup import (
    ASIDE_PREFIX,
    CONFIG_MEMBER,
    DB_MEMBER,
    FORMAT,
    MANIFEST,
    VERSION,
    BackupError,
    skipped,
)
from gateway.ops.state_lock import LOCK_NAME, holding

MAX_MANIFEST_BYTES = 1 << 20


@dataclass(frozen=True)
class RestoreResult:
    state_dir: Path
    entries: int
    root: str
    gateway_did: str
    created: int
    moved_aside: Path | None
    config_written: Path | None


def restore_backup(
    archive: Path, state_dir: Path, *, force: bool, config_out: Path | None
) -> RestoreResult:
    """Restore ``archive`` into ``state_dir`` (see the module's docstring for the steps)."""
    if config_out is not None and (config_out.exists() or config_out.is_symlink()):
        raise BackupError(f"{config_out} already exists; not overwriting it")
    manifest = _check_archive(archive)
    if config_out is not None and CONFIG_MEMBER not in manifest["members"]:
        raise BackupError(f"{archive} holds no configuration file to write to {config_out}")
    created = not state_dir.exists()
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create {state_dir}: {exc.strerror}") from None
    try:
        with holding(state_dir, "didgw restore"):
            present = _present(state_dir)
            if present and not force:
                what = "a gateway (its database)" if DB_NAME in present else "files"
                raise BackupError(
                    f"{state_dir} already holds {what}: {', '.join(sorted(present))}; not "
                    "replacing it (--force moves it aside first)"
                )
            with _staging(state_dir) as staging:
                _extract(archive, manifest, staging)
                _check_staged_record(staging / "state" / DB_NAME, manifest)
                _set_modes(staging, manifest)
                aside = _move_aside(state_dir, present) if present else None
                _give_to_owner(state_dir, [staging / "state", state_dir / LOCK_NAME, aside])
                for name in sorted(os.listdir(staging / "state")):
                    os.rename(staging / "state" / name, state_dir / name)
                os.chmod(state_dir, 0o700)
                if config_out is not None:
                    write_private(config_out, (staging / CONFIG_MEMBER).read_bytes())
    except OSError as exc:
        if created:
            shutil.rmtree(state_dir, ignore_errors=True)
        raise BackupError(f"cannot restore into {state_dir}: {exc}") from None
    except BaseException:
        if created:
            shutil.rmtree(state_dir, ignore_errors=True)
        raise
    return RestoreResult(
        state_dir=state_dir,
        entries=manifest["entries"],
        root=manifest["root"],
        gateway_did=manifest["gateway_did"],
        created=manifest["created"],
        moved_aside=aside,
        config_written=config_out,
    )


def _present(state_dir: Path) -> list[str]:
    """What the state directory holds already (the lock and hidden files aside)."""
    return [
        name for name in os.listdir(state_dir) if name != LOCK_NAME and not name.startswith(".")
    ]


# -- reading the archive -------------------------------------------------------


def _check_archive(archive: Path) -> dict[str, Any]:
    """The manifest, once every member matches it; nothing is written."""
    with _members(archive) as (manifest, members):
        for name, stream in members:
            _hash_matches(name, stream, manifest, None)
    return manifest


def _extract(archive: Path, manifest: dict[str, Any], staging: Path) -> None:
    """Every member into ``staging``, checked again as it is written."""
    with _members(archive) as (again, members):
        if again != manifest:
            raise BackupError(f"{archive} changed while it was being restored")
        for name, stream in members:
            _hash_matches(name, stream, manifest, staging / name)


@contextlib.contextmanager
def _members(
    archive: Path,
) -> Iterator[tuple[dict[str, Any], Iterator[tuple[str, IO[bytes]]]]]:
    """The manifest, and the other members as (name, stream) after their names, types and
    sizes are checked against it; at the end, that none it lists is missing."""
    try:
        tar = tarfile.open(archive, mode="r:")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise BackupError(f"{archive} does not exist") from None
    except (tarfile.TarError, OSError) as exc:
        raise BackupError(f"{archive} is not a didgw backup (not a tar archive: {exc})") from None
    try:
        first = tar.next()
        if first is None or first.name != MANIFEST or not first.isreg():
            raise BackupError(f"{archive} is not a didgw backup: it does not begin with {MANIFEST}")
        manifest = _manifest(archive, _read_member(tar, first, MAX_MANIFEST_BYTES))
        yield manifest, _checked(archive, tar, first, manifest)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BackupError(f"{archive} is damaged: {exc}") from None
    finally:
        tar.close()


def _checked(
    archive: Path, tar: tarfile.TarFile, first: tarfile.TarInfo, manifest: dict[str, Any]
) -> Iterator[tuple[str, IO[bytes]]]:
    listed, seen = manifest["members"], set()
    for member in tar:
        if member is first:  # the manifest, read already (iterating starts over)
            continue
        name = member.name
        problem = _name_problem(name) or _type_problem(member)
        if problem is None and name not in listed:
            problem = "it is not in the manifest"
        if problem is None and name in seen:
            problem = "it appears twice"
        if problem is None and member.size != listed[name]["size"]:
            problem = f"its size ({member.size}) is not the manifest's ({listed[name]['size']})"
        if problem is not None:
            raise BackupError(f"{archive}: member {name!r} refused: {problem}")
        seen.add(name)
        yield name, _stream(tar, member)
    missing = sorted(set(listed) - seen)
    if missing:
        raise BackupError(f"{archive} is incomplete: {', '.join(missing)} missing")


def _name_problem(name: str) -> str | None:
    path = PurePosixPath(name)
    if path.is_absolute():
        return "an absolute path"
    if ".." in path.parts or "\\" in name or str(path) != name:
        return "a path that leaves the archive or is not plain"
    if name in (DB_MEMBER, CONFIG_MEMBER):
        return None
    if path.parts[0] != "state" or len(path.parts) < 2:
        return "not part of a backup"
    if skipped(PurePosixPath(*path.parts[1:])):
        return "a name a backup never holds"
    return None


def _type_problem(member: tarfile.TarInfo) -> str | None:
    if member.isreg():
        return None
    kind = "a link" if member.issym() or member.islnk() else "not a regular file"
    if member.isdev():
        kind = "a device"
    return kind


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if member.size > limit:
        raise BackupError(f"{member.name} is larger than {limit} bytes")
    return _stream(tar, member).read()


def _stream(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    stream = tar.extractfile(member)
    if stream is None:  # not a regular file: refused before this is reached
        raise BackupError(f"member {member.name!r} is not a regular file")
    return stream


def _manifest(archive: Path, raw: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BackupError(f"{archive}: {MANIFEST} is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(
            f"{archive} is not a didgw backup (its manifest's format is not {FORMAT})"
        )
    if manifest.get("version") != VERSION:
        raise BackupError(
            f"{archive} is a backup of format version {manifest.get('version')!r}; this didgw "
            f"reads version {VERSION} (was it made by a newer didgw?)"
        )
    members = manifest.get("members")
    ok = isinstance(members, dict) and DB_MEMBER in members
    for entry in members.values() if isinstance(members, dict) else ():
        ok = ok and (
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and len(entry["sha256"]) == 64
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("mode"), int)
        )
    fields = ("entries", "created", "root", "gateway_did", "dirs")
    if not ok or not all(key in manifest for key in fields):
        raise BackupError(f"{archive}: {MANIFEST} is incomplete or malformed")
    return manifest


def _hash_matches(name: str, stream: IO[bytes], manifest: dict[str, Any], out: Path | None) -> None:
    """Read a member (writing it to ``out`` if given, 0600); refuse it unless its SHA-256 is
    the manifest's."""
    digest = hashlib.sha256()
    with contextlib.ExitStack() as stack:
        file = None
        if out is not None:
            out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            file = stack.enter_context(open(fd, "wb"))
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
            if file is not None:
                file.write(block)
        if file is not None:
            file.flush()
            os.fsync(file.fileno())
    if digest.hexdigest() != manifest["members"][name]["sha256"]:
        raise BackupError(
            f"{name} does not match its SHA-256 in the manifest: the archive was changed or "
            "damaged; nothing restored"
        )


# -- putting it in place ---------------------------------------------------------


@contextlib.contextmanager
def _staging(state_dir: Path) -> Iterator[Path]:
    staging = state_dir / f".restore-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_staged_record(db_path: Path, manifest: dict[str, Any]) -> None:
    with contextlib.closing(open_read_only(db_path)) as conn:
        report = check_database(conn)
    if not report.ok:
        raise BackupError(f"the record in the backup does NOT verify: {report.problem}")
    if (report.size, report.root.hex()) != (manifest["entries"], manifest["root"]):
        raise BackupError(
            f"the record in the backup has {report.size} entries (root {report.root.hex()}), "
            f"not the {manifest['entries']} (root {manifest['root']}) its manifest says"
        )


def _set_modes(staging: Path, manifest: dict[str, Any]) -> None:
    """Keys and the database 0600, ``keys/`` 0700; the rest never wider than it was."""
    root = staging / "state"
    for name, entry in manifest["members"].items():
        if not name.startswith("state/"):
            continue
        relative = PurePosixPath(name).relative_to("state")
        private = relative.parts[0] == "keys" or name == DB_MEMBER
        os.chmod(root / relative, 0o600 if private else entry["mode"] & 0o644)
    for name, mode in manifest["dirs"].items():
        path = root / name
        if path.is_dir():
            os.chmod(path, 0o700 if PurePosixPath(name).parts[0] == "keys" else mode & 0o755)
    keys = root / "keys"
    if keys.is_dir():
        os.chmod(keys, 0o700)


def _give_to_owner(state_dir: Path, paths: list[Path | None]) -> None:
    """Root restoring a service's state: what it writes there (the restored files, the lock,
    the replaced state) becomes the state directory's owner's, so the service can use it."""
    owner = state_dir.stat()
    if os.geteuid() != 0 or owner.st_uid == 0:
        return
    for top in paths:
        if top is None or not top.exists():
            continue
        os.chown(top, owner.st_uid, owner.st_gid, follow_symlinks=False)
        for root, dirs, files in os.walk(top):
            for name in [*dirs, *files]:
                os.chown(Path(root) / name, owner.st_uid, owner.st_gid, follow_symlinks=False)


def _move_aside(state_dir: Path, present: list[str]) -> Path:
    """What the state held, into ``replaced-<UTC time>/`` inside it (0700)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = state_dir / f"{ASIDE_PREFIX}{stamp}"
    if aside.exists():
        aside = aside.with_name(f"{aside.name}-{secrets.token_hex(2)}")
    aside.mkdir(mode=0o700)
    for name in present:
        if not name.startswith(ASIDE_PREFIX):
            os.rename(state_dir / name, aside / name)
    return aside

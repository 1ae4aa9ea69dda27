"""Files that hold secrets or personal data: kept from the machine's other accounts.

The rules, the same for every such file, all failing closed:

* a secret the gateway reads (a key, a passphrase or password file, any key or
  certificate key added later) is refused when its group or others may access it,
  as ssh refuses such keys; the message names the file, its mode and the fix. The
  mode checked is the mode of the file read (``fstat`` of the open file), so a
  symbolic link to a secret (a Kubernetes secret, ``/etc/credstore``) is judged by
  its target and cannot be swapped between the check and the read;
* a file a command writes (keys, exports of the record, receipts, credentials) is
  created 0600, whatever the umask, never through a symbolic link, and never over an
  existing file unless the caller says so; then the new content goes to a temporary
  file beside it that is renamed over the name, which replaces a symbolic link
  rather than writing to whatever it points to. A write that fails leaves no file,
  or the old one;
* :func:`make_private` narrows files that already exist (the database and its
  journal, written by earlier versions) to 0600.

Only the standard library and :mod:`gateway.errors`: every layer may use it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from gateway.errors import DidgwError

#: Permission bits a secret must not have: any access by group or others.
SHARED = 0o077
#: Largest secret file read (a passphrase, a password); a larger one is not one of those.
MAX_SECRET_BYTES = 64 * 1024
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def shared_reason(path: Path | str, mode: int) -> str | None:
    """Why a file of this mode may not hold a secret, or None when only its owner has access."""
    bits = stat.S_IMODE(mode)
    if not bits & SHARED:
        return None
    return f"{path} is accessible by group or others (mode {bits:04o}); run: chmod 600 {path}"


def secret_file_problem(path: Path | str) -> str | None:
    """Why ``path`` cannot be a secret file (missing, not a file, shared), or None if it can.

    For checking a configuration before anything runs; :func:`read_secret` checks again
    on the file it opens.
    """
    try:
        info = os.stat(path)  # follows links: the target's mode is what protects the secret
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot access {path}: {exc.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file"
    return shared_reason(path, info.st_mode)


def check_secret_file(
    path: Path | str, what: str = "secret file", error: type[DidgwError] = DidgwError
) -> None:
    """Refuse ``path`` as a secret when it is missing or its group or others may access it."""
    problem = secret_file_problem(path)
    if problem == "file not found":
        raise error(f"{what} {path} does not exist")
    if problem is not None:
        raise error(f"{what} {problem}")


def read_secret(
    path: Path | str,
    what: str = "secret file",
    error: type[DidgwError] = DidgwError,
    max_bytes: int = MAX_SECRET_BYTES,
) -> bytes:
    """The bytes of a secret file, refused when its group or others may access it."""
    try:
        fd = os.open(path, os.O_RDONLY | _CLOEXEC)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is not a regular file")
        reason = shared_reason(path, info.st_mode)
        if reason is not None:
            raise error(f"{what} {reason}")
        with open(fd, "rb", closefd=False) as file:
            data = file.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise error(f"{what} {path} is larger than {max_bytes} bytes")
    return data


@contextlib.contextmanager
def private_file(
    path: Path | str,
    *,
    replace: bool = False,
    error: type[DidgwError] = DidgwError,
    exists: str = "",
) -> Iterator[BinaryIO]:
    """A new 0600 file at ``path`` to write in a ``with`` block; committed (fsynced) at its end.

    Without ``replace`` an existing ``path`` (a symbolic link too, even a dangling one) is
    refused with ``error``: ``exists`` is then the message, by default "<path> already
    exists; not overwriting it". With ``replace`` the content is written beside it and
    renamed over it. If the block raises, nothing is left at ``path`` (or the old file is).
    """
    target = Path(path)
    temporary = (
        target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp") if replace else target
    )
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    try:
        fd = os.open(temporary, flags, 0o600)
    except FileExistsError:
        raise error(exists or f"{target} already exists; not overwriting it") from None
    except OSError as exc:
        raise error(f"cannot create {target}: {exc.strerror}") from None
    try:
        with open(fd, "wb") as file:
            os.fchmod(fd, 0o600)  # the umask can only narrow the mode; say it anyway
            yield file
            file.flush()
            os.fsync(fd)
        if replace:
            os.replace(temporary, target)  # renames over a link; never writes through it
        _fsync_dir(target.parent)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise error(f"cannot write {target}: {exc.strerror}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_private(
    path: Path | str,
    data: bytes,
    *,
    replace: bool = False,
    error: type[DidgwError] = DidgwError,
    exists: str = "",
) -> None:
    """Write ``data`` to a new 0600 file (see :func:`private_file`)."""
    with private_file(path, replace=replace, error=error, exists=exists) as file:
        file.write(data)


def make_private(paths: Iterable[Path]) -> list[Path]:
    """Narrow each existing file to its owner alone (keeping the owner's bits); return those
    that were not. A file that disappears meanwhile is skipped; one that cannot be changed
    raises ``PermissionError`` (the caller says what to do)."""
    changed = []
    for path in paths:
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode) or not stat.S_IMODE(info.st_mode) & SHARED:
            continue
        os.chmod(path, stat.S_IMODE(info.st_mode) & ~SHARED & 0o777)
        changed.append(path)
    return changed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

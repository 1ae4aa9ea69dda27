"""The lock that says a state directory is in use by ``didgw run`` (or a restore).

``didgw run`` holds an exclusive ``flock`` on ``<state>/didgw.lock`` for as long as it
runs, and ``didgw restore`` takes the same lock before it touches anything: a restore
cannot replace the keys and the record under a running gateway, and a gateway cannot
start on a state that is being restored. The kernel drops the lock when the process
ends, however it ends, so a crash never leaves a stale lock behind. The file holds the
holder's pid, for the message only. Worker processes do not inherit the descriptor
(Python opens it non-inheritable), so the lock is the main process's alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from gateway.errors import StateError

LOCK_NAME = "didgw.lock"


@contextlib.contextmanager
def holding(state_dir: Path, who: str) -> Iterator[None]:
    """Hold the state directory's lock for the ``with`` block; refuse if another holds it.

    A state directory that does not exist has nothing to protect: the block runs without
    a lock (whoever runs in it refuses the missing state in its own words).
    """
    if not state_dir.is_dir():
        yield
        return
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise StateError(f"cannot open the lock {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise StateError(
                f"{state_dir} is in use by another didgw (pid {holder}: a running gateway or a "
                f"restore); stop it first (systemctl stop didgw), then {who} again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)

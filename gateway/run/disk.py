"""The disk guard: refuse new readings before the database fills the card.

An SD card that fills up takes SQLite with it at the worst moment (a failed
WAL write mid-transaction). So the gateway stops *taking* readings first, with
a clear reason (``storage_full``), while there is still room to finish what it
has: devices keep refused readings in their own queues and send them again.
Two limits: a quota on the database's own size (database plus write-ahead
log), and a floor of free space on its file system. Both are looked at most
once a second, so the check costs nothing per reading.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

MB = 1024 * 1024


class DiskGuard:
    """``guard.full()``: whether new readings must be refused now, and ``guard.why``."""

    def __init__(
        self,
        db_path: Path,
        *,
        quota_mb: int,
        min_free_mb: int,
        recheck: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._paths = [db_path, db_path.with_name(db_path.name + "-wal")]
        self._directory = db_path.parent
        self._quota = quota_mb * MB
        self._min_free = min_free_mb * MB
        self._recheck = recheck
        self._clock = clock
        self._next = 0.0
        self._full = False
        self.why = ""
        self.used_bytes = 0
        self.free_bytes = 0

    def full(self) -> bool:
        now = self._clock()
        if now >= self._next:
            self._next = now + self._recheck
            self._measure()
        return self._full

    def _measure(self) -> None:
        used = 0
        for path in self._paths:
            with contextlib.suppress(FileNotFoundError):
                used += path.stat().st_size
        stats = os.statvfs(self._directory)
        free = stats.f_bavail * stats.f_frsize
        self.used_bytes, self.free_bytes = used, free
        if self._quota and used >= self._quota:
            self._full = True
            self.why = f"the database is {used // MB} MB, at its quota of {self._quota // MB} MB"
        elif free < self._min_free:
            self._full = True
            self.why = (
                f"{free // MB} MB free on the state directory's file system, "
                f"below the {self._min_free // MB} MB kept free"
            )
        else:
            self._full, self.why = False, ""

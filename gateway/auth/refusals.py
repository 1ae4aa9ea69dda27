"""The last refusal of each device, in memory: why its newest reading or sign-in was refused.

Refusals are counted, never written to the database: a stranger's garbage must not cause
a write. This book keeps, for the console, the last refusal per device, and only refusals a
device earned itself: those given after its signature was verified (a suspended or revoked
device, a replay, a reading out of its clock window, a full disk), for a DID the registry
knows. It is bounded (:data:`CAPACITY` devices; the one refused longest ago goes first) and
lives in the process that refuses; reading workers hand theirs to the main process with
their counts (``run/workers.py``). It is lost on restart, which the console says.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

#: Reasons a device earns only after its signature checked out (``auth/strict.py``):
#: ``unknown_device`` is left out, as anyone can make a did:key and sign with it.
EARNED = frozenset({"not_active", "replay", "clock_skew", "storage_full", "unavailable"})
CAPACITY = 20_000  # devices; 10,000 is the table's target
_REASON_MAX = 32


@dataclass(frozen=True)
class Refusal:
    """One refusal: why, and when (ms since the Unix epoch)."""

    reason: str
    ts_ms: int


class RefusalBook:
    """The last earned refusal per device, bounded; safe to use from several threads."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._last: OrderedDict[str, Refusal] = OrderedDict()
        self._fresh: dict[str, Refusal] = {}  # noted since the last :meth:`drain`
        self._lock = threading.Lock()

    def note(self, did: str, reason: str, now_ms: int) -> bool:
        """Remember ``did``'s refusal if the device earned it (:data:`EARNED`); True if kept."""
        if reason not in EARNED or len(did) > 512:
            return False
        refusal = Refusal(reason[:_REASON_MAX], now_ms)
        with self._lock:
            self._last.pop(did, None)
            self._last[did] = refusal
            if len(self._last) > self._capacity:
                self._last.popitem(last=False)
            self._fresh[did] = refusal
            if len(self._fresh) > self._capacity:
                self._fresh.pop(next(iter(self._fresh)))
        return True

    def last(self, did: str) -> Refusal | None:
        with self._lock:
            return self._last.get(did)

    def drain(self) -> list[tuple[str, str, int]]:
        """What was noted since the last drain, as (did, reason, ts_ms), to send elsewhere."""
        with self._lock:
            fresh, self._fresh = self._fresh, {}
        return [(did, r.reason, r.ts_ms) for did, r in fresh.items()]

    def take(self, noted: object) -> None:
        """Take what another process :meth:`drain`-ed (checked: it came over a pipe)."""
        if not isinstance(noted, list):
            return
        for item in noted[: self._capacity]:
            if (
                isinstance(item, tuple)
                and len(item) == 3
                and isinstance(item[0], str)
                and isinstance(item[1], str)
                and isinstance(item[2], int)
            ):
                self.note(item[0], item[1], item[2])

    def __len__(self) -> int:
        with self._lock:
            return len(self._last)

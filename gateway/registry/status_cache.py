"""Device status for the reading hot path: cached, and dropped as soon as the registry changes.

Every reading needs its device's status (only active devices are recorded).
One SQLite query per reading is a measurable share of a reading's cost, and
statuses change rarely: so statuses are kept in memory, and the registry's
audit trail (every change writes a record to it, in any process, such as
``didgw device revoke``) is looked at every ``recheck`` seconds; any change
drops the whole cache. A suspension or revocation therefore stops readings
within ``recheck`` seconds, well inside the second the broker account takes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.registry.model import Status
from gateway.registry.store import Registry

MAX_ENTRIES = 100_000  # then it starts over: memory stays bounded whatever DIDs arrive


class StatusCache:
    """``cache(did)``: the device's status, or None when it is not registered."""

    def __init__(
        self,
        registry: Registry,
        *,
        recheck: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._recheck = recheck
        self._clock = clock
        self._statuses: dict[str, Status | None] = {}
        self._seen = registry.last_change()
        self._next = clock() + recheck

    def __call__(self, did: str) -> Status | None:
        now = self._clock()
        if now >= self._next:
            self._next = now + self._recheck
            change = self._registry.last_change()
            if change != self._seen:
                self._seen = change
                self._statuses.clear()
        try:
            return self._statuses[did]
        except KeyError:
            pass
        device = self._registry.find(did)
        status = None if device is None else device.status
        if len(self._statuses) >= MAX_ENTRIES:
            self._statuses.clear()
        self._statuses[did] = status
        return status

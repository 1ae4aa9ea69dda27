"""How the gateway's processes log: one line per event, journald-friendly.

Shared by ``didgw run`` and its reading workers (spawned processes do not
inherit the parent's logging set-up). :class:`LogBudget` is how a kind of event that
anonymous clients can cause (authentication refusals) is kept from flooding the log.
"""

from __future__ import annotations

import logging
import os
from collections import Counter


def configure() -> None:
    """INFO and above to stderr; no timestamps of our own under journald (it adds them)."""
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(level=logging.INFO, format=stamp + "%(levelname)s %(name)s: %(message)s")


class LogBudget:
    """At most ``burst`` log lines per ``period_ms`` for one kind of event, the rest counted
    by reason and told in one line per period: a flood of bad requests from anonymous
    clients must not become a flood of log lines (nor hide which reasons it was).

    The caller asks :meth:`take` before logging an event and logs only on True; it calls
    :meth:`flush` now and then (a watch loop), so that the count of a flood that has
    stopped is still told when its period ends."""

    def __init__(
        self,
        what: str,
        *,
        burst: int = 20,
        period_ms: int = 10_000,
        logger: logging.Logger | None = None,
    ) -> None:
        self._what, self._burst, self._period = what, burst, period_ms
        self._log = logger or logging.getLogger(__name__)
        self._window_start, self._used = 0, 0
        self._suppressed: Counter[str] = Counter()

    @property
    def suppressed(self) -> int:
        """Events not logged in the current period."""
        return sum(self._suppressed.values())

    def take(self, now_ms: int, reason: str) -> bool:
        """Whether to log this event (of ``reason``); if not, it is counted."""
        self.flush(now_ms)
        if self._used < self._burst:
            self._used += 1
            return True
        self._suppressed[reason] += 1
        return False

    def flush(self, now_ms: int) -> None:
        """If the period is over: log the count of what was not logged, and start anew."""
        if now_ms - self._window_start < self._period:
            return
        if self._suppressed:
            counts = ", ".join(f"{reason} {n}" for reason, n in self._suppressed.most_common())
            self._log.info(
                "%d more %s not logged in %.0f s: %s",
                self.suppressed,
                self._what,
                (now_ms - self._window_start) / 1000,
                counts,
            )
        self._window_start, self._used = now_ms, 0
        self._suppressed.clear()

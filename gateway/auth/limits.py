"""Bounds on what strangers can make the gateway spend: a token bucket per peer address.

Used by every edge that answers parties not yet authenticated (CoAP datagrams, HTTP
requests without a session or token). Sans-IO: the time comes in as an argument.
"""

from __future__ import annotations

from collections import OrderedDict


class PeerLimiter:
    """A token bucket per peer address, ``rate`` per second up to ``burst``; the least
    recently seen peers are forgotten past ``max_peers`` (bounded memory under a flood)."""

    def __init__(self, rate: float, burst: int, *, max_peers: int = 65_536) -> None:
        self._rate, self._burst, self._max = rate, float(burst), max_peers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, peer: str, now: float) -> bool:
        tokens, then = self._buckets.pop(peer, (self._burst, now))
        tokens = min(self._burst, tokens + (now - then) * self._rate)
        allowed = tokens >= 1.0
        self._buckets[peer] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after(self, peer: str) -> float:
        """Seconds until ``peer`` may make its next request (0 if it may now)."""
        tokens, _ = self._buckets.get(peer, (self._burst, 0.0))
        return max(0.0, (1.0 - tokens) / self._rate)

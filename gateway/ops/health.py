"""The gateway's health, in one place: what the metrics export and ``didgw status`` prints.

Two kinds of figures:

* **live** ones that only the running process knows (readings accepted and
  refused by reason, authentications by result, connection states), given by
  the parts that own them as callables (:class:`Health` ``sources``);
* **stored** ones read from the database (:func:`stored_health`: chain size,
  anchoring, registered devices), which ``didgw status`` can read even when the
  gateway is not running.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Counts = Callable[[], dict[str, int]]


@dataclass
class Health:
    """Where the live figures come from; each running part adds its own."""

    #: (transport, counts of reading outcomes: "accepted", "duplicate", refusal reasons)
    readings: list[tuple[str, Counts]] = field(default_factory=list)
    #: (transport, counts of authentication outcomes: "challenge", "grant", refusal reasons)
    authentications: list[tuple[str, Counts]] = field(default_factory=list)
    #: peer name ("broker", "ledger", "meter") -> whether the connection is up now
    connections: dict[str, Callable[[], bool]] = field(default_factory=dict)
    #: other gauges by name (e.g. "market_intervals_cleared", "storage_full")
    gauges: dict[str, Callable[[], float]] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredHealth:
    """What the database says, whether or not the gateway runs."""

    chain_entries: int
    devices: dict[str, int]  # status -> count
    anchored_entries: int | None  # tree size of the newest confirmed anchor
    anchor_age_s: float | None  # since that anchor was confirmed
    anchor_queue: int  # checkpoints waiting to be anchored (queued or in flight)
    ledger: str  # "ok", an error, or "" when anchoring never ran
    market_intervals_cleared: int = 0


def stored_health(conn: sqlite3.Connection, *, now: float | None = None) -> StoredHealth:
    """Read the stored figures (cheap: a handful of indexed queries)."""
    now = time.time() if now is None else now
    row = conn.execute("SELECT max(seq) FROM chain_entries").fetchone()
    chain = 0 if row is None or row[0] is None else int(row[0]) + 1
    devices = {
        str(status): int(n)
        for status, n in conn.execute("SELECT status, count(*) FROM devices GROUP BY status")
    }
    anchored, age, queue, ledger = None, None, 0, ""
    if _has_table(conn, "anchors"):
        last = conn.execute(
            "SELECT size, confirmed_ms FROM anchors WHERE state = 'confirmed' "
            "ORDER BY size DESC LIMIT 1"
        ).fetchone()
        if last is not None:
            anchored = int(last[0])
            age = max(0.0, now - int(last[1]) / 1000) if last[1] is not None else None
        queue = int(
            conn.execute(
                "SELECT count(*) FROM anchors WHERE state IN ('queued', 'sent')"
            ).fetchone()[0]
        )
        if _has_table(conn, "anchor_meta"):
            meta = conn.execute("SELECT value FROM anchor_meta WHERE key = 'health'").fetchone()
            ledger = "" if meta is None else str(meta[0])
    cleared = 0
    if _has_table(conn, "market_intervals"):
        cleared = int(
            conn.execute(
                "SELECT count(*) FROM market_intervals WHERE cleared_ms IS NOT NULL"
            ).fetchone()[0]
        )
    return StoredHealth(chain, devices, anchored, age, queue, ledger, cleared)


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [name])
    return row.fetchone() is not None


def live_counts(health: Health) -> dict[str, dict[str, int]]:
    """The live figures summed over transports, as ``didgw status`` counts them: readings
    accepted (duplicates included: the reading is on the record) and refused (by reason),
    authentications granted and refused (by reason; challenges are neither)."""
    readings: dict[str, int] = {}
    for _, counts in health.readings:
        for outcome, n in counts().items():
            readings[outcome] = readings.get(outcome, 0) + n
    auths: dict[str, int] = {}
    for _, counts in health.authentications:
        for outcome, n in counts().items():
            auths[outcome] = auths.get(outcome, 0) + n
    refused = {k: n for k, n in readings.items() if k not in ("accepted", "duplicate")}
    auth_refused = {k: n for k, n in auths.items() if k not in ("grant", "challenge")}
    return {
        "readings": {
            "accepted": readings.get("accepted", 0) + readings.get("duplicate", 0),
            "refused": sum(refused.values()),
        },
        "refusals": dict(sorted(refused.items())),
        "authentications": {
            "granted": auths.get("grant", 0),
            "refused": sum(auth_refused.values()),
        },
        "authentication_refusals": dict(sorted(auth_refused.items())),
    }

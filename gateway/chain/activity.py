"""What the record says about a device's readings: when it was last seen, how many today,
its recent ones, without an index the path of every reading would pay for.

A reading's entry carries a key unique per (device, "reading"): the device's sequence
number (``chain_keys``, primary key ``(actor, kind, key)``). The newest reading is the one
with the highest key; the readings since a moment are those keys whose entry's seq is at
least the first seq of that moment. Entries are appended in time order, so that first seq
is found by bisecting the record (a few lookups), and a device's keys grow with the record's
seq except for readings that overtook each other, which the ingest pipeline bounds
(``slack``: its reorder window); so the count is one bounded range of the keyed index.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

READING = "reading"


@dataclass(frozen=True)
class Activity:
    """A device's readings on the record: the newest one's time, and how many since a moment."""

    last_seen_ms: int | None
    readings_since: int


def first_seq_at(db: Any, ts_ms: int) -> int | None:
    """The seq of the first entry appended at or after ``ts_ms`` (None: none yet)."""
    row = db.execute("SELECT max(seq) FROM chain_entries").fetchone()
    if row is None or row[0] is None:
        return None
    lo, hi = 0, int(row[0]) + 1  # the answer lies in [lo, hi]; hi: no such entry
    while lo < hi:
        mid = (lo + hi) // 2
        ts = db.execute("SELECT ts FROM chain_entries WHERE seq = ?", [mid]).fetchone()[0]
        if ts >= ts_ms:
            hi = mid
        else:
            lo = mid + 1
    return None if lo > int(row[0]) else lo


def activity(
    db: Any, dids: Iterable[str], *, since_ms: int, slack: int, kind: str = READING
) -> dict[str, Activity]:
    """Each device's :class:`Activity`: its newest reading's time and its readings appended
    since ``since_ms`` (``slack``: how far a device's keys may run out of order)."""
    start = first_seq_at(db, since_ms)
    return {did: _one(db, did, kind, start, slack) for did in dids}


def recent(db: Any, did: str, *, limit: int, kind: str = READING) -> list[int]:
    """The seqs of the device's ``limit`` newest readings, newest first."""
    rows = db.execute(
        "SELECT k.seq FROM chain_keys k WHERE k.actor = "
        "(SELECT id FROM chain_actors WHERE did = ?) AND k.kind = ? ORDER BY k.key DESC LIMIT ?",
        [did, kind, limit],
    ).fetchall()
    return [int(r[0]) for r in rows]


def _one(db: Any, did: str, kind: str, start: int | None, slack: int) -> Activity:
    found = db.execute("SELECT id FROM chain_actors WHERE did = ?", [did]).fetchone()
    if found is None:
        return Activity(None, 0)
    actor = int(found[0])
    newest = db.execute(
        "SELECT k.key, k.seq, e.ts FROM chain_keys k JOIN chain_entries e ON e.seq = k.seq "
        "WHERE k.actor = ? AND k.kind = ? ORDER BY k.key DESC LIMIT 1",
        [actor, kind],
    ).fetchone()
    if newest is None:
        return Activity(None, 0)
    last_key, last_seq, last_ts = int(newest[0]), int(newest[1]), int(newest[2])
    if start is None or last_seq < start:
        return Activity(last_ts, 0)
    lowest = db.execute(
        "SELECT min(key) FROM chain_keys WHERE actor = ? AND kind = ?", [actor, kind]
    ).fetchone()[0]
    lo, hi = int(lowest), last_key  # the first key whose entry is at or after ``start``
    while lo < hi:
        mid = (lo + hi) // 2
        seq = db.execute(
            "SELECT seq FROM chain_keys WHERE actor = ? AND kind = ? AND key >= ? "
            "ORDER BY key LIMIT 1",
            [actor, kind, mid],
        ).fetchone()[0]
        if seq >= start:
            hi = mid
        else:
            lo = mid + 1
    count = db.execute(
        "SELECT count(*) FROM chain_keys WHERE actor = ? AND kind = ? AND key >= ? AND seq >= ?",
        [actor, kind, lo - slack, start],
    ).fetchone()[0]
    return Activity(last_ts, int(count))

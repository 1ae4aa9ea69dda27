"""A household's energy from her meters' readings on the record: now, and per hour, day
and month, with what it cost and earned (sans-IO: the time and the time zone come in).

**How energy is put into periods.** A P1 meter sends its cumulative registers (total
import and export, in Wh), so the energy of a period is the growth of the registers over
it: the registers at the last reading before its end minus those at the last reading
before its start (:func:`registers_at`). That is the same as giving each step between two
consecutive readings to the period in which the later reading falls; a gap in the
readings therefore lands in the period where the readings resume. Before a meter's first
reading its registers count as that first reading's (nothing is invented before it), and a
period never shows less than nothing (a register that went back, which a vouched meter's
checks make impossible, would count as zero). A household with several meters gets their
sum.

**Money** follows the market's units (docs/market.md): prices in milli-euro per kWh, so
Wh times m€/kWh is micro-euro. Import costs ``retail_price``; export earns ``feed_in_price``.
These are the figures at the grid's tariff: what the local market changed is in her
settlement statements.

Each lookup is one indexed query per meter and period boundary (``meter_readings(meter,
ts)``), so a year by month costs 13 lookups per meter whatever the number of readings.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from sqlite_utils import Database

from gateway.energy.meter import meters

#: ``by``: the length of one period, and the span of a view of them (one day of hours, one
#: month of days, one year of months).
PERIODS = ("hour", "day", "month")


@dataclass(frozen=True)
class Period:
    """One bar of the history: import and export in Wh, cost and income in micro-euro."""

    start_ms: int
    end_ms: int
    label: str  # "14:00", "2026-12-05", "2026-12"
    import_wh: int
    export_wh: int
    cost_ueur: int
    income_ueur: int

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start_ms,
            "end": self.end_ms,
            "label": self.label,
            "import_wh": self.import_wh,
            "export_wh": self.export_wh,
            "cost_micro_eur": self.cost_ueur,
            "income_micro_eur": self.income_ueur,
        }


@dataclass(frozen=True)
class History:
    by: str
    first: date  # the first day of the span shown
    periods: tuple[Period, ...]

    @property
    def import_wh(self) -> int:
        return sum(p.import_wh for p in self.periods)

    @property
    def export_wh(self) -> int:
        return sum(p.export_wh for p in self.periods)

    @property
    def cost_ueur(self) -> int:
        return sum(p.cost_ueur for p in self.periods)

    @property
    def income_ueur(self) -> int:
        return sum(p.income_ueur for p in self.periods)


@dataclass(frozen=True)
class MeterNow:
    """A meter's latest reading (None before its first)."""

    did: str
    reading_ms: int | None
    import_w: int | None  # None when the reading's payload was erased
    export_w: int | None
    entry: int | None  # the record entry of that reading


def household_meters(db: Database, household: str) -> list[str]:
    return [m.did for m in meters(db, household)]


def readings(
    db: Database, household: str, *, before_ms: int | None, limit: int
) -> list[dict[str, int | str]]:
    """The household's meters' readings one by one, newest first, older than ``before_ms``:
    time, meter, the import and export registers (Wh), export power (W) and the record
    entry (whose receipt proves the reading)."""
    meter_dids = household_meters(db, household)
    if not meter_dids:
        return []
    marks = ",".join("?" * len(meter_dids))
    rows = db.execute(
        "SELECT meter, ts, import_wh, export_wh, power_export_w, entry FROM meter_readings "  # noqa: S608
        f"WHERE meter IN ({marks}) AND ts < ? ORDER BY ts DESC, seq DESC LIMIT ?",
        [*meter_dids, before_ms if before_ms is not None else 2**62, limit],
    ).fetchall()
    keys = ("meter", "ts", "import_wh", "export_wh", "power_export_w", "entry")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def registers_at(db: Database, meter: str, t_ms: int) -> tuple[int, int] | None:
    """(import Wh, export Wh) of ``meter`` at its last reading before ``t_ms``, else at its
    first reading; None when it has none."""
    row = db.execute(
        "SELECT import_wh, export_wh FROM meter_readings WHERE meter = ? AND ts < ? "
        "ORDER BY ts DESC, seq DESC LIMIT 1",
        [meter, t_ms],
    ).fetchone()
    if row is None:
        row = db.execute(
            "SELECT import_wh, export_wh FROM meter_readings WHERE meter = ? "
            "ORDER BY ts, seq LIMIT 1",
            [meter],
        ).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


def energy_between(
    db: Database, meter_dids: Sequence[str], bounds: Sequence[int]
) -> list[tuple[int, int]]:
    """(import Wh, export Wh) of the meters together in each ``[bounds[i], bounds[i+1])``."""
    totals = [(0, 0)] * max(0, len(bounds) - 1)
    for meter in meter_dids:
        marks = [registers_at(db, meter, t) for t in bounds]
        for i, (a, b) in enumerate(itertools.pairwise(marks)):
            if a is None or b is None:
                continue
            imp, exp = totals[i]
            totals[i] = (imp + max(0, b[0] - a[0]), exp + max(0, b[1] - a[1]))
    return totals


def span(by: str, day: date, tz: tzinfo) -> tuple[date, list[tuple[int, str]]]:
    """The periods of the view ``by`` that holds ``day``: (its first day, [(start ms,
    label)] and one more start that ends the last)."""
    if by == "hour":
        start = _ms(day, tz)
        end = _ms(day + timedelta(days=1), tz)
        # Hours are counted on the clock's own scale, so a day of a daylight-saving change
        # has 23 or 25 of them.
        starts = [*range(start, end, 3_600_000), end]
        return day, [(t, datetime.fromtimestamp(t / 1000, tz).strftime("%H:%M")) for t in starts]
    if by == "day":
        first = day.replace(day=1)
        days = [first + timedelta(days=i) for i in range(32)]
        days = [d for d in days if d.month == first.month] + [_next_month(first)]
        return first, [(_ms(d, tz), d.isoformat()) for d in days]
    if by == "month":
        first = date(day.year, 1, 1)
        months = [date(day.year, m, 1) for m in range(1, 13)] + [date(day.year + 1, 1, 1)]
        return first, [(_ms(m, tz), m.strftime("%Y-%m")) for m in months]
    raise ValueError(f"by must be one of {', '.join(PERIODS)}, not {by!r}")


def history(
    db: Database,
    household: str,
    by: str,
    day: date,
    tz: tzinfo,
    *,
    retail_price: int,
    feed_in_price: int,
) -> History:
    """The household's import and export per ``by`` over the view holding ``day``."""
    first, starts = span(by, day, tz)
    bounds = [t for t, _ in starts]
    sums = energy_between(db, household_meters(db, household), bounds)
    periods = tuple(
        Period(
            bounds[i],
            bounds[i + 1],
            starts[i][1],
            imp,
            exp,
            imp * retail_price,
            exp * feed_in_price,
        )
        for i, (imp, exp) in enumerate(sums)
    )
    return History(by, first, periods)


def meter_now(db: Database, meter: str) -> MeterNow:
    row = db.execute(
        "SELECT r.ts, r.power_export_w, r.entry, c.payload FROM meter_readings AS r "
        "LEFT JOIN chain_entries AS c ON c.seq = r.entry WHERE r.meter = ? "
        "ORDER BY r.seq DESC LIMIT 1",
        [meter],
    ).fetchone()
    if row is None:
        return MeterNow(meter, None, None, None, None)
    ts, export_w, entry, payload = row
    return MeterNow(meter, int(ts), _power_import(payload), int(export_w), int(entry))


def today_bounds(now_ms: int, tz: tzinfo) -> tuple[int, int]:
    """The start of the local day holding ``now_ms``, and just after ``now_ms``."""
    today = datetime.fromtimestamp(now_ms / 1000, tz).date()
    return _ms(today, tz), now_ms + 1


def latest_seqs(db: Database, meter_dids: Sequence[str]) -> dict[str, int]:
    """Each meter's last reading's seq: what a live view compares to see something new."""
    if not meter_dids:
        return {}
    marks = ",".join("?" * len(meter_dids))
    rows = db.execute(
        f"SELECT meter, max(seq) FROM meter_readings WHERE meter IN ({marks}) "  # noqa: S608
        "GROUP BY meter",
        list(meter_dids),
    ).fetchall()
    return {str(m): int(s) for m, s in rows}


def _power_import(payload: bytes | None) -> int | None:
    """``values.power_import_w`` of a vouched reading's signed payload (the register the
    readings table does not keep); None when erased or not there."""
    if payload is None:
        return None
    try:
        body = bytes(payload).split(b".")[1]
        data = json.loads(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))
        return int(data["values"]["power_import_w"]["value"])
    except (IndexError, KeyError, TypeError, ValueError, binascii.Error):
        return None


def _ms(day: date, tz: tzinfo) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)


def _next_month(first: date) -> date:
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)

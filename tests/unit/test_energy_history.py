"""The household's energy per period (gateway/energy/history.py), on a real database:
register steps land in the period of the later reading, spans follow the local calendar."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from gateway.db import connect, migrate
from gateway.energy import history as energy
from gateway.run.http.energy import _view, _views

AMS = ZoneInfo("Europe/Amsterdam")


def test_a_day_of_a_daylight_saving_change_has_23_or_25_hours() -> None:
    _, spring = energy.span("hour", date(2026, 3, 29), AMS)
    _, autumn = energy.span("hour", date(2026, 10, 25), AMS)
    _, plain = energy.span("hour", date(2026, 11, 5), AMS)
    assert (len(spring) - 1, len(autumn) - 1, len(plain) - 1) == (23, 25, 24)
    assert [label for _, label in spring[:4]] == ["00:00", "01:00", "03:00", "04:00"]
    first, days = energy.span("day", date(2028, 2, 17), AMS)
    assert first == date(2028, 2, 1) and len(days) - 1 == 29
    first, months = energy.span("month", date(2026, 7, 9), AMS)
    assert first == date(2026, 1, 1) and months[-1][1] == "2027-01"


def _reading(db: object, seq: int, at: datetime, imp: int, exp: int) -> None:
    db.execute(  # type: ignore[attr-defined]
        "INSERT INTO meter_readings (meter, seq, ts, import_wh, export_wh, power_export_w, "
        "entry) VALUES (?, ?, ?, ?, ?, 0, ?)",
        ["m", seq, int(at.timestamp() * 1000), imp, exp, seq],
    )


def test_steps_between_readings_belong_to_the_period_of_the_later_one(tmp_path: Path) -> None:
    db = connect(tmp_path / "g.db")
    migrate(db, now=0)
    at = lambda h, m: datetime(2026, 11, 5, h, m, tzinfo=AMS)  # noqa: E731
    _reading(db, 1, at(9, 50), 1000, 500)
    _reading(db, 2, at(10, 10), 1100, 500)  # +100 in 10:00
    _reading(db, 3, at(10, 59), 1150, 520)  # +50, +20 in 10:00
    _reading(db, 4, at(13, 5), 1400, 600)  # a gap: +250, +80 in 13:00
    _, starts = energy.span("hour", date(2026, 11, 5), AMS)
    sums = energy.energy_between(db, ["m"], [t for t, _ in starts])
    by_hour = {starts[i][1]: s for i, s in enumerate(sums) if s != (0, 0)}
    assert by_hour == {"10:00": (150, 20), "13:00": (250, 80)}  # 09:00: its first reading
    assert energy.energy_between(db, ["m", "nothing"], [0, 2**62]) == [(400, 100)]
    db.close()


def test_views_link_to_their_neighbours_and_refuse_nonsense() -> None:
    views = _views("did:key:z6MkH", "day", date(2026, 12, 5))
    assert "date=2026-11-01" in views["before"] and "date=2027-01-01" in views["after"]
    views = _views("did:key:z6MkH", "hour", date(2026, 3, 1))
    assert "date=2026-02-28" in views["before"] and "date=2026-03-02" in views["after"]
    today = date(2026, 12, 5)
    assert _view({}, today) == ("hour", today)
    assert _view({"by": "month", "date": "2026-02-03"}, today) == ("month", date(2026, 2, 3))
    for bad in ({"by": "week"}, {"date": "yesterday"}, {"date": "1999-12-31"}, {"date": "9" * 99}):
        try:
            _view(bad, today)
        except ValueError as exc:
            assert str(exc).split(":")[0] in ("by", "date")
        else:
            raise AssertionError(f"{bad} was taken")

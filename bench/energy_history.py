"""A household's energy history: how long one view costs, whatever the number of readings.

    python bench/energy_history.py [--readings 1000000]

Puts ``--readings`` registers of one meter (one every 30 s from 2026-01-01: a year is
about 1,050,000) into a fresh database and times :func:`gateway.energy.history.
energy_between` for the three views of ``/energy`` (the 24 hours of a day, the days of a
month, the 12 months of a year), best of 20. Each view is one indexed lookup per meter and
period boundary, so the figures should not grow with the readings. The last line is one
JSON object.
"""

from __future__ import annotations

import os
import sys

# bench/http.py has the name of the standard library's http package: this folder comes off
# the import path before anything imports http.client (paho, aiohttp, requests, web3 do).
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

import argparse
import json
import tempfile
import time
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

from gateway.db import connect, migrate
from gateway.energy import history as energy

START_MS = 1_767_225_600_000  # 2026-01-01T00:00Z


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=1_000_000)
    n = parser.parse_args().readings
    with tempfile.TemporaryDirectory() as tmp:
        db = connect(Path(tmp) / "g.db")
        migrate(db, now=0)
        with db.conn:
            db.conn.executemany(
                "INSERT INTO meter_readings (meter, seq, ts, import_wh, export_wh, "
                "power_export_w, entry) VALUES ('m', ?, ?, ?, ?, 0, ?)",
                ((i, START_MS + i * 30_000, i * 3, i, i) for i in range(n)),
            )
        tz = ZoneInfo("Asia/Seoul")
        figures: dict[str, float] = {"readings": n}
        for by in energy.PERIODS:
            _, starts = energy.span(by, date(2026, 6, 1), tz)
            bounds = [t for t, _ in starts]
            best = float("inf")
            for _ in range(20):
                began = time.perf_counter()
                energy.energy_between(db, ["m"], bounds)
                best = min(best, time.perf_counter() - began)
            figures[f"by_{by}_ms"] = round(best * 1000, 3)
            print(f"by {by}: {best * 1000:.3f} ms")
        db.close()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

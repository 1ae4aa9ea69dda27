"""Kill a process that is appending, at random moments, many times: nothing acknowledged is lost.

Each round starts a real appender process, lets it run for a random time,
kills it with SIGKILL (no chance to clean up), then checks that the record
verifies and that every entry the appender had been told was committed is
present with its payload.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.chain.check import check_database
from gateway.db import connect, migrate

pytestmark = pytest.mark.integration

APPENDER = Path(__file__).with_name("crash_appender.py")
ROUNDS = 25


def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    db = connect(path)
    migrate(db, now=0)
    db.close()
    rng = random.Random(20261122)
    acknowledged: dict[int, str] = {}
    for run in range(ROUNDS):
        process = subprocess.Popen(
            [sys.executable, str(APPENDER), str(path), str(run)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert process.stdout is not None
        first = process.stdout.readline()  # started and appending: now pick the moment
        time.sleep(rng.uniform(0.0, 0.4))
        process.send_signal(signal.SIGKILL)
        rest, _ = process.communicate(timeout=30)
        assert process.returncode == -signal.SIGKILL
        output = first + rest
        lines = output.splitlines()
        if lines and not output.endswith("\n"):
            lines.pop()  # killed mid-line: that acknowledgement never completed
        assert lines, f"round {run}: the appender acknowledged nothing before it was killed"
        for line in lines:
            seq, payload = line.split(" ", 1)
            acknowledged[int(seq)] = payload

        conn = sqlite3.connect(path)
        try:
            report = check_database(conn)
            assert report.ok, f"round {run}: {report.problem}"
            stored = dict(conn.execute("SELECT seq, payload FROM chain_entries"))
        finally:
            conn.close()
        missing = [s for s, p in acknowledged.items() if stored.get(s) != p.encode()]
        assert not missing, f"round {run}: acknowledged entries lost or changed: {missing[:5]}"
    assert len(acknowledged) > ROUNDS * 10

"""README.md's first command: ``didgw demo`` runs the whole product and checks it; Ctrl-C
stops every process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DIDGW = str(Path(sys.executable).with_name("didgw"))


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


def test_the_demo_runs_every_part_and_its_receipt_verifies(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [DIDGW, "demo", "--seconds", "20"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "forged reading (another device's DID): bad_signature" in out
    assert "replayed reading (seq 1 again): replay" in out
    assert "the record: ok:" in out
    assert "receipt verifies" in out
    assert list(tmp_path.iterdir()) == []  # its files are removed
    assert _processes_mentioning(str(tmp_path)) == []


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    demo = subprocess.Popen(
        [DIDGW, "demo", "--seconds", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # so that a failure below can stop the demo's processes too
    )
    assert demo.stdout is not None
    output = ""
    try:
        deadline = time.monotonic() + 180
        while "running for" not in output and time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            output += line
        assert "running for" in output, output
        assert _processes_mentioning(str(tmp_path))  # mosquitto, anvil, the gateway, devices
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:  # a failure above: leave nothing of the demo running
            os.killpg(demo.pid, signal.SIGKILL)
            demo.communicate()
    assert demo.returncode == 130, output + rest
    assert "stopping every process" in rest
    assert _processes_mentioning(str(tmp_path)) == []
    assert list(tmp_path.iterdir()) == []

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
    temporary, state = tmp_path / "tmp", tmp_path / "state"
    temporary.mkdir()
    env = {**os.environ, "TMPDIR": str(temporary)}
    result = subprocess.run(
        [DIDGW, "demo", "--seconds", "20", "--state-dir", str(state)],
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
    assert list(temporary.iterdir()) == []  # its files are removed
    assert _processes_mentioning(str(tmp_path)) == []
    # ... but the gateway's state, asked for with --state-dir, is kept and holds the record.
    assert f"the gateway's state kept in {state}" in out
    verify = subprocess.run(
        [DIDGW, "chain", "verify", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verify.returncode == 0 and verify.stdout.startswith("ok:"), verify.stdout + verify.stderr


def test_the_demo_refuses_a_state_dir_in_use_and_a_config(tmp_path: Path) -> None:
    (tmp_path / "didgw.db").write_bytes(b"")
    used = subprocess.run(
        [DIDGW, "demo", "--state-dir", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert used.returncode == 1
    assert f"{tmp_path} is not empty: the demo initialises a gateway from nothing" in used.stderr
    config = subprocess.run(
        [DIDGW, "demo", "--config", str(tmp_path / "gateway.toml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert config.returncode == 1
    assert "didgw demo writes its own configuration: --config is not used" in config.stderr
    assert (tmp_path / "didgw.db").read_bytes() == b""  # untouched


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

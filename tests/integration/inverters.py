"""SunSpec inverters for the tests: ``firmware-sim/sunspec_inverter.py`` as a Modbus TCP
server on a free loopback port or as Modbus RTU on a real pty, and a household enrolled
with its inverter by the real CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from support import Run, wait_until

SIM = Path(__file__).parents[2] / "firmware-sim" / "sunspec_inverter.py"


class Inverters:
    """Simulated inverters, each a process of its own, stopped by :meth:`stop`."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[str]] = []

    def _start(self, *args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, str(SIM), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.processes.append(process)
        return process

    def tcp(self, *args: str) -> str:
        """Start one on a free loopback port; its link, ``tcp://127.0.0.1:PORT``."""
        process = self._start("--tcp", "127.0.0.1:0", *args)
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.match(r"listening on (\S+)", line)
        assert match, f"the simulator said {line!r}"
        return f"tcp://{match[1]}"

    def pty(self, link: Path, *args: str) -> subprocess.Popen[str]:
        """Start one as RTU on a new pty whose slave ``link`` points at."""
        process = self._start("--pty", str(link), *args)
        wait_until(link.exists, f"the simulated inverter to make its pty {link}", 10)
        return process

    def stop(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
            if p.stdout is not None:
                p.stdout.close()


def enroll(didgw: Run, state: Path, house: str, name: str, link: str, *extra: str) -> str:
    """Enrol an inverter of ``house`` on ``link``; its DID."""
    out = didgw(
        "inverter", "enroll", "--household", house, "--name", name, "--link", link,
        *extra, "--state-dir", str(state),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return re.search(r"enrolled inverter (\S+)", out.stdout)[1]

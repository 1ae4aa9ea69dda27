"""P1 meters for the tests: ``firmware-sim/p1meter.py`` on real pty pairs, and a household
enrolled with its meter by the real CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from support import Run, wait_until

from gateway.identity import keystore
from gateway.identity.signing import Signer

SIM = Path(__file__).parents[2] / "firmware-sim" / "p1meter.py"


class Meters:
    """Simulated P1 meters, each writing to the master side of its own pty."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, link: Path, *args: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, str(SIM), "--pty", str(link), *args], stderr=subprocess.DEVNULL
        )
        self.processes.append(process)
        wait_until(link.exists, f"the simulated meter to make its pty {link}", 10)
        return process

    def stop(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
                p.wait(10)


def enroll(didgw: Run, state: Path, tmp_path: Path, name: str, port: Path) -> str:
    household_key = keystore.generate_key()
    keystore.write_private_key(tmp_path / f"{name}.pem", household_key, None)
    household = Signer.for_did_key(household_key)
    out = didgw(
        "device",
        "register",
        household.did,
        "--name",
        name,
        "--kind",
        "household",
        "--state-dir",
        str(state),
    )
    assert out.returncode == 0, out.stderr
    out = didgw(
        "meter",
        "enroll",
        "--household",
        household.did,
        "--name",
        f"{name} meter",
        "--port",
        str(port),
        "--state-dir",
        str(state),
    )
    assert out.returncode == 0, out.stderr
    return re.search(r"enrolled meter (\S+)", out.stdout)[1]


def register_household(didgw: Run, state: Path, tmp_path: Path, name: str) -> str:
    """A household registered by the real CLI; its DID."""
    key = keystore.generate_key()
    keystore.write_private_key(tmp_path / f"{name}.pem", key, None)
    did = Signer.for_did_key(key).did
    out = didgw(
        "device", "register", did, "--name", name, "--kind", "household", "--state-dir", str(state)
    )
    assert out.returncode == 0, out.stderr
    return did


def enroll_variant(
    didgw: Run, state: Path, household: str, name: str, port: Path, *, variant: str
) -> str:
    """A meter of ``variant`` enrolled by the real CLI on ``port``; its DID."""
    out = didgw(
        "meter",
        "enroll",
        "--household",
        household,
        "--name",
        name,
        "--port",
        str(port),
        "--variant",
        variant,
        "--state-dir",
        str(state),
    )
    assert out.returncode == 0, out.stderr
    return re.search(r"enrolled meter (\S+)", out.stdout)[1]

"""Helpers shared by the test suites (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).parent / "vectors"
ROOT = Path(__file__).resolve().parents[1]

#: ``didgw(*args, env=…, cwd=…)`` runs the installed command (see integration/conftest.py).
Run = Callable[..., subprocess.CompletedProcess[str]]


class WebResolver:
    """A resolver for tests: did:key offline, one did:web document, or the network down."""

    def __init__(self, document: dict[str, Any]) -> None:
        from gateway.identity import offline_resolver

        self.document = document
        self.down = False
        self._offline = offline_resolver()

    def resolve(self, did: str, *, now: float) -> Any:
        from gateway.identity.resolver import Resolution, Unreachable

        if did.startswith("did:key:"):
            return self._offline.resolve(did, now=now)
        if self.down:
            raise Unreachable(f"cannot fetch {did}: network is unreachable")
        return Resolution(did, self.document, f"https://{did[8:]}/.well-known/did.json", now)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> bool:
    """Whether ``predicate()`` turns true within ``timeout`` seconds (polled every 50 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def wait_until(
    predicate: Callable[[], Any],
    what: str,
    timeout: float = 10.0,
    details: Callable[[], Any] | None = None,
) -> None:
    """Poll until ``predicate()`` is true; past the deadline, fail saying what was awaited
    (followed by ``details()``, e.g. the gateway's output, if given)."""
    if not wait_for(predicate, timeout):
        message = f"waited {timeout:g} s for {what}"
        if details is not None:
            message += f"\n{details()}"
        raise AssertionError(message)


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_vectors(relative: str) -> Any:
    """A JSON file of standard test vectors under tests/vectors/."""
    return json.loads((VECTORS / relative).read_text())


#: firmware-sim/coap_sensor.py, the simulated CoAP sensor, run as a command.
SENSOR = ROOT / "firmware-sim" / "coap_sensor.py"


def sensor(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    """Run the simulated CoAP sensor with its key and seq in ``state``."""
    return subprocess.run(
        [sys.executable, str(SENSOR), "--state", str(state), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def import_keeping_recursion_limit(name: str) -> Any:
    """Import ``name`` (web3, eth_account: test dependencies only) and undo what py_ecc, which
    they import, does to Python's recursion limit (100,000): with it, a deeply nested JSON
    document overflows the C stack and kills the test process instead of raising."""
    import importlib

    limit = sys.getrecursionlimit()
    try:
        return importlib.import_module(name)
    finally:
        sys.setrecursionlimit(limit)

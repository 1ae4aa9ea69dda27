"""``didgw run`` as a subprocess for the integration tests, configured for one test broker;
and what the MQTT tests do around it: its DID, devices registered with it (simulated by
firmware-sim/device.py), the readings on its record. The ``gateway`` fixture is in
conftest.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from broker import Mosquitto
from support import Run

from gateway.chain.store import ChainStore
from gateway.db import connect
from gateway.identity import offline_resolver, verify_jws


class GatewayProcess:
    """``didgw run`` as a subprocess, configured for one test broker (or none: MQTT off)."""

    def __init__(self, state: Path, broker: Mosquitto | None, config: Path) -> None:
        self.state, self.broker, self.config = state, broker, config
        self.url = ""  # the HTTP edge's address, where a fixture turned it on
        self.ca: Path | None = None  # the authority of its certificate, over HTTPS
        self.process: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def output(self) -> str:
        """Everything the gateway printed so far (read continuously: its pipe never fills)."""
        return "".join(self._lines)

    def start(self, env: dict[str, str] | None = None) -> None:
        password = (
            {} if self.broker is None else {"DIDGW_MQTT_PASSWORD": self.broker.gateway_password}
        )
        self._lines = []
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("didgw")), "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={
                **os.environ,
                "DIDGW_STATE_DIR": str(self.state),
                "DIDGW_CONFIG": str(self.config),
                **password,
                "PYTHONUNBUFFERED": "1",
                **(env or {}),
            },
        )
        stdout = self.process.stdout
        assert stdout is not None
        self._reader = threading.Thread(target=lambda: self._lines.extend(stdout), daemon=True)
        self._reader.start()
        if not self.wait_for(" running (state ", timeout=30):
            raise AssertionError(f"the gateway did not start:\n{self.output}")

    def wait_for(self, text: str, timeout: float = 10.0) -> bool:
        """Whether ``text`` appears in the output within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return True
            if self.process is not None and self.process.poll() is not None:
                time.sleep(0.2)  # let the reader take the last lines
                return text in self.output
            time.sleep(0.05)
        return False

    def stop(self) -> int:
        """SIGTERM, and the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self._close()
        return code

    def memory_kb(self) -> int:
        """Resident memory of the gateway and its child processes, in kB."""
        assert self.process is not None
        pids = [self.process.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                pids.append(int(stat.parent.name))
        total = 0
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total

    def kill(self) -> None:
        """SIGKILL if still running (a test's clean-up, or a crash it causes)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close()

    def _close(self) -> None:
        if self._reader is not None:
            self._reader.join(5)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


def gateway_did(didgw: Run, state: Path) -> str:
    out = didgw("init", "--state-dir", str(state)).stdout
    return out.split("Gateway DID: ")[1].strip()


def make_device(tmp_path: Path, broker: Mosquitto, name: str, gw: str, **kwargs: Any) -> Any:
    """A simulated device (firmware-sim/device.py) of ``broker``, its key and state in tmp_path."""
    import device  # firmware-sim/, on pytest's path

    return device.Device(
        f"{broker.host}:{broker.port}",
        account_broker=f"{broker.host}:{broker.accounts_port}",
        key_path=tmp_path / f"{name}.pem",
        state_dir=tmp_path / f"{name}-state",
        prefix=broker.prefix,
        gateway_did=gw,
        **kwargs,
    )


def register(didgw: Run, state: Path, did: str, name: str) -> None:
    result = didgw(
        "device", "register", did, "--name", name, "--kind", "sensor", "--state-dir", str(state)
    )
    assert result.returncode == 0, result.stderr


def seqs_of(entries: list[Any]) -> list[int]:
    """The sequence numbers inside recorded readings (each checked against its device key)."""
    return sorted(
        json.loads(
            verify_jws(
                e.payload, resolver=offline_resolver(), relationship="assertionMethod", now=0
            ).payload
        )["seq"]
        for e in entries
    )


def records(state: Path, kind: str = "reading") -> list[Any]:
    store = ChainStore(connect(state / "didgw.db"))
    try:
        return [e for e in store.entries() if e.kind == kind]
    finally:
        store.close()

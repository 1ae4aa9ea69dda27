"""SunSpec inverters: polls per second over Modbus TCP and RTU on a pty, and recorded.

The simulator (``firmware-sim/sunspec_inverter.py``) serves models 1 and 103 on a loopback
TCP port and as RTU on a pty; the gateway's own path reads it as ``didgw run`` does
(pymodbus through ``gateway/transports/modbus.py``, ``sunspec.poll``: one request of 118
registers, decoded), back to back, one poll in flight. ``recorded_per_s`` adds what each
reading costs on the record (signed by the inverter's key, one transaction) on a
throwaway state, over TCP.

Last line: one JSON object with ``tcp_polls_per_s``, ``rtu_pty_polls_per_s``,
``recorded_per_s`` and the poll latencies' medians in ms. ``--quick``: 2 s per figure.
"""

from __future__ import annotations

import os
import sys

# bench/http.py has the name of the standard library's http package: this folder comes off
# the import path before anything imports http.client.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

import argparse
import json
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gateway.energy import sunspec
from gateway.energy.modbus_link import LinkSpec
from gateway.transports.modbus import ModbusLink

ROOT = Path(__file__).parents[1]
SIM = ROOT / "firmware-sim" / "sunspec_inverter.py"


def measure(seconds: float, work: Callable[[], object]) -> tuple[float, float]:
    """(operations per second, median latency in ms) of ``work`` run back to back."""
    latencies = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        work()
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, statistics.median(latencies) * 1000


def polls(spec: LinkSpec, seconds: float) -> tuple[float, float]:
    link = ModbusLink(spec, timeout=2.0)
    try:
        layout = sunspec.discover(link.read)
        return measure(seconds, lambda: sunspec.poll(link.read, layout))
    finally:
        link.close()


def recorded(spec: LinkSpec, seconds: float) -> float:
    from gateway.db import connect, migrate
    from gateway.energy.inverter import InverterRecorder, enroll
    from gateway.identity import keystore
    from gateway.identity.resolver import offline_resolver
    from gateway.identity.signing import Signer
    from gateway.registry import Registry

    with tempfile.TemporaryDirectory() as tmp:
        db = connect(Path(tmp) / "didgw.db")
        migrate(db, now=time.time())
        registry = Registry(db, offline_resolver())
        gateway = Signer.for_did_key(keystore.generate_key())
        house = Signer.for_did_key(keystore.generate_key()).did
        registry.register(house, name="house", kind="household", actor="bench", now=time.time())
        inverter = enroll(
            db, registry, state_dir=Path(tmp), gateway=gateway, household=house, name="roof",
            spec=spec, serial=None, actor="bench", now=time.time(),
        )  # fmt: skip
        key = keystore.load_private_key(Path(inverter.key_file), None)
        recorder = InverterRecorder(inverter, db, Signer.for_did_key(key), gateway.did)
        link = ModbusLink(spec, timeout=2.0)
        layout = sunspec.discover(link.read)

        def once() -> None:
            nameplate, values = sunspec.poll(link.read, layout)
            recorder.record(nameplate, values, time.time_ns() // 1_000_000)

        rate, _ = measure(seconds, once)
        link.close()
        recorder.close()
        return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seconds = 2.0 if args.quick else 10.0
    with tempfile.TemporaryDirectory() as tmp:
        pty = Path(tmp) / "ttyINV"
        tcp_sim = subprocess.Popen(
            [sys.executable, str(SIM), "--tcp", "127.0.0.1:0", "--speed", "60"],
            stdout=subprocess.PIPE,
            text=True,
        )
        rtu_sim = subprocess.Popen(
            [sys.executable, str(SIM), "--pty", str(pty), "--baud", "115200", "--speed", "60"],
            stdout=subprocess.DEVNULL,
        )
        try:
            assert tcp_sim.stdout is not None
            port = re.search(r":(\d+)", tcp_sim.stdout.readline())[1]  # type: ignore[index]
            while not pty.exists():
                time.sleep(0.05)
            tcp = LinkSpec(f"tcp://127.0.0.1:{port}")
            tcp_rate, tcp_ms = polls(tcp, seconds)
            print(f"Modbus TCP: {tcp_rate:,.0f} polls/s, median {tcp_ms:.2f} ms", file=sys.stderr)
            rtu_rate, rtu_ms = polls(LinkSpec(str(pty), baudrate=115200), seconds)
            print(f"RTU on a pty: {rtu_rate:,.0f} polls/s, median {rtu_ms:.2f} ms", file=sys.stderr)
            stored = recorded(tcp, seconds)
            print(f"Modbus TCP, each poll recorded: {stored:,.0f}/s", file=sys.stderr)
        finally:
            for sim in (tcp_sim, rtu_sim):
                sim.terminate()
                sim.wait(10)
    print(
        json.dumps(
            {
                "tcp_polls_per_s": round(tcp_rate),
                "tcp_poll_ms": round(tcp_ms, 2),
                "rtu_pty_polls_per_s": round(rtu_rate),
                "rtu_pty_poll_ms": round(rtu_ms, 2),
                "recorded_per_s": round(stored),
            }
        )
    )


if __name__ == "__main__":
    main()

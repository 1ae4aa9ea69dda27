"""The fault suite: real processes, real faults, and after each one the same two checks:
nothing a device was told is accepted is lost (every acknowledged reading is on the record,
once) and the chain verifies.

Elsewhere: the ledger stopped under load (test_anchor_ledger.py), the disk quota reached
(test_service.py), a reading worker killed (test_mqtt_devices.py), the meter's pty closed
and opened again (test_energy_market.py), 10,000 malformed CoAP payloads
(test_coap_devices.py).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto
from gateway_process import GatewayProcess, gateway_did, make_device, records, register, seqs_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import Run

pytestmark = pytest.mark.integration


class Load:
    """Devices publishing readings from a thread until stopped (50 per second each)."""

    def __init__(self, devices: list[Any], rate: float = 50.0) -> None:
        self.devices, self.rate = devices, rate
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(1 / self.rate):
            for device in self.devices:
                device.publish_reading("energy", {"import_kwh": {"value": 1.0, "unit": "kWh"}})
                self.published += 1


def accepted_seqs(device: Any) -> set[int]:
    return {a["seq"] for a in device.acks.copy() if a.get("status") == "accepted"}


def recorded_seqs(state: Path, did: str) -> list[int]:
    return seqs_of([e for e in records(state) if e.actor == did])


def assert_nothing_lost(didgw: Run, state: Path, devices: list[Any]) -> None:
    for device in devices:
        assert device.wait_acked(timeout=90), device.stats
        recorded = recorded_seqs(state, device.did)
        assert len(recorded) == len(set(recorded)), "a reading was recorded twice"
        assert accepted_seqs(device) <= set(recorded), "an acknowledged reading is missing"
        assert recorded == list(range(1, device.outbox.last_seq + 1))
    result = didgw("chain", "verify", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr


def fleet(didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path) -> list[Any]:
    gw = gateway_did(didgw, gateway.state)
    devices = [make_device(tmp_path, mosquitto, f"meter{i}", gw, ack_timeout=5.0) for i in range(3)]
    for i, device in enumerate(devices):
        register(didgw, gateway.state, device.did, f"meter{i}")
    return devices


def test_gateway_killed_under_load_three_times(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    devices = fleet(didgw, mosquitto, gateway, tmp_path)
    gateway.start()
    try:
        for device in devices:
            device.start(timeout=15, retry=True)
        with Load(devices):
            for _ in range(3):
                time.sleep(2)
                gateway.kill()  # SIGKILL: no clean-up of any kind
                time.sleep(0.5)
                gateway.start()  # its workers of the last run stop once they lose their parent
            time.sleep(2)
        assert_nothing_lost(didgw, gateway.state, devices)
    finally:
        for device in devices:
            device.stop()
        assert gateway.stop() == 0


def test_broker_down_ten_seconds_under_load(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    devices = fleet(didgw, mosquitto, gateway, tmp_path)
    gateway.start()
    try:
        for device in devices:
            device.start(timeout=15, retry=True)
        with Load(devices):
            time.sleep(2)
            mosquitto.stop()
            time.sleep(10)  # devices queue on disk meanwhile; the gateway keeps retrying
            mosquitto.start()
            time.sleep(3)
        assert_nothing_lost(didgw, gateway.state, devices)
        assert gateway.process is not None and gateway.process.poll() is None
    finally:
        for device in devices:
            device.stop()
        assert gateway.stop() == 0
    assert "broker reconnected" in gateway.output


#: Payloads of every shape: bytes, text, JSON of any kind, and JWS look-alikes.
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
_b64 = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
PAYLOADS = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    _json.map(lambda v: json.dumps(v).encode()),
    st.tuples(_b64, _b64, _b64).map(lambda t: ".".join(t).encode()),
)


def test_ten_thousand_malformed_payloads(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    gw = gateway_did(didgw, gateway.state)
    device = make_device(tmp_path, mosquitto, "fuzzer", gw)
    register(didgw, gateway.state, device.did, "fuzzer")
    gateway.start()
    payloads: list[bytes] = []

    @settings(
        max_examples=10_000,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(PAYLOADS)
    def collect(payload: bytes) -> None:
        payloads.append(payload)

    collect()
    while len(payloads) < 10_000:  # hypothesis stops early when it runs out of new shapes
        payloads.extend(payloads[: 10_000 - len(payloads)])
    try:
        device.start(timeout=15)
        before = gateway.memory_kb()
        for i, payload in enumerate(payloads):
            device.publish_raw(payload)
            if i % 500 == 499:
                time.sleep(0.05)  # QoS 1 without a window: let the broker keep up
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            refused = [a for a in device.acks.copy() if a.get("status") == "refused"]
            if len(refused) >= len(payloads):
                break
            time.sleep(0.2)
        assert len(refused) == len(payloads)  # every one answered, none taken
        reasons = {a["reason"] for a in refused}
        assert reasons <= {"malformed", "bad_signature"}, reasons
        after = gateway.memory_kb()
        assert after - before < 30_000, (before, after)  # flat: no growth per payload
        # ... and still serving: a real reading goes through.
        device.publish_reading("energy", {"import_kwh": {"value": 1.0, "unit": "kWh"}})
        assert device.wait_acked(timeout=20)
    finally:
        device.stop()
        assert gateway.stop() == 0
    assert len(records(gateway.state)) == 1

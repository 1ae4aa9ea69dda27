"""The load generator (firmware-sim/fleet.py) against a real ``didgw run`` and mosquitto:
devices in one event loop authenticate, connect with their accounts and get readings
acknowledged; a device the gateway refuses backs off instead of hammering it."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import device as dev
import fleet
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gateway_process import GatewayProcess, gateway_did, records, seqs_of
from support import Run

VALUES = {"power_w": {"value": 812, "unit": "W"}}


def _identities(count: int) -> list[dev.Identity]:
    return [dev.Identity.from_key(Ed25519PrivateKey.generate()) for _ in range(count)]


def _import(didgw: Run, state: Path, tmp_path: Path, identities: list[dev.Identity]) -> None:
    rows = ["did,name,kind"] + [f"{d.did},fleet {i},sensor" for i, d in enumerate(identities)]
    csv = tmp_path / "fleet.csv"
    csv.write_text("\n".join(rows) + "\n")
    done = didgw("device", "import", str(csv), "--state-dir", str(state))
    assert done.returncode == 0, done.stderr


def test_fleet_devices_authenticate_and_get_readings_acked(
    gateway: GatewayProcess, didgw: Run, tmp_path: Path
) -> None:
    devices_n = 40
    identities = _identities(devices_n)
    _import(didgw, gateway.state, tmp_path, identities)
    gw = gateway_did(didgw, gateway.state)
    gateway.start()
    broker = fleet.Broker(
        gateway.broker.host, gateway.broker.port, gateway.broker.accounts_port, "didgw"
    )

    async def run() -> list[fleet.FleetDevice]:
        devices = [fleet.FleetDevice(i, broker, gateway_did=gw) for i in identities]
        until = time.monotonic() + 60
        try:
            up = await asyncio.gather(*(d.bring_up(until=until) for d in devices))
            assert all(up), [dict(d.failures) for d in devices]
            acks = await asyncio.gather(*(d.send_until_acked(VALUES, until=until) for d in devices))
            assert [a and a["status"] for a in acks] == ["accepted"] * devices_n
            second = await asyncio.gather(
                *(d.send_until_acked(VALUES, until=until) for d in devices)
            )
            assert [a and (a["seq"], a["status"]) for a in second] == [(2, "accepted")] * devices_n
        finally:
            for d in devices:
                await d.close()
        return devices

    devices = asyncio.run(run())
    assert all(d.attempts >= 1 and d.grant is not None for d in devices)
    assert all(len(d.latencies) == 2 for d in devices)
    # Every reading is on the gateway's record, under its device's key, once.
    assert seqs_of(records(gateway.state)) == sorted([1, 2] * devices_n)


def test_refused_device_backs_off_with_jitter(
    gateway: GatewayProcess, didgw: Run, tmp_path: Path
) -> None:
    gw = gateway_did(didgw, gateway.state)
    gateway.start()
    broker = fleet.Broker(
        gateway.broker.host, gateway.broker.port, gateway.broker.accounts_port, "didgw"
    )
    stranger = dev.Identity.from_key(Ed25519PrivateKey.generate())  # never registered

    async def run() -> fleet.FleetDevice:
        device = fleet.FleetDevice(
            stranger,
            broker,
            gateway_did=gw,
            backoff=fleet.Backoff(base=0.2, cap=1.6, rng=random.Random(7)),
        )
        assert not await device.bring_up(until=time.monotonic() + 4)
        return device

    device = asyncio.run(run())
    assert device.refusals == {"unknown_device": device.attempts}
    assert not device.connected and device.grant is None
    # It waited between attempts, each ceiling twice the last up to the cap, and randomly
    # within it: never back at once, never all at the same moment.
    assert 2 <= device.attempts <= 8, device.waits
    for k, wait in enumerate(device.waits):
        ceiling = min(1.6, 0.2 * 2**k)
        assert ceiling / 2 <= wait <= ceiling
    assert len(set(device.waits)) == len(device.waits)


def test_backoff_honours_a_retry_after() -> None:
    backoff = fleet.Backoff(base=1.0, cap=8.0, rng=random.Random(1))
    assert fleet.retry_after_of({"type": "refused", "reason": "rate_limited"}) is None
    assert fleet.retry_after_of({"retry_after": 12_000}) == 12
    assert fleet.retry_after_of({"retry_after": 2500}) == 2.5
    assert fleet.retry_after_of({"retry_after": -1}) is None
    assert fleet.retry_after_of({"retry_after": True}) is None
    assert fleet.retry_after_of({"retry_after": 10**9}) is None  # not a sane number
    waits = [backoff.next(12.0) for _ in range(20)]
    assert all(12.0 <= w <= 13.2 for w in waits) and len(set(waits)) == len(waits)


def test_a_broker_restart_loses_no_session(
    gateway: GatewayProcess, didgw: Run, tmp_path: Path
) -> None:
    """Sessions are tokens the broker's plugin checks, not accounts it keeps: after a broker
    restart every device connects again with the token it has, with no new handshake, and
    its readings are acknowledged (the gateway reconnects by itself)."""
    devices_n = 200
    identities = _identities(devices_n)
    _import(didgw, gateway.state, tmp_path, identities)
    gw = gateway_did(didgw, gateway.state)
    gateway.start()
    broker = fleet.Broker(
        gateway.broker.host, gateway.broker.port, gateway.broker.accounts_port, "didgw"
    )

    async def back(device: fleet.FleetDevice, until: float) -> bool:
        while time.monotonic() < until:
            try:
                await device.connect()
                return True
            except (OSError, fleet.MqttError, TimeoutError):
                await asyncio.sleep(0.2 + random.random() / 5)
        return False

    async def run() -> list[fleet.FleetDevice]:
        devices = [fleet.FleetDevice(i, broker, gateway_did=gw) for i in identities]
        until = time.monotonic() + 90
        try:
            assert all(await asyncio.gather(*(d.bring_up(until=until) for d in devices)))
            handshakes = sum(d.attempts for d in devices)
            gateway.broker.restart()
            assert all(await asyncio.gather(*(back(d, until) for d in devices)))
            assert sum(d.attempts for d in devices) == handshakes  # no new authentication
            acks = await asyncio.gather(*(d.send_until_acked(VALUES, until=until) for d in devices))
            assert [a and a["status"] for a in acks] == ["accepted"] * devices_n
        finally:
            for d in devices:
                await d.close()
        return devices

    asyncio.run(run())
    assert len(seqs_of(records(gateway.state))) == devices_n

"""Devices over MQTT, end to end: a real mosquitto, the real ``didgw run``, the simulated device.

register → authenticate (DID challenge-response, broker account) → signed readings →
durable entries on the record → acks. And the ways it must refuse.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import device as dev
import pytest
from broker import Mosquitto
from gateway_process import GatewayProcess, gateway_did, make_device, records, register, seqs_of
from support import Run, wait_until

from gateway.identity import offline_resolver, verify_jws
from gateway.run.workers import WORKER_NICE

pytestmark = pytest.mark.integration


def test_register_authenticate_read_record_ack(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    gw = gateway_did(didgw, gateway.state)
    device = make_device(tmp_path, mosquitto, "meter", gw)
    register(didgw, gateway.state, device.did, "meter")
    gateway.start()
    try:
        device.start(timeout=15)
        for i in range(20):
            device.publish_reading("energy", {"import_kwh": {"value": 100 + i, "unit": "kWh"}})
        assert device.wait_acked(timeout=20), device.stats
        acks = list(device.acks)
        assert sorted(a["seq"] for a in acks if a["status"] == "accepted") == list(range(1, 21))
        assert not [a for a in acks if a["status"] != "accepted"]
    finally:
        device.stop()
        assert gateway.stop() == 0, gateway.output
    recorded = records(gateway.state)
    assert len(recorded) == 20
    for entry in recorded:
        assert entry.actor == device.did
        verified = verify_jws(
            entry.payload,
            resolver=offline_resolver(),
            relationship="assertionMethod",
            now=time.time(),
        )
        assert verified.signer.did == device.did  # the device's own signed bytes
    seqs = [
        json.loads(
            verify_jws(
                e.payload,
                resolver=offline_resolver(),
                relationship="assertionMethod",
                now=time.time(),
            ).payload
        )["seq"]
        for e in recorded
    ]
    assert sorted(seqs) == list(range(1, 21))  # verified in parallel: order may differ
    result = didgw("chain", "verify", "--state-dir", str(gateway.state))
    assert result.returncode == 0, result.stderr


def test_unregistered_and_revoked_devices_get_nothing(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    gw = gateway_did(didgw, gateway.state)
    stranger = make_device(tmp_path, mosquitto, "stranger", gw)
    member = make_device(tmp_path, mosquitto, "member", gw)
    register(didgw, gateway.state, member.did, "member")
    gateway.start()
    try:
        with pytest.raises(dev.AuthRefused, match="unknown_device"):
            stranger.authenticate(timeout=10)
        member.start(timeout=15)
        member.publish_reading("temperature", {"t": {"value": 21.5, "unit": "Cel"}})
        assert member.wait_acked(timeout=10)
        revoked = didgw(
            "device", "revoke", member.did, "--reason", "stolen", "--state-dir", str(gateway.state)
        )
        assert revoked.returncode == 0
        wait_until(lambda: not member.connected, "the revoked device to be disconnected", 3)
        with pytest.raises(dev.AuthRefused, match="not_active"):
            member.authenticate(timeout=10)
    finally:
        member.stop()
        assert gateway.stop() == 0, gateway.output
    assert len(records(gateway.state)) == 1


def refusals(device: Any) -> list[str]:
    return [a.get("reason") for a in list(device.acks) if a.get("status") == "refused"]


def test_replays_forgeries_and_garbage_are_refused_and_not_recorded(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    gw = gateway_did(didgw, gateway.state)
    alice = make_device(tmp_path, mosquitto, "alice", gw)
    bob = make_device(tmp_path, mosquitto, "bob", gw)
    for device in (alice, bob):
        register(didgw, gateway.state, device.did, device.did[-6:])
    gateway.start()
    try:
        alice.start(timeout=15)
        alice.publish_reading("energy", {"import_kwh": {"value": 1, "unit": "kWh"}})
        assert alice.wait_acked(timeout=10)
        now = int(time.time() * 1000)
        first = dev.make_reading(
            alice.identity,
            seq=1,
            ts_ms=now,
            reading_type="energy",
            values={"import_kwh": {"value": 999, "unit": "kWh"}},
        )
        bobs = dev.make_reading(
            bob.identity,
            seq=50,
            ts_ms=now,
            reading_type="energy",
            values={"import_kwh": {"value": 5, "unit": "kWh"}},
        )
        stale = dev.make_reading(
            alice.identity,
            seq=2,
            ts_ms=now - 2 * 86_400_000,
            reading_type="energy",
            values={"import_kwh": {"value": 2, "unit": "kWh"}},
        )
        garbage: list[bytes | str] = [
            b"",
            b"{}",
            b"not a jws",
            b"\xff\xfe\x00",
            b"a.b.c",
            bytes(40_000),  # over a reading's 16 KiB; a packet over 64 KiB the broker refuses
            first,  # seq 1 again with other content: a replay
            bobs,  # another registered device's reading, sent on alice's topic
            stale,  # two days old: older than the gateway accepts
            "eyJhbGciOiJub25lIn0.eyJkaWQiOiJ4In0.",  # alg none
        ]
        for payload in garbage:
            alice.publish_raw(payload)
        wait_until(
            lambda: len(refusals(alice)) >= len(garbage),
            f"{len(garbage)} refusals for alice",
            details=lambda: list(alice.acks),
        )
        reasons = refusals(alice)
        assert reasons.count("replay") == 1 and reasons.count("bad_signature") == 1
        assert reasons.count("clock_skew") == 1 and reasons.count("malformed") == 7
        # A foreign client publishing into alice's topic: the broker drops it (mosquitto 2.0
        # does not tell a QoS 1 publisher), so the gateway never answers it. What must not
        # happen cannot be polled for: alice's next reading, published after it, is the
        # barrier. Had the broker passed the foreign one on, the gateway would have had it
        # first, and refused it as a replay.
        foreign = subprocess.run(
            [
                "mosquitto_pub",
                "-h",
                mosquitto.host,
                "-p",
                str(mosquitto.port),
                "-t",
                alice.readings_topic,
                "-m",
                first,
                "-q",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert foreign.returncode == 0, foreign.stderr  # it did publish (and got its PUBACK)
        alice.publish_reading("energy", {"import_kwh": {"value": 2, "unit": "kWh"}})
        assert alice.wait_acked(timeout=10), alice.stats
        assert len(refusals(alice)) == len(garbage), list(alice.acks)
    finally:
        alice.stop()
        assert gateway.stop() == 0, gateway.output
    assert seqs_of(records(gateway.state)) == [1, 2]  # only alice's two real readings


def test_broker_restart_mid_stream_records_every_reading_once(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    gw = gateway_did(didgw, gateway.state)
    device = make_device(tmp_path, mosquitto, "meter", gw)
    register(didgw, gateway.state, device.did, "meter")
    gateway.start()
    try:
        device.start(timeout=15)
        for i in range(30):
            device.publish_reading("energy", {"import_kwh": {"value": i, "unit": "kWh"}})
            if i == 10:
                mosquitto.restart()
        assert device.wait_acked(timeout=60), device.stats
        newcomer = make_device(tmp_path, mosquitto, "newcomer", gw)
        register(didgw, gateway.state, newcomer.did, "newcomer")
        # The gateway administers the restarted broker again. Like a real device, the
        # newcomer retries if its first attempt meets the gateway still reconnecting.
        newcomer.start(timeout=15, retry=True)
        newcomer.publish_reading("energy", {"import_kwh": {"value": 1, "unit": "kWh"}})
        assert newcomer.wait_acked(timeout=45)
        newcomer.stop()
    finally:
        device.stop()
        assert gateway.stop() == 0, gateway.output
    assert "broker reconnected" in gateway.output
    recorded = [e for e in records(gateway.state) if e.actor == device.did]
    seqs = seqs_of(recorded)
    assert seqs == list(range(1, 31))  # every reading, exactly once


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_several_writers_keep_one_chain_and_a_killed_worker_is_replaced(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    gateway.config.write_text(gateway.config.read_text() + "verify_workers = 3\n")
    gw = gateway_did(didgw, gateway.state)
    devices = [make_device(tmp_path, mosquitto, f"meter{i}", gw) for i in range(4)]
    for i, device in enumerate(devices):
        register(didgw, gateway.state, device.did, f"meter{i}")
    gateway.start()
    assert gateway.process is not None
    try:
        for device in devices:
            device.start(timeout=15)
        workers = [p for p in _children(gateway.process.pid) if p != gateway.process.pid]
        # the readings wait for a core when the handshakes need it: the workers are nicer
        main_nice = os.getpriority(os.PRIO_PROCESS, gateway.process.pid)
        spawned = [p for p in workers if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(spawned) == 3
        nice = {os.getpriority(os.PRIO_PROCESS, p) for p in spawned}
        assert nice == {main_nice + WORKER_NICE} and min(nice) > main_nice
        for i in range(40):
            for device in devices:
                device.publish_reading("energy", {"import_kwh": {"value": i, "unit": "kWh"}})
            if i == 15:
                os.kill(max(workers), signal.SIGKILL)  # a worker dies mid-stream
        for device in devices:
            assert device.wait_acked(timeout=60), device.stats
    finally:
        for device in devices:
            device.stop()
        assert gateway.stop() == 0, gateway.output
    assert "starting another" in gateway.output
    for device in devices:
        recorded = [e for e in records(gateway.state) if e.actor == device.did]
        seqs = seqs_of(recorded)
        assert seqs == list(range(1, 41))  # every reading, exactly once
    result = didgw("chain", "verify", "--state-dir", str(gateway.state))
    assert result.returncode == 0, result.stderr  # three writers, one unbroken chain


def test_sessions_expire_unless_renewed(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    """With 10 s sessions: a supervised device renews in time and never loses a reading; a
    device that does not renew is cut off when its session ends, its password stops
    working, and it gets back in by authenticating again."""
    gateway.config.write_text(gateway.config.read_text() + "session_seconds = 10\n")
    gw = gateway_did(didgw, gateway.state)
    renewing = make_device(tmp_path, mosquitto, "renewing", gw)
    lapsing = make_device(tmp_path, mosquitto, "lapsing", gw)
    register(didgw, gateway.state, renewing.did, "renewing")
    register(didgw, gateway.state, lapsing.did, "lapsing")
    gateway.start()
    try:
        renewing.start(timeout=15)
        lapsing.open(timeout=15)  # authenticated and connected, but nobody renews for it
        expired_grant = lapsing.grant
        # Two readings a second for 13 s, past the end of the 10 s sessions: the sleep paces
        # the readings and waits the session clock out on purpose; nothing to poll for.
        deadline = time.monotonic() + 13
        count = 0
        while time.monotonic() < deadline:
            renewing.publish_reading("energy", {"import_kwh": {"value": count, "unit": "kWh"}})
            count += 1
            time.sleep(0.5)
        assert renewing.wait_acked(timeout=20), renewing.stats
        wait_until(  # the broker's plugin drops it when its token expires
            lambda: not lapsing.connected, "the broker to drop the device whose session ended", 5
        )
        with pytest.raises(dev.ConnectRefused):
            lapsing.connect(timeout=10)  # the old token has expired
        lapsing.grant = None
        lapsing.open(timeout=15)  # a new session: a new token, nothing changed in the broker
        assert lapsing.grant is not None and lapsing.grant.password != expired_grant.password
        lapsing.publish_reading("energy", {"import_kwh": {"value": 1, "unit": "kWh"}})
        assert lapsing.wait_acked(timeout=15), lapsing.stats
    finally:
        renewing.stop()
        lapsing.stop()
        assert gateway.stop() == 0, gateway.output
    assert f"disconnecting {lapsing.did} (token expired)" in mosquitto.log()
    assert f"disconnecting {renewing.did}" not in mosquitto.log()
    renewed = [e for e in records(gateway.state) if e.actor == renewing.did]
    assert len(renewed) == count  # every reading across the renewal, once

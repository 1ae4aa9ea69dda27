"""Broker sessions as tokens, through the real ``didgw run`` and mosquitto with the didgw
plugin: what a device's session allows, how a revocation ends it (also one made while the
gateway was not running), and that a session survives the gateway's restart."""

from __future__ import annotations

import threading
from pathlib import Path

import device as dev
import pytest
from broker import Mosquitto
from gateway_process import GatewayProcess, gateway_did, make_device, register
from support import Run, wait_until

pytestmark = pytest.mark.integration


def reading(device: object, value: int) -> None:
    device.publish_reading("energy", {"import_kwh": {"value": value, "unit": "kWh"}})  # type: ignore[attr-defined]


def test_a_revoked_device_is_cut_off_under_load_and_its_token_is_void(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    """Four devices publish without pause; one is revoked: the broker drops it (the deny
    file, read within a tick), its token no longer opens a connection, and the others go
    on, each acknowledged."""
    gw = gateway_did(didgw, gateway.state)
    devices = [make_device(tmp_path, mosquitto, f"d{i}", gw) for i in range(4)]
    for i, d in enumerate(devices):
        register(didgw, gateway.state, d.did, f"d{i}")
    gateway.start()
    stop = threading.Event()

    def publish(d: object) -> None:
        n = 0
        while not stop.is_set():
            reading(d, n)
            n += 1
            stop.wait(0.01)

    victim, *others = devices
    threads = [threading.Thread(target=publish, args=(d,), daemon=True) for d in devices]
    try:
        for d in devices:
            d.start(timeout=15)
        for t in threads:
            t.start()
        wait_until(lambda: all(d.stats["accepted"] >= 20 for d in devices), "readings flowing", 20)
        stolen = victim.grant.password.decode("ascii")
        revoked = didgw(
            "device", "revoke", victim.did, "--reason", "stolen", "--state-dir", str(gateway.state)
        )
        assert revoked.returncode == 0, revoked.stderr
        wait_until(lambda: not victim.connected, "the revoked device dropped by the broker", 5)
        thief = mosquitto.account_peer(victim.did, stolen)
        with thief:
            assert str(thief.connect()) == "Not authorized"
        counts = {d.did: d.stats["accepted"] for d in others}
        wait_until(
            lambda: all(d.stats["accepted"] > counts[d.did] + 20 for d in others),
            "the other devices acknowledged on", 20,
        )  # fmt: skip
        assert all(d.connected for d in others)
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for d in devices:
            d.stop()
        assert gateway.stop() == 0, gateway.output
    assert f"ended the broker session of {victim.did}" in gateway.output


def test_a_token_opens_only_its_own_did_and_topics(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    gw = gateway_did(didgw, gateway.state)
    device = make_device(tmp_path, mosquitto, "meter", gw)
    register(didgw, gateway.state, device.did, "meter")
    gateway.start()
    try:
        device.open(timeout=15)
        token = device.grant.password.decode("ascii")
        assert token.startswith("v2.") and len(token) < 2048
        other_did = make_device(tmp_path, mosquitto, "other", gw).did
        for username in (other_did, "gateway", "admin"):
            with mosquitto.account_peer(username, token) as peer:
                assert str(peer.connect()) == "Not authorized", username
        with mosquitto.account_peer(device.did, token) as same:  # its own: the topics only
            assert str(same.connect()) == "Success"
            assert str(same.subscribe("didgw/#")) == "Not authorized"
            assert str(same.publish(f"didgw/d/{other_did}/readings", b"x")) == "Not authorized"
    finally:
        device.stop()
        assert gateway.stop() == 0, gateway.output


def test_a_device_revoked_while_the_gateway_was_down_is_cut_off_when_it_starts(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    """A session outlives the gateway (its token is the broker's to check): a restart
    keeps devices connected. A revocation made meanwhile with the command line voids the
    device's token as soon as the gateway is back."""
    gw = gateway_did(didgw, gateway.state)
    kept = make_device(tmp_path, mosquitto, "kept", gw)
    gone = make_device(tmp_path, mosquitto, "gone", gw)
    register(didgw, gateway.state, kept.did, "kept")
    register(didgw, gateway.state, gone.did, "gone")
    gateway.start()
    try:
        kept.open(timeout=15)
        gone.open(timeout=15)
        assert gateway.stop() == 0, gateway.output
        revoked = didgw(
            "device", "revoke", gone.did, "--reason", "x", "--state-dir", str(gateway.state)
        )
        assert revoked.returncode == 0, revoked.stderr
        assert gone.connected and kept.connected  # nobody watches while the gateway is down
        gateway.start()
        wait_until(lambda: not gone.connected, "the device revoked meanwhile dropped", 10)
        with pytest.raises(dev.ConnectRefused):
            gone.connect(timeout=10)
        assert kept.connected
        reading(kept, 1)
        assert kept.wait_acked(timeout=15), kept.stats
    finally:
        kept.stop()
        gone.stop()
        gateway.stop()

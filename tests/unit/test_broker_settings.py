"""The broker settings the policy relies on, the gateway's client ids, and what the gateway's
MQTT connections drop unread (oversized and retained messages).

The attacks themselves run against a real mosquitto in
``tests/integration/test_broker_hardening.py``. Here: the pieces without a broker. The
oversized path of :class:`InputGuard` is reached here with hand-made messages, because a
real mosquitto never hands the gateway a packet larger than the Maximum Packet Size it
asked for (the integration test shows that).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from gateway.auth import broker as policy
from gateway.ops.broker import PrivateBroker
from gateway.transports import dynsec
from gateway.transports.mqtt import InputGuard, MqttLink, v5_connect_properties

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "configs" / "mosquitto" / "mosquitto.conf"


def active_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_the_shipped_configuration_has_every_setting_the_policy_relies_on() -> None:
    shipped = SHIPPED.read_text()
    for line in policy.broker_settings():
        assert line in active_lines(shipped), line
    # The two LAN listeners (TLS), each with the lines the policy puts under it, in order,
    # right after its listener line; and their plain alternatives, commented out, alike.
    lines = active_lines(shipped)
    accounts = lines.index("listener 8883")
    assert lines[accounts + 1 : accounts + 3] == policy.accounts_listener_settings()
    auth = lines.index("listener 8884")
    assert lines[auth + 1 : auth + 2] == policy.auth_listener_settings()
    commented = [line.strip() for line in shipped.splitlines()]
    plain_accounts = commented.index("#listener 1884 192.168.1.10")
    assert commented[plain_accounts + 1 : plain_accounts + 3] == [
        "#" + line for line in policy.accounts_listener_settings()
    ]
    plain_auth = commented.index("#listener 1885 192.168.1.10")
    assert commented[plain_auth + 1 : plain_auth + 2] == [
        "#" + line for line in policy.auth_listener_settings()
    ]
    # and the broker's file descriptors cover both caps, with room for the gateway
    dropin = (ROOT / "systemd" / "mosquitto.service.d" / "didgw.conf").read_text()
    limit = int(re.search(r"^LimitNOFILE=(\d+)$", dropin, re.M)[1])  # type: ignore[index]
    assert limit > policy.MAX_ACCOUNT_CONNECTIONS + policy.MAX_AUTH_CONNECTIONS + 1000


def test_the_private_broker_runs_the_same_settings(tmp_path: Path) -> None:
    broker = PrivateBroker(tmp_path, port=11883, accounts_port=18883)
    lines = active_lines(broker.config())
    for line in policy.broker_settings():
        assert line in lines
    accounts = lines.index(f"listener 18883 {broker.host}")
    assert lines[accounts + 1 : accounts + 3] == policy.accounts_listener_settings()
    assert f"listener 11883 {broker.host}" in lines


def test_no_username_can_be_a_client_id_anyone_may_send() -> None:
    # device and person accounts are DIDs; the gateway's may not carry the prefix
    assert not "did:key:z6Mk".startswith(policy.CLIENT_ID_PREFIX)
    assert policy.AUTO_ID_PREFIX.startswith(policy.CLIENT_ID_PREFIX)
    with pytest.raises(ValueError, match="must not start with 'didgw-'"):
        policy.gateway_client_commands("didgw-main", "pw")


def test_the_gateways_client_id_is_stable_secret_and_has_the_prefix() -> None:
    one = policy.link_client_id("password-one")
    assert one == policy.link_client_id("password-one")  # its session survives restarts
    assert one != policy.link_client_id("password-two")
    assert one.startswith(policy.CLIENT_ID_PREFIX)
    assert len(one.rsplit("-", 1)[1]) == 32  # 128 bits nobody can compute without it


def test_the_gateway_asks_for_no_packet_over_the_limit() -> None:
    properties = v5_connect_properties(session_expiry=60)
    assert properties.MaximumPacketSize == policy.MAX_PACKET_BYTES
    assert properties.SessionExpiryInterval == 60


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_oversized_and_retained_messages_are_dropped_counted_and_retained_ones_cleared(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cleared: list[str] = []
    clock = Clock()
    guard = InputGuard(clear=cleared.append, max_bytes=100, log_every=10, clock=clock)
    caplog.set_level(logging.WARNING)
    assert guard.admit("didgw/auth/req", b"x" * 100, False)
    assert not guard.admit("didgw/auth/req", b"x" * 101, False)
    assert not guard.admit("didgw/auth/req", b"hello", True)
    assert cleared == ["didgw/auth/req"]
    # an empty retained message is a clearing (ours, coming back): dropped, not counted
    assert not guard.admit("didgw/d/x/readings", b"", True)
    assert cleared == ["didgw/auth/req"]
    assert guard.dropped == {"oversized": 1, "retained": 1}
    assert "101 bytes, more than 100" in caplog.text
    assert "takes no retained input" in caplog.text


def test_a_flood_of_refusals_gives_one_log_line_per_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    guard = InputGuard(clear=lambda _: None, max_bytes=10, log_every=10, clock=clock)
    caplog.set_level(logging.WARNING)
    for _ in range(2000):
        guard.admit("didgw/auth/req", b"x" * 11, False)
    assert guard.dropped["oversized"] == 2000
    assert len(caplog.records) == 1
    clock.now = 10.0
    guard.admit("didgw/auth/req", b"x" * 11, False)
    assert len(caplog.records) == 2
    assert "1999 more since the last such line" in caplog.records[-1].getMessage()


def test_the_link_hands_on_only_what_the_guard_admits() -> None:
    """A paho message made by hand: mosquitto would not deliver the oversized one."""
    loop = asyncio.new_event_loop()
    got: list[tuple[str, bytes]] = []
    link = MqttLink(
        host="127.0.0.1",
        port=1,
        username="gateway",
        password="pw",
        client_id="didgw-test",
        subscriptions=["didgw/auth/req"],
        on_message=lambda topic, payload: got.append((topic, payload)),
        loop=loop,
    )
    cleared: list[tuple[str, bytes, bool]] = []
    link._client.publish = lambda topic, payload, qos, retain: cleared.append(  # type: ignore[method-assign,assignment]
        (topic, payload, retain)
    )

    def message(payload: bytes, retain: bool) -> mqtt.MQTTMessage:
        m = mqtt.MQTTMessage(topic=b"didgw/auth/req")
        m.payload, m.retain = payload, retain
        return m

    try:
        for payload, retain in ((b"ok", False), (b"x" * 70000, False), (b"old", True)):
            link._received(link._client, None, message(payload, retain))
        loop.run_until_complete(asyncio.sleep(0))
        assert got == [("didgw/auth/req", b"ok")]
        assert cleared == [("didgw/auth/req", b"", True)]
        assert link.guard.dropped == {"oversized": 1, "retained": 1}
    finally:
        loop.close()


def test_the_link_hands_a_burst_over_in_order_with_one_wake_up_and_survives_a_bad_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Messages received on paho's thread reach the handler on the event loop in the order
    received, a burst with one wake-up of the loop; a handler that raises is logged, and
    the messages after it (and later bursts) are still handed over."""
    loop = asyncio.new_event_loop()
    got: list[bytes] = []

    def handler(topic: str, payload: bytes) -> None:
        if payload == b"bad":
            raise ValueError("a handler's bug")
        got.append(payload)

    link = MqttLink(
        host="127.0.0.1", port=1, username="gateway", password="pw", client_id="didgw-test",
        subscriptions=["didgw/auth/req"], on_message=handler, loop=loop,
    )  # fmt: skip
    wake_ups = 0
    threadsafe = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any) -> Any:
        nonlocal wake_ups
        wake_ups += 1
        return threadsafe(callback, *args)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]

    def burst(payloads: list[bytes]) -> threading.Thread:
        def receive() -> None:
            for p in payloads:
                m = mqtt.MQTTMessage(topic=b"didgw/auth/req")
                m.payload = p
                link._received(link._client, None, m)

        return threading.Thread(target=receive)

    try:
        first = [str(i).encode() for i in range(2000)]
        thread = burst(first)
        thread.start()
        thread.join()
        assert wake_ups == 1  # the loop was not running: all 2,000 waited for one hand-over
        loop.run_until_complete(asyncio.sleep(0))
        assert got == first
        # while the loop runs and takes them, a burst with a bad message in the middle
        second = [b"a", b"bad", b"b", *(str(i).encode() for i in range(3000))]
        thread = burst(second)

        async def meanwhile() -> None:
            thread.start()
            while thread.is_alive():
                await asyncio.sleep(0)
            await asyncio.sleep(0.05)

        loop.run_until_complete(meanwhile())
        assert got == first + [p for p in second if p != b"bad"]
        assert "handling a message on didgw/auth/req failed" in caplog.text
        assert wake_ups < 1 + len(second)
        assert not link._inbox and not link._handover_pending
    finally:
        loop.close()


def test_a_large_dynamic_security_batch_goes_out_in_parts_in_order() -> None:
    batch = [{"command": "deleteClient", "username": f"did:key:z6Mk{i:06d}"} for i in range(3000)]
    parts = dynsec._parts(batch, dynsec.MAX_REQUEST_BYTES)
    assert len(parts) > 1
    assert [c for part in parts for c in part] == batch
    for part in parts:
        numbered = [{**c, "correlationData": f"{'f' * 16}:{i}"} for i, c in enumerate(part)]
        assert len(json.dumps({"commands": numbered})) <= dynsec.MAX_REQUEST_BYTES
    assert dynsec._parts([], 100) == []
    assert dynsec.MAX_REQUEST_BYTES < policy.MAX_PACKET_BYTES


def test_ports_picked_together_are_all_different() -> None:
    """Ports asked for one at a time may repeat; asked for together they cannot (each probe
    stays bound until all are picked)."""
    from gateway.ops.broker import free_ports

    for _ in range(20):
        ports = free_ports(64)
        assert len(set(ports)) == 64 and all(1024 <= p <= 65535 for p in ports)

"""What an outside client of the broker can do to the gateway (issue 16, findings 1 and 3).

Real attacks against a real mosquitto (the shipped settings, ``gateway/ops/broker.py``) and
the real ``didgw run``: an anonymous client taking over the gateway's or a device's client
id, a 64 MiB publish, a retained message on the auth topic.
"""

from __future__ import annotations

import json
import re
import threading
import time
import tomllib
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import device as dev
import paho.mqtt.client as mqtt
import pytest
from broker import Mosquitto
from broker import free_port as broker_free_port
from gateway_process import GatewayProcess, gateway_did, make_device, records, register
from paho.mqtt.enums import CallbackAPIVersion
from support import Run, wait_until

pytestmark = pytest.mark.integration


def metrics(gateway: GatewayProcess) -> dict[str, float]:
    """The gateway's Prometheus figures, ``name{labels}`` → value."""
    port = tomllib.loads(gateway.config.read_text())["metrics"]["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    figures = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            figures[name] = float(value)
    return figures


class Intruder:
    """Anonymous MQTT clients, one per client id, each connecting again and again with it."""

    def __init__(self, broker: Mosquitto, client_ids: list[str]) -> None:
        self.broker, self.client_ids = broker, client_ids
        self.accepted: dict[str, int] = dict.fromkeys(client_ids, 0)
        self.refused: dict[str, int] = dict.fromkeys(client_ids, 0)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(client_id,), daemon=True)
            for client_id in client_ids
        ]

    def tries(self) -> int:
        return min(self.accepted[i] + self.refused[i] for i in self.client_ids)

    def _loop(self, client_id: str) -> None:
        while not self._stop.is_set():
            answered, outcome = threading.Event(), []
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv311,
                reconnect_on_failure=False,
            )

            def connected(*args: Any, outcome: list[bool] = outcome, ev: Any = answered) -> None:
                outcome.append(not args[3].is_failure)
                ev.set()

            client.on_connect = connected
            client.on_disconnect = lambda *_, ev=answered: ev.set()
            try:
                client.connect(self.broker.host, self.broker.port, keepalive=30)
            except OSError:
                continue
            client.loop_start()
            answered.wait(2)
            if outcome and outcome[0]:
                self.accepted[client_id] += 1
            else:
                self.refused[client_id] += 1
            self._stop.wait(0.3)  # stay connected a moment, as a real attacker would
            client.disconnect()
            client.loop_stop()

    @contextmanager
    def running(self) -> Iterator[Intruder]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(10)


def broker_client_ids(broker: Mosquitto, username: str) -> list[str]:
    """The client ids the broker logged for connections made with ``username``."""
    pattern = re.compile(r"New client connected from \S+ as (\S+) \(.*u'" + re.escape(username))
    return pattern.findall(broker.log())


def takeovers(broker: Mosquitto) -> list[str]:
    """Client ids the broker disconnected because another connection used them."""
    return re.findall(r"Client (\S+) already connected, closing old connection", broker.log())


def test_an_anonymous_client_cannot_knock_the_gateway_or_a_device_off(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    """Finding 1: an anonymous loop reconnecting with every client id it can know or guess
    (the gateway's former one, derived from its public DID; each device's DID; the id the
    broker logged for a connected device) while six devices log in one after the other."""
    gw = gateway_did(didgw, gateway.state)
    devices = [make_device(tmp_path, mosquitto, f"d{i}", gw) for i in range(6)]
    for device in devices:
        register(didgw, gateway.state, device.did, device.did[-6:])
    (gateway.config).write_text(gateway.config.read_text() + "verify_workers = 0\n")
    gateway.start()
    watcher = devices[0]
    try:
        watcher.start(timeout=15)
        watcher_ids = broker_client_ids(mosquitto, watcher.did)
        assert watcher_ids, mosquitto.log()
        guesses = [f"didgw-{gw[-12:]}", gw, mosquitto.gateway_username]
        guesses += [watcher_ids[-1]] + [d.did for d in devices]
        intruder = Intruder(mosquitto, list(dict.fromkeys(guesses)))
        failed: list[str] = []
        with intruder.running():
            wait_until(lambda: intruder.tries() >= 2, "the intruder to try every id twice", 20)
            for device in devices[1:]:
                try:
                    device.authenticate(timeout=8)
                    device.connect(timeout=8)
                except (dev.DeviceError, TimeoutError) as exc:
                    failed.append(f"{device.did[-6:]}: {exc}")
            watcher.publish_reading("energy", {"import_kwh": {"value": 1, "unit": "kWh"}})
            acked = watcher.wait_acked(timeout=15)
        kicked = Counter(takeovers(mosquitto))
        print(
            f"\nlogins failed: {len(failed)} of {len(devices) - 1}; connections taken over: "
            f"{dict(kicked)}; intruder connections accepted {sum(intruder.accepted.values())},"
            f" refused {sum(intruder.refused.values())}"
        )
        assert not failed, failed
        assert acked, watcher.stats
        assert takeovers(mosquitto) == [], takeovers(mosquitto)
        assert watcher.stats["connects"] == 1, watcher.stats  # never kicked off
    finally:
        for device in devices:
            device.close()
        assert gateway.stop() == 0, gateway.output


def _peak_of(pid: int) -> int:
    """The most resident memory process ``pid`` has had, in kB (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def peak_kb(gateway: GatewayProcess) -> int:
    """The gateway's main process's peak resident memory, in kB."""
    assert gateway.process is not None
    return _peak_of(gateway.process.pid)


def _anonymous_v5(broker: Mosquitto, client_id: str) -> tuple[mqtt.Client, threading.Event]:
    """An anonymous MQTT 5 client; the event is set when the broker drops it."""
    dropped = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        reconnect_on_failure=False,
    )
    client.on_disconnect = lambda *_: dropped.set()
    client.connect(broker.host, broker.port, keepalive=60)
    client.loop_start()
    return client, dropped


def test_a_64_mib_anonymous_publish_reaches_neither_broker_memory_nor_the_gateway(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    """Finding 3, size: 64 MiB to ``didgw/auth/req`` from an anonymous client."""
    gw = gateway_did(didgw, gateway.state)
    member = make_device(tmp_path, mosquitto, "member", gw)
    register(didgw, gateway.state, member.did, "member")
    gateway.start()
    try:
        before = peak_kb(gateway)
        attacker, dropped = _anonymous_v5(mosquitto, "didgw-big-sender")
        info = attacker.publish(f"{mosquitto.prefix}/auth/req", b"A" * (64 << 20), qos=1)
        done = lambda: info.is_published() or dropped.is_set()  # noqa: E731
        wait_until(done, "the broker to take or refuse the 64 MiB", 60)
        member.authenticate(timeout=15)  # the gateway still serves, after the big message
        broker_peak = _peak_of(mosquitto.pid)
        after = peak_kb(gateway)
        attacker.loop_stop()
        figures = metrics(gateway)
        malformed = figures.get(
            'didgw_authentications_total{result="malformed",transport="mqtt"}', 0.0
        )
        print(
            f"\ngateway peak RSS {before // 1024} MB -> {after // 1024} MB; broker peak "
            f"{broker_peak // 1024} MB; broker took it: "
            f"{info.is_published()}; gateway saw it as malformed: {malformed:g}"
        )
        assert not info.is_published(), "the broker accepted a 64 MiB publish"
        assert malformed == 0, "the gateway read the 64 MiB message"
    finally:
        member.close()
        assert gateway.stop() == 0, gateway.output


def test_a_retained_anonymous_hello_is_never_answered_nor_replayed(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    """Finding 3, retain: a retained hello on ``auth/req`` would be delivered to the gateway
    again after every reconnect or restart; it must be answered never, and not stay."""
    gw = gateway_did(didgw, gateway.state)
    member = make_device(tmp_path, mosquitto, "member", gw)
    register(didgw, gateway.state, member.did, "member")
    prefix = mosquitto.prefix
    gateway.start()
    listener, _ = _anonymous_v5(mosquitto, "didgw-listener-1")
    answers: list[tuple[str, bytes]] = []
    listener.on_message = lambda c, u, m: answers.append((m.topic, m.payload))
    listener.subscribe(f"{prefix}/auth/res/+", qos=1)
    attacker, _ = _anonymous_v5(mosquitto, "didgw-retainer-1")

    def answered(reply: str) -> bool:
        return any(topic.endswith("/" + reply) for topic, _ in answers)

    def hello(reply: str, *, retain: bool = False) -> None:
        attacker.publish(
            f"{prefix}/auth/req", dev.make_hello(member.did, reply), qos=1, retain=retain
        ).wait_for_publish(5)

    retained_reply, seen = "retained-hello-0123456789", []
    try:
        time.sleep(0.5)  # the listener's subscription (no ack wait in this raw client)
        hello(retained_reply, retain=True)
        hello("marker-one-0123456789")
        wait_until(lambda: answered("marker-one-0123456789"), "the marker's answer", 15)
        seen.append(answered(retained_reply))
        assert gateway.stop() == 0, gateway.output
        answers.clear()
        gateway.start()  # subscribes again: a retained message would come again
        hello("marker-two-0123456789")
        wait_until(lambda: answered("marker-two-0123456789"), "the marker's answer", 15)
        seen.append(answered(retained_reply))
        print(f"\nretained hello answered: live {seen[0]}, after a restart {seen[1]}")
        assert seen == [False, False]
    finally:
        for client in (listener, attacker):
            client.disconnect()
            client.loop_stop()
        member.close()
        gateway.kill()


# -- the broker's settings, without a gateway -------------------------------------------------


def _connect(
    broker: Mosquitto,
    client_id: str,
    *,
    port: int | None = None,
    username: str | None = None,
    password: str | None = None,
    clean: bool = True,
) -> tuple[mqtt.Client, str, bool, threading.Event]:
    """An MQTT 3.1.1 client: (client, CONNACK reason, session present, dropped)."""
    answered, dropped = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=clean,
        reconnect_on_failure=False,
    )
    if username is not None:
        client.username_pw_set(username, password)

    def connected(_c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        outcome.update(reason=str(reason), present=bool(flags.session_present))
        answered.set()

    def disconnected(*_: Any) -> None:
        dropped.set()
        answered.set()

    client.on_connect, client.on_disconnect = connected, disconnected
    client.connect(broker.host, port or broker.port, keepalive=30)
    client.loop_start()
    assert answered.wait(5), "no CONNACK"
    return client, outcome.get("reason", "dropped"), outcome.get("present", False), dropped


def _close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


DEVICE = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"


def test_an_account_connection_is_named_by_its_account_and_nobody_else_can_take_it(
    mosquitto: Mosquitto,
) -> None:
    password = mosquitto.token(DEVICE)  # its session, as the gateway grants one
    accounts = mosquitto.accounts_port
    device, reason, _, kicked = _connect(
        mosquitto, "didgw-dev-1", port=accounts, username=DEVICE, password=password
    )
    assert reason == "Success"
    assert broker_client_ids(mosquitto, DEVICE) == [DEVICE]  # its id is its DID
    try:
        # The DID as client id: refused (no prefix), on either listener.
        for port in (mosquitto.port, accounts):
            intruder, reason, _, _ = _connect(mosquitto, DEVICE, port=port)
            assert reason == "Not authorized", port
            intruder.loop_stop()
        # Anonymous clients cannot use the accounts listener at all.
        intruder, reason, _, _ = _connect(mosquitto, "didgw-anything", port=accounts)
        assert reason == "Not authorized"
        intruder.loop_stop()
        # Another id with the prefix is another client.
        other, reason, _, _ = _connect(mosquitto, "didgw-dev-1")
        assert reason == "Success"
        _close(other)
        assert not kicked.is_set()
        assert takeovers(mosquitto) == []
        # The same account may take its own place (a device reconnecting).
        again, reason, _, _ = _connect(
            mosquitto, "didgw-dev-2", port=accounts, username=DEVICE, password=password
        )
        assert reason == "Success"
        wait_until(kicked.is_set, "the account's earlier connection to be replaced", 5)
        _close(again)
    finally:
        _close(device)


def test_an_empty_client_id_gets_one_with_the_prefix(mosquitto: Mosquitto) -> None:
    client, reason, _, _ = _connect(mosquitto, "")
    assert reason == "Success"
    _close(client)
    assert re.search(r"New client connected from \S+ as didgw-auto-", mosquitto.log())


def test_a_reconciliation_larger_than_the_packet_limit_is_sent_in_parts(
    mosquitto: Mosquitto,
) -> None:
    from gateway.auth import broker as policy

    stale = [f"did:key:z6MkStale{i:05d}{'x' * 30}" for i in range(800)]
    with mosquitto.admin() as admin:
        for i in range(0, len(stale), 100):
            admin.execute(
                [
                    {"command": "createClient", "username": name, "password": "p"}
                    for name in stale[i : i + 100]
                ]
            )
        commands = policy.legacy_removals(admin.list_clients(), admin.list_roles())
        assert len(json.dumps({"commands": commands})) > policy.MAX_PACKET_BYTES
        admin.execute(commands, ok_errors=policy.RECONCILE_OK_ERRORS)
        assert not [name for name in admin.list_clients() if name.startswith("did:")]


# -- the gateway's own guard ---------------------------------------------------------------


class _UnlimitedBroker(Mosquitto):
    """The tests' broker without the shipped packet limit (an operator's broker set up
    without it): what the gateway's own Maximum Packet Size must make up for."""

    def config(self) -> str:
        return "".join(
            line + "\n" for line in super().config().splitlines() if "max_packet_size" not in line
        )


def test_without_the_brokers_limit_the_gateway_still_takes_no_64_mib(
    didgw: Run, tmp_path: Path
) -> None:
    from gateway_process import GatewayProcess as Process

    broker = _UnlimitedBroker(tmp_path / "unlimited")
    broker.setup()
    state, config = tmp_path / "state", tmp_path / "gateway.toml"
    assert didgw("init", "--state-dir", str(state)).returncode == 0
    metrics_port = broker_free_port()
    config.write_text(f"[metrics]\nport = {metrics_port}\n\n[mqtt]\n" + broker.gateway_settings())
    gateway = Process(state, broker, config)
    gw = gateway_did(didgw, state)
    member = make_device(tmp_path, broker, "member", gw)
    register(didgw, state, member.did, "member")
    gateway.start()
    try:
        before = peak_kb(gateway)
        attacker, _ = _anonymous_v5(broker, "didgw-big-sender-2")
        info = attacker.publish(f"{broker.prefix}/auth/req", b"A" * (64 << 20), qos=1)
        wait_until(info.is_published, "the broker to take the 64 MiB", 60)  # no limit there
        member.authenticate(timeout=15)  # answered after the big message, if it came
        after = peak_kb(gateway)
        attacker.disconnect()
        attacker.loop_stop()
        figures = metrics(gateway)
        malformed = figures.get(
            'didgw_authentications_total{result="malformed",transport="mqtt"}', 0.0
        )
        oversized = figures.get("didgw_mqtt_dropped_oversized", 0.0)
        print(
            f"\nbroker without a limit: gateway peak RSS {before // 1024} MB -> "
            f"{after // 1024} MB; gateway handled it {malformed:g}, dropped it {oversized:g}"
        )
        # Not even received: the gateway's own check did not have to drop it, and its
        # memory did not hold the 64 MiB at any moment.
        assert (malformed, oversized) == (0, 0), "the broker handed the gateway a 64 MiB message"
        assert after - before < 32 * 1024, f"peak {before} kB -> {after} kB"
    finally:
        member.close()
        gateway.kill()
        broker.stop()


def test_a_retained_reading_is_dropped_counted_and_cleared(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    """A device account's retained reading (the reading workers' input): never recorded,
    counted, and gone from the broker, so no reconnect brings it back."""
    gw = gateway_did(didgw, gateway.state)
    member = make_device(tmp_path, mosquitto, "member", gw)
    register(didgw, gateway.state, member.did, "member")
    gateway.start()
    try:
        grant = member.authenticate(timeout=15)
        reading = dev.make_reading(
            member.identity,
            seq=1,
            reading_type="energy",
            values={"import_kwh": {"value": 1, "unit": "kWh"}},
            ts_ms=int(time.time() * 1000),
        )
        client, reason, _, _ = _connect(
            mosquitto,
            "didgw-retainer-2",
            port=mosquitto.accounts_port,
            username=grant.username,
            password=grant.password.decode(),
        )
        assert reason == "Success"
        client.publish(member.readings_topic, reading, qos=1, retain=True).wait_for_publish(5)
        dropped = "didgw_mqtt_dropped_retained"
        wait_until(lambda: metrics(gateway).get(dropped, 0) >= 1, "the drop to be counted", 15)
        _close(client)
        # Nothing retained is left: a subscriber gets only the marker published after.
        with mosquitto.gateway() as peer:
            assert peer.connect().is_failure is False
            assert peer.subscribe(member.readings_topic).is_failure is False
            peer.publish(member.readings_topic, b"marker")
            assert peer.received_until(member.readings_topic, b"marker") == []
    finally:
        member.close()
        assert gateway.stop() == 0, gateway.output
    assert records(gateway.state) == []


def test_the_session_of_the_gateways_former_client_id_is_ended(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess
) -> None:
    """Gateways before this one used ``didgw-`` and the end of their DID, with a session
    that never expires: the broker would queue every device's message to it forever."""
    gw = gateway_did(didgw, gateway.state)
    former = f"didgw-{gw[-12:]}"
    client, reason, _, _ = _connect(
        mosquitto,
        former,
        username=mosquitto.gateway_username,
        password=mosquitto.gateway_password,
        clean=False,
    )
    assert reason == "Success"
    client.subscribe(f"{mosquitto.prefix}/auth/req", qos=1)
    time.sleep(0.3)  # the subscription (no ack wait in this raw client)
    _close(client)
    gateway.start()
    try:
        client, reason, present, _ = _connect(
            mosquitto,
            former,
            username=mosquitto.gateway_username,
            password=mosquitto.gateway_password,
            clean=False,
        )
        _close(client)
        assert reason == "Success"
        assert not present, "the former session is still on the broker"
    finally:
        assert gateway.stop() == 0, gateway.output

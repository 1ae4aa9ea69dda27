"""mosquitto's didgw plugin (broker-plugin/didgw_auth.c) on a real mosquitto 2.0 with
dynamic security: session tokens the gateway seals (gateway/auth/broker_tokens.py) let
devices and people in with the topics of their claims; the deny file cuts them off."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fleet
import pytest
from broker import Mosquitto, Peer, missing_tools
from support import wait_until

from gateway.auth import broker_tokens as bt
from gateway.ops.broker import token_plugin_library

VECTORS = json.loads(
    (Path(__file__).parents[1] / "vectors" / "broker-token" / "tokens.json").read_text()
)
PREFIX = "didgw"


@dataclass
class TokenBroker:
    broker: Mosquitto
    key: bytes
    deny_file: Path

    def token(self, did: str, kind: str = "device", lifetime: int = 600, **over: object) -> str:
        args: dict[str, object] = dict(
            sub=did,
            kind=kind,
            prefix=PREFIX,
            now=int(time.time()),
            lifetime=lifetime,
            random_bytes=secrets.token_bytes(16),
        )
        args.update(over)
        return bt.mint(self.key, **args)  # type: ignore[arg-type]

    def connect(self, did: str, password: str) -> tuple[Peer, str]:
        peer = self.broker.account_peer(did, password)
        return peer, str(peer.connect())

    def deny(self, entries: dict[str, int]) -> None:
        """Replace the deny file as the gateway does: write a new file, rename it over."""
        new = self.deny_file.with_suffix(".new")
        new.write_text(bt.deny_file_text(entries))
        os.replace(new, self.deny_file)


def new_did() -> str:
    return f"did:example:{secrets.token_hex(8)}"


def start(directory: Path, key_bytes: bytes, deny_text: str = "") -> tuple[Mosquitto, Path]:
    assert not missing_tools(), f"{missing_tools()}: run scripts/setup.sh"
    assert token_plugin_library() is not None, "run scripts/setup.sh (builds the plugin)"
    directory.mkdir(parents=True)
    key_file, deny = directory / "token.key", directory / "deny"
    key_file.write_bytes(key_bytes)
    key_file.chmod(0o640)
    deny.write_text(deny_text)
    broker = Mosquitto(directory / "mosquitto", token_plugin=(key_file, deny))
    broker.setup()
    return broker, deny


@pytest.fixture
def tokens(tmp_path: Path) -> Iterator[TokenBroker]:
    key = secrets.token_bytes(bt.KEY_BYTES)
    broker, deny = start(tmp_path / "b", key)
    try:
        yield TokenBroker(broker, key, deny)
    finally:
        broker.stop()


def topics(did: str) -> dict[str, str]:
    return {name: f"{PREFIX}/d/{did}/{name}" for name in ("readings", "orders", "acks", "market")}


def test_the_vector_token_opens_the_broker(tmp_path: Path) -> None:
    broker, _ = start(tmp_path / "v", bytes.fromhex(VECTORS["key_hex"]))
    try:
        cases = {c["name"]: c for c in VECTORS["cases"]}
        device, person, expired = cases["device"], cases["person"], cases["expired"]
        with broker.account_peer(device["sub"], device["token"]) as peer:
            assert str(peer.connect()) == "Success"
            assert str(peer.publish(f"didgw/d/{device['sub']}/readings", b"r")) != "Not authorized"
        with broker.account_peer(person["sub"], person["token"]) as peer:
            assert str(peer.connect()) == "Success"
            assert str(peer.subscribe("site/didgw/status-list")) == "Granted QoS 1"
        with broker.account_peer(expired["sub"], expired["token"]) as peer:
            assert str(peer.connect()) == "Not authorized"
    finally:
        broker.stop()


def test_a_device_publishes_its_readings_and_receives_its_acks(tokens: TokenBroker) -> None:
    did = new_did()
    mine = topics(did)
    device, code = tokens.connect(did, tokens.token(did))
    gateway = tokens.broker.gateway()
    with device, gateway:
        assert code == "Success"
        assert str(gateway.connect()) == "Success"
        assert str(gateway.subscribe(f"{PREFIX}/d/+/readings")) == "Granted QoS 1"
        assert str(device.subscribe(mine["acks"])) == "Granted QoS 1"
        assert str(device.subscribe(mine["market"])) == "Granted QoS 1"
        assert str(device.publish(mine["readings"], b"reading")) == "Success"
        assert gateway.next_message() == (mine["readings"], b"reading")
        assert str(device.publish(mine["orders"], b"order")) != "Not authorized"
        gateway.publish(mine["acks"], b"ack")
        assert device.next_message() == (mine["acks"], b"ack")


def test_a_device_reaches_nothing_but_its_own_topics(tokens: TokenBroker) -> None:
    did, other = new_did(), new_did()
    mine, theirs = topics(did), topics(other)
    device, code = tokens.connect(did, tokens.token(did))
    gateway = tokens.broker.gateway()
    with device, gateway:
        assert code == "Success"
        assert str(gateway.connect()) == "Success"
        for topic in (theirs["readings"], theirs["orders"], mine["acks"], f"{PREFIX}/auth/req"):
            assert str(device.publish(topic, b"x")) == "Not authorized", topic
        for topic in ("#", f"{PREFIX}/#", theirs["acks"], mine["readings"], f"{PREFIX}/d/+/acks"):
            assert str(device.subscribe(topic)) == "Not authorized", topic
        assert str(device.subscribe(mine["acks"])) == "Granted QoS 1"
        # The gateway sends another device's ack, then a marker on this device's topic:
        # the device receives the marker and nothing before it.
        gateway.publish(theirs["acks"], b"not yours")
        gateway.publish(mine["acks"], b"marker")
        assert device.received_until(mine["acks"], b"marker") == []


def test_a_person_has_the_person_topics_only(tokens: TokenBroker) -> None:
    did = new_did()
    person, code = tokens.connect(did, tokens.token(did, kind="person"))
    with person:
        assert code == "Success"
        assert str(person.publish(f"{PREFIX}/p/{did}/req", b"q")) != "Not authorized"
        assert str(person.subscribe(f"{PREFIX}/p/{did}/res")) == "Granted QoS 1"
        assert str(person.subscribe(f"{PREFIX}/status-list")) == "Granted QoS 1"
        assert str(person.publish(f"{PREFIX}/d/{did}/readings", b"x")) == "Not authorized"
        assert str(person.subscribe(f"{PREFIX}/d/{did}/acks")) == "Not authorized"
        assert str(person.subscribe(f"{PREFIX}/p/+/res")) == "Not authorized"


def refused_passwords(tokens: TokenBroker, did: str) -> dict[str, str]:
    good = tokens.token(did)
    forged = bt.mint(
        secrets.token_bytes(bt.KEY_BYTES),
        sub=did,
        kind="device",
        prefix=PREFIX,
        now=int(time.time()),
        lifetime=600,
        random_bytes=bytes(16),
    )
    payload, tag = good.split(".")[1:]
    flipped = tag[:10] + ("A" if tag[10] != "A" else "B") + tag[11:]
    return {
        "bad tag": f"v2.{payload}.{flipped}",
        "another key": forged,
        "another DID": tokens.token(new_did()),
        "expired": tokens.token(did, now=int(time.time()) - 700),
        "truncated": good[:-5],
        "garbage": "garbage",
        "empty": "",
        "oversized": good + "A" * 4000,
        "v1": "v1." + good[3:],
    }


def test_bad_tokens_are_refused(tokens: TokenBroker) -> None:
    did = new_did()
    for why, password in refused_passwords(tokens, did).items():
        peer, code = tokens.connect(did, password)
        peer.close()
        assert code == "Not authorized", why
    peer, code = tokens.connect(did, tokens.token(did))
    peer.close()
    assert code == "Success"


def test_a_did_without_a_password_is_refused(tokens: TokenBroker) -> None:
    peer = Peer(tokens.broker.host, tokens.broker.accounts_port, new_did(), None)
    with peer:
        assert str(peer.connect()) == "Not authorized"


def test_the_gateway_and_anonymous_clients_still_go_through_dynamic_security(
    tokens: TokenBroker,
) -> None:
    gateway, anonymous = tokens.broker.gateway(), tokens.broker.peer()
    with gateway, anonymous:
        assert str(gateway.connect()) == "Success"
        assert str(anonymous.connect()) == "Success"
        assert str(anonymous.subscribe(f"{PREFIX}/auth/res/+")) == "Granted QoS 1"
        assert str(anonymous.subscribe(f"{PREFIX}/d/+/acks")) == "Not authorized"
        assert str(gateway.subscribe(f"{PREFIX}/auth/req")) == "Granted QoS 1"
        assert str(anonymous.publish(f"{PREFIX}/auth/req", b"hello")) != "Not authorized"
        assert gateway.next_message() == (f"{PREFIX}/auth/req", b"hello")
    wrong = tokens.broker.peer(tokens.broker.gateway_username, "wrong")
    with wrong:
        assert str(wrong.connect()) == "Not authorized"


def test_a_denied_did_is_disconnected_and_only_a_newer_token_lets_it_back(
    tokens: TokenBroker,
) -> None:
    """A deny line voids the DID's tokens issued at or before its second: the connection
    goes, those tokens are refused; one issued later (a resumed or re-keyed device's next
    session) passes."""
    did, bystander = new_did(), new_did()
    now = int(time.time())
    device, code = tokens.connect(did, tokens.token(did))
    other, other_code = tokens.connect(bystander, tokens.token(bystander))
    with device, other:
        assert (code, other_code) == ("Success", "Success")
        tokens.deny({did: now})
        assert device.disconnected.wait(5), "the denied device is still connected"
        for issued in (now - 100, now):
            again, code = tokens.connect(did, tokens.token(did, now=issued))
            again.close()
            assert code == "Not authorized", issued
        assert other.connected.is_set()
        assert str(other.publish(topics(bystander)["readings"], b"r")) != "Not authorized"
    back, code = tokens.connect(did, tokens.token(did, now=now + 1))
    back.close()
    assert code == "Success"


def test_a_token_that_expires_gets_the_client_disconnected(tokens: TokenBroker) -> None:
    did = new_did()
    device, code = tokens.connect(did, tokens.token(did, lifetime=2))
    with device:
        assert code == "Success"
        assert device.disconnected.wait(6), "the client outlived its token"


def test_the_deny_list_survives_a_restart(tokens: TokenBroker) -> None:
    did = new_did()
    tokens.deny({did: int(time.time()) + 5})
    tokens.broker.restart()
    peer, code = tokens.connect(did, tokens.token(did))
    peer.close()
    assert code == "Not authorized"


FLEET = 10_000


async def _each_publishes_once(
    broker: Mosquitto, creds: list[tuple[str, str]], links: dict[str, fleet.Connection]
) -> set[str]:
    """Connect every (did, token) not connected yet, 200 CONNECTs in flight, each publishes a
    reading (QoS 1, acknowledged); the DIDs whose reading the gateway's account received."""
    received: set[str] = set()

    def delivered(topic: str, _payload: bytes) -> None:
        received.add(topic.split("/")[2])

    gateway = await fleet.Connection.open(
        broker.host,
        broker.port,
        client_id=f"didgw-test-{secrets.token_hex(8)}",
        username=broker.gateway_username,
        password=broker.gateway_password.encode(),
        on_message=delivered,
    )
    await gateway.subscribe(f"{PREFIX}/d/+/readings")
    window = asyncio.Semaphore(200)

    async def one(did: str, token: str) -> None:
        async with window:
            if did not in links or links[did].closed.is_set():
                links[did] = await fleet.Connection.open(
                    broker.host,
                    broker.accounts_port,
                    client_id=f"didgw-{secrets.token_hex(8)}",  # the broker makes it the DID
                    username=did,
                    password=token.encode(),
                    timeout=30,
                )
            await links[did].publish(f"{PREFIX}/d/{did}/readings", b"{}")

    await asyncio.gather(*(one(did, token) for did, token in creds))
    async with asyncio.timeout(30):
        while len(received) < len(creds):
            await asyncio.sleep(0.05)
    await gateway.close()
    return received


def test_the_broker_restarts_with_10_000_devices_and_they_all_come_back(
    tmp_path: Path,
) -> None:
    """10,000 devices connected with their tokens; mosquitto restarts (every connection
    drops); each connects again with the token it has, no new handshake, and its reading
    gets through: sessions are tokens, and the broker keeps nothing of them to lose."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = FLEET + 1000  # this process's sockets; mosquitto inherits the same limit
    assert hard >= needed, f"raise the open-files limit (ulimit -Hn) to {needed}: it is {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    key = secrets.token_bytes(bt.KEY_BYTES)
    broker, deny = start(tmp_path / "b", key)
    tokens = TokenBroker(broker, key, deny)
    creds = [(did, tokens.token(did)) for did in (new_did() for _ in range(FLEET))]
    links: dict[str, fleet.Connection] = {}

    async def run() -> tuple[set[str], set[str], int]:
        before = await _each_publishes_once(broker, creds, links)
        broker.restart()
        async with asyncio.timeout(30):  # every connection is dropped with the broker
            await asyncio.gather(*(link.closed.wait() for link in links.values()))
        after = await _each_publishes_once(broker, creds, links)
        still = sum(not link.closed.is_set() for link in links.values())
        await asyncio.gather(*(link.close() for link in links.values()))
        return before, after, still

    try:
        before, after, still = asyncio.run(run())
    finally:
        broker.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    dids = {did for did, _ in creds}
    assert before == dids
    assert after == dids  # all 10,000 back, each with the token it had
    assert still == FLEET


def test_an_unreadable_deny_file_refuses_every_did(tokens: TokenBroker) -> None:
    did = new_did()
    device, code = tokens.connect(did, tokens.token(did))
    with device:
        assert code == "Success"
        tokens.deny_file.write_text("this is not a deny list\n")
        assert device.disconnected.wait(5), "a device stayed on with a broken deny file"
        peer, code = tokens.connect(did, tokens.token(did))
        peer.close()
        assert code == "Not authorized"
    tokens.deny({})

    def accepted() -> bool:
        peer, code = tokens.connect(did, tokens.token(did))
        peer.close()
        return code == "Success"

    wait_until(accepted, "a DID accepted again once the deny file is fixed")


def test_without_a_good_token_key_every_did_is_refused_until_the_key_comes(
    tmp_path: Path,
) -> None:
    """The broker may start before the gateway has written its key: it starts, refuses every
    DID (fail closed), and reads the key when it appears or is replaced."""
    key = secrets.token_bytes(bt.KEY_BYTES)
    broker, deny = start(tmp_path / "k", key[:31])  # one byte short: not a key
    try:
        tokens = TokenBroker(broker, key, deny)
        did = new_did()
        peer, code = tokens.connect(did, tokens.token(did))
        peer.close()
        assert code == "Not authorized"
        key_file = deny.with_name("token.key")
        new = key_file.with_suffix(".new")
        new.write_bytes(key)
        new.chmod(0o640)
        os.replace(new, key_file)

        def accepted() -> bool:
            peer, code = tokens.connect(did, tokens.token(did))
            peer.close()
            return code == "Success"

        wait_until(accepted, "the DID accepted once the key is there")
    finally:
        broker.stop()


def login_code(tokens: TokenBroker, did: str) -> str:
    """What the broker answers ``did`` logging in with a fresh token now."""
    peer, code = tokens.connect(did, tokens.token(did))
    peer.close()
    return code


def test_a_token_key_that_others_can_read_refuses_every_did(tokens: TokenBroker) -> None:
    """Anyone on the machine who can read the key can make tokens: the plugin will not use a
    key file that others may read, and it sees a chmod (not only a new file)."""
    did = new_did()
    assert login_code(tokens, did) == "Success"
    key_file = tokens.deny_file.with_name("token.key")
    key_file.chmod(0o644)
    wait_until(
        lambda: login_code(tokens, did) == "Not authorized",
        "a DID refused once the key file is readable by others",
    )
    key_file.chmod(0o640)
    wait_until(
        lambda: login_code(tokens, did) == "Success",
        "a DID accepted again once the key file is private",
    )


def test_a_configuration_reload_keeps_connected_devices_and_their_topics(
    tokens: TokenBroker,
) -> None:
    """SIGHUP (the broker certificate's renewal sends one) must not forget the sessions."""
    did = new_did()
    mine = topics(did)
    device, code = tokens.connect(did, tokens.token(did))
    with device:
        assert code == "Success"
        tokens.broker.reload()
        wait_until(lambda: "Reloading config" in tokens.broker.log(), "the broker's reload")
        assert str(device.publish(mine["readings"], b"after reload")) != "Not authorized"
        assert str(device.subscribe(mine["acks"])) == "Granted QoS 1"
        assert str(device.publish(topics(new_did())["readings"], b"x")) == "Not authorized"
    tokens.deny({did: int(time.time()) + 60})
    again, code = tokens.connect(did, tokens.token(did))
    again.close()
    assert code == "Not authorized"

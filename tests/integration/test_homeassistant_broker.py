"""Home Assistant discovery end to end: ``didgw homeassistant enable|disable``, the real
``didgw run`` publishing for a household with a P1 meter on a real pty, and the real broker
keeping each household's Home Assistant account to her own entities, read-only."""

from __future__ import annotations

import json
import queue
import re
import stat
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from broker import Mosquitto, Peer
from gateway_process import GatewayProcess
from meters import Meters, enroll
from paho.mqtt.enums import CallbackAPIVersion
from support import Run, wait_until

from gateway.auth import homeassistant_access as access
from gateway.auth.broker import POLICY_OK_ERRORS
from gateway.identity import keystore
from gateway.identity.signing import Signer

pytestmark = pytest.mark.integration

SCHEMA = json.loads(
    (
        Path(__file__).parents[1] / "vectors" / "homeassistant" / "device-discovery.schema.json"
    ).read_text()
)


def _household(didgw: Run, state: Path, name: str, tmp_path: Path) -> str:
    key = keystore.generate_key()
    did = Signer.for_did_key(key).did
    r = didgw(
        "device", "register", did, "--name", name, "--kind", "household", "--state-dir", str(state)
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return did


def _collect(peer: Peer, marker_topic: str, marker: bytes, gateway: Peer) -> dict[str, bytes]:
    """Everything ``peer`` got until the gateway's marker (which ``peer`` must receive)."""
    got: dict[str, bytes] = {}
    gateway.publish(marker_topic, marker)
    while True:
        topic, payload = peer.next_message(timeout=10)
        if (topic, payload) == (marker_topic, marker):
            return got
        got[topic] = payload


def test_households_home_assistant_reads_her_entities_only(
    didgw: Run, mosquitto: Mosquitto, meters: Meters, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    assert didgw("init", "--state-dir", str(state)).returncode == 0
    link = tmp_path / "ttyP1"
    enroll(didgw, state, tmp_path, "Lindenstr. 4", link)
    her = Signer.for_did_key(keystore.load_private_key(tmp_path / "Lindenstr. 4.pem", None)).did
    other = _household(didgw, state, "Lindenstr. 6", tmp_path)
    password_file = tmp_path / "gateway.password"
    password_file.write_text(mosquitto.gateway_password + "\n")
    password_file.chmod(0o600)
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[mqtt]\n" + mosquitto.gateway_settings() + f'password_file = "{password_file}"\n'
        "verify_workers = 0\n[meter]\nenabled = true\nrecord_every_seconds = 0.0\n"
        "[homeassistant]\nenabled = true\nstate_every_seconds = 1.0\npoll_seconds = 0.2\n"
    )
    common = ("--state-dir", str(state), "--config", str(config))
    her_file = tmp_path / "her.password"
    r = didgw("homeassistant", "enable", her, "--password-file", str(her_file), *common)
    assert r.returncode == 0, r.stderr
    her_password = her_file.read_text().strip()
    assert stat.S_IMODE(her_file.stat().st_mode) == 0o600
    assert her_password not in r.stdout + r.stderr
    r = didgw("homeassistant", "enable", other, *common)  # shown once, on standard output
    assert r.returncode == 0, r.stderr
    other_password = re.search(r"password:\s+(\S+)", r.stdout)[1]
    r = didgw("homeassistant", "enable", her, "--password-file", str(her_file), *common)
    assert r.returncode == 1 and "exists" in r.stderr  # never overwritten
    listed = didgw("homeassistant", "list", "--json", *common)
    assert {row["household"] for row in json.loads(listed.stdout)} == {her, other}

    her_node, other_node = access.node_id(her), access.node_id(other)
    prefix = mosquitto.prefix
    meters.start(link, "--rate", "10", "--speed", "30", "--seed", "4")
    gateway = GatewayProcess(state, mosquitto, config)
    gateway.start()
    peers: list[Peer] = []
    try:
        gw = mosquitto.gateway()
        peers.append(gw)
        assert not gw.connect().is_failure
        # Her Home Assistant, as it subscribes with discovery prefix <prefix>/ha/<node>.
        ha = mosquitto.account_peer(access.username(her_node), her_password)
        peers.append(ha)
        assert not ha.connect().is_failure
        ha_prefix = access.discovery_prefix(prefix, her_node)
        for topic in (f"{ha_prefix}/+/+/config", f"{ha_prefix}/+/+/+/config", f"{ha_prefix}/#"):
            assert not ha.subscribe(topic).is_failure, topic
        assert not ha.subscribe(access.status_topic(prefix)).is_failure
        seen: dict[str, bytes] = {}

        def her_state_has_a_reading() -> bool:
            while not ha.messages.empty():
                topic, payload = ha.messages.get_nowait()
                seen[topic] = payload
            state_payload = seen.get(access.state_topic(prefix, her_node))
            if not state_payload or access.status_topic(prefix) not in seen:
                return False
            return json.loads(state_payload)["grid_import_kwh"] is not None

        wait_until(her_state_has_a_reading, "her state with a reading", 20, lambda: gateway.output)
        discovery = json.loads(seen[access.discovery_topic(prefix, her_node)])
        jsonschema.validate(discovery, SCHEMA, cls=jsonschema.Draft202012Validator)
        assert discovery["device"]["name"] == "didgw Lindenstr. 4"
        assert seen[access.status_topic(prefix)] == b"online"
        assert all(her_node in t or t == access.status_topic(prefix) for t in seen)

        # She cannot write, not even her own topics; the gateway's state stays.
        assert ha.publish(access.state_topic(prefix, her_node), b'{"grid_import_kwh":0}').is_failure
        assert ha.publish(access.status_topic(prefix), b"offline").is_failure
        assert ha.subscribe("#").is_failure
        assert ha.subscribe("homeassistant/#").is_failure

        # The other household: her own entities, none of hers, whatever she asks for.
        nosy = mosquitto.account_peer(access.username(other_node), other_password)
        peers.append(nosy)
        assert not nosy.connect().is_failure
        assert nosy.subscribe("#").is_failure
        assert nosy.subscribe(f"{ha_prefix}/#").is_failure
        assert nosy.subscribe(f"{prefix}/ha/+/state").is_failure
        assert not nosy.subscribe(f"{access.discovery_prefix(prefix, other_node)}/#").is_failure
        assert not nosy.subscribe(access.status_topic(prefix)).is_failure
        got = _collect(nosy, f"{access.discovery_prefix(prefix, other_node)}/marker", b"1", gw)
        assert access.discovery_topic(prefix, other_node) in got  # her own device
        assert not [t for t in got if her_node in t]
        assert not [p for p in got.values() if her_node.encode() in p]

        # Anonymous clients get nothing of it, on either listener.
        anonymous = mosquitto.peer()
        peers.append(anonymous)
        assert not anonymous.connect().is_failure
        status = access.status_topic(prefix)
        for topic in ("#", f"{prefix}/ha/#", f"{ha_prefix}/+/+/config", status):
            assert anonymous.subscribe(topic).is_failure, topic
        assert Peer(mosquitto.host, mosquitto.accounts_port).connect().is_failure
        assert mosquitto.account_peer(access.username(her_node), "wrong" * 5).connect().is_failure

        # She opts out: her account is gone at once, her device removed from Home Assistant.
        r = didgw("homeassistant", "disable", her, *common)
        assert r.returncode == 0, r.stderr
        wait_until(ha.disconnected.is_set, "her Home Assistant disconnected", 10)
        assert mosquitto.account_peer(access.username(her_node), her_password).connect().is_failure
        watcher = mosquitto.gateway()
        peers.append(watcher)
        assert not watcher.connect().is_failure
        assert not watcher.subscribe(f"{ha_prefix}/#").is_failure
        left = _collect(watcher, f"{ha_prefix}/marker", b"1", gw)
        assert not {t: p for t, p in left.items() if p}, left  # nothing retained is left
        assert not gateway.output.count(her_password)
    finally:
        for peer in peers:
            peer.close()
        assert gateway.stop() == 0, gateway.output
    # Stopped: Home Assistant is told the gateway is offline (retained).
    late = mosquitto.account_peer(access.username(other_node), other_password)
    assert not late.connect().is_failure
    assert not late.subscribe(access.status_topic(prefix)).is_failure
    assert late.next_message(timeout=5) == (access.status_topic(prefix), b"offline")
    late.close()


def _ha_like_client(mosquitto: Mosquitto, username: str, password: str, client_id: str) -> Any:
    """A client connecting as Home Assistant's MQTT integration does by default: MQTT
    3.1.1, a will on ``homeassistant/status`` (which her account may not publish)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.username_pw_set(username, password)
    client.will_set("homeassistant/status", "offline", qos=0, retain=False)
    return client


def test_a_client_as_home_assistant_connects_with_a_didgw_client_id_only(
    mosquitto: Mosquitto,
) -> None:
    did = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    node, password = access.node_id(did), "p" * 32
    with mosquitto.admin() as admin:
        admin.execute(access.role_commands(mosquitto.prefix, node), ok_errors=POLICY_OK_ERRORS)
        admin.execute(access.client_commands(node, password))
    gw = mosquitto.gateway()
    assert not gw.connect().is_failure
    config_topic = access.discovery_topic(mosquitto.prefix, node)
    gw.client.publish(config_topic, b'{"retained": true}', qos=1, retain=True).wait_for_publish(5)
    gw.close()
    results: dict[str, Any] = {}
    for client_id in ("4Fz8Qk2mXvB7", "didgw-homeassistant"):  # random (HA's default), ours
        client = _ha_like_client(mosquitto, access.username(node), password, client_id)
        got: queue.Queue[Any] = queue.Queue()
        client.on_connect = lambda c, u, f, code, p, got=got: got.put(("connack", code))
        client.on_subscribe = lambda c, u, mid, codes, p, got=got: got.put(("suback", codes))
        client.on_message = lambda c, u, m, got=got: got.put(("message", m.topic))
        client.connect(mosquitto.host, mosquitto.accounts_port, keepalive=30)
        client.loop_start()
        try:
            kind, code = got.get(timeout=5)
            results[client_id] = code
            if code.is_failure:
                continue
            prefix = access.discovery_prefix(mosquitto.prefix, node)
            filters = [f"{prefix}/+/+/config", f"{prefix}/+/+/+/config", "homeassistant/+/+/config"]
            client.subscribe([(f, 0) for f in filters])
            kind, codes = got.get(timeout=5)
            assert kind == "suback"
            assert [c.is_failure for c in codes] == [False, False, True]
            assert got.get(timeout=5) == ("message", config_topic)  # her retained config
        finally:
            client.disconnect()
            client.loop_stop()
    assert results["4Fz8Qk2mXvB7"].is_failure  # the broker's client-id rule
    assert not results["didgw-homeassistant"].is_failure  # the denied will does not matter

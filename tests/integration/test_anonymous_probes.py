"""An anonymous prober cannot tell a registered DID from an unknown or a suspended one;
a real device still learns that it is unknown or suspended, and stops.

One ``didgw run`` serves MQTT (a real mosquitto) and CoAP (a free loopback UDP port). The
prober asks about three DIDs it does not hold the keys of: a registered device's, a
suspended device's, and one nobody registered. Over MQTT it sends a hello and then a
response signed with its own key; over CoAP a hello, a response and a reading signed the
same way; on the wallets' topic a hello for a person the gateway issued a credential to
and for a stranger. Every answer must be the same for all of them. The simulators
(``firmware-sim/device.py``, ``coap_sensor.py``) holding the keys of the unknown and the
suspended device are told ``unknown_device`` and ``not_active``, and give up.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import device as dev
import pytest
from aiocoap import POST, Context, Message
from broker import Mosquitto, Peer
from gateway_process import GatewayProcess, gateway_did, make_device, register
from support import Run, free_udp_port, sensor

from gateway.identity import Signer
from gateway.identity.cose import sign1
from gateway.identity.keystore import generate_key
from gateway.identity.signing import sign_jws

pytestmark = pytest.mark.integration


@dataclass
class Site:
    didgw: Run
    broker: Mosquitto
    gateway: GatewayProcess
    did: str
    coap: str
    tmp: Path

    def run(self, *args: str) -> None:
        result = self.didgw(*args, "--state-dir", str(self.gateway.state))
        assert result.returncode == 0, result.stderr


@pytest.fixture
def site(didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path) -> Site:
    port = free_udp_port()
    with gateway.config.open("a") as config:  # the [mqtt] table is last
        config.write(f"verify_workers = 0\n\n[coap]\nenabled = true\nport = {port}\n")
    gw = gateway_did(didgw, gateway.state)
    return Site(didgw, mosquitto, gateway, gw, f"coap://127.0.0.1:{port}", tmp_path)


def kid_of(did: str) -> str:
    return f"{did}#{did.removeprefix('did:key:')}"


def shape(message: dict[str, Any]) -> tuple[str, ...]:
    """What a message says beyond its values: its type, reason and member names."""
    return (str(message.get("type")), str(message.get("reason")), *sorted(message))


def probe_mqtt(peer: Peer, prefix: str, did: str, forger: Signer) -> list[tuple[str, ...]]:
    """A hello for ``did``, then a response signed by ``forger`` naming ``did``'s key."""
    reply = secrets.token_urlsafe(18)
    peer.subscribe(f"{prefix}/auth/res/{reply}")
    peer.publish(f"{prefix}/auth/req", json.dumps({"type": "hello", "did": did, "reply": reply}))
    _, raw = peer.next_message(timeout=10)
    answer = json.loads(raw)
    answers = [shape(answer)]
    if answer.get("type") == "challenge":
        body = {
            "type": "response",
            "nonce": answer["nonce"],
            "device": did,
            "gateway": answer["gateway"],
            "ts": int(time.time() * 1000),
            "epk": dev.b64u_encode(secrets.token_bytes(32)),
            "reply": reply,
        }
        forged = Signer(forger.private_key, kid_of(did))
        token = sign_jws(json.dumps(body).encode(), forged, headers={"typ": "didgw-auth+jws"})
        peer.publish(f"{prefix}/auth/req", token)
        _, raw = peer.next_message(timeout=10)
        answers.append(shape(json.loads(raw)))
    return answers


async def coap_post(uri: str, payload: bytes) -> tuple[str, Any]:
    """The response code and the payload (CBOR decoded when it is a 2.xx)."""
    context = await Context.create_client_context()
    try:
        response = await context.request(Message(code=POST, uri=uri, payload=payload)).response
    finally:
        await context.shutdown()
    body = cbor2.loads(response.payload) if response.code.is_successful() else response.payload
    return str(response.code), body


async def probe_coap(base: str, did: str, forger: Signer) -> list[Any]:
    """A hello, a forged response and a forged reading for ``did``, over CoAP."""
    code, challenge = await coap_post(f"{base}/auth", cbor2.dumps({"type": "hello", "did": did}))
    answers: list[Any] = [(code, sorted(challenge) if isinstance(challenge, dict) else challenge)]
    forged = Signer(forger.private_key, kid_of(did))
    now = int(time.time() * 1000)
    if isinstance(challenge, dict):
        body = {
            "type": "response",
            "nonce": challenge["nonce"],
            "device": did,
            "gateway": challenge["gateway"],
            "ts": now,
        }
        response = sign1(cbor2.dumps(body), forged, typ="didgw-auth+cose")
        answers.append(await coap_post(f"{base}/auth", response))
    values = {"energy": {"value": 1.5, "unit": "kWh"}}
    reading = {"did": did, "seq": 1, "ts": now, "type": "energy", "values": values}
    answers.append(
        await coap_post(f"{base}/r", sign1(cbor2.dumps(reading), forged, typ="didgw-reading+cose"))
    )
    return answers


def test_a_prober_cannot_tell_registered_unknown_and_suspended_apart(site: Site) -> None:
    registered = make_device(site.tmp, site.broker, "registered", site.did)
    suspended = make_device(site.tmp, site.broker, "suspended", site.did)
    unknown = make_device(site.tmp, site.broker, "unknown", site.did)
    for device in (registered, suspended):
        register(site.didgw, site.gateway.state, device.did, device.did[-6:])
    site.run("device", "suspend", suspended.did, "--reason", "battery swap")
    site.gateway.start()
    forger = Signer.for_did_key(generate_key())
    dids = {"registered": registered.did, "suspended": suspended.did, "unknown": unknown.did}

    with site.broker.peer() as peer:
        peer.connect()
        mqtt = {
            name: probe_mqtt(peer, site.broker.prefix, did, forger) for name, did in dids.items()
        }
    coap = {name: asyncio.run(probe_coap(site.coap, did, forger)) for name, did in dids.items()}

    assert mqtt["registered"] == [
        ("challenge", "None", "device", "expires", "gateway", "nonce", "type"),
        ("refused", "bad_signature", "reason", "type"),
    ]
    assert mqtt["unknown"] == mqtt["suspended"] == mqtt["registered"]
    assert coap["registered"] == [
        ("2.05 Content", ["device", "expires", "gateway", "nonce", "type"]),
        ("4.01 Unauthorized", b"bad_signature"),
        ("4.01 Unauthorized", b"bad_signature"),
    ]
    assert coap["unknown"] == coap["suspended"] == coap["registered"]


def test_a_device_that_proves_its_key_learns_it_is_unknown_or_suspended(site: Site) -> None:
    suspended = make_device(site.tmp, site.broker, "suspended", site.did)
    unknown = make_device(site.tmp, site.broker, "unknown", site.did)
    register(site.didgw, site.gateway.state, suspended.did, "suspended")
    site.run("device", "suspend", suspended.did, "--reason", "battery swap")
    coap_unknown, coap_suspended = site.tmp / "coap-unknown", site.tmp / "coap-suspended"
    coap_did = sensor("--print-did", state=coap_suspended).stdout.strip()
    register(site.didgw, site.gateway.state, coap_did, "coap")
    site.run("device", "suspend", coap_did, "--reason", "battery swap")
    site.gateway.start()

    with pytest.raises(dev.AuthRefused, match="unknown_device; register it first"):
        unknown.authenticate(timeout=10)
    with pytest.raises(dev.AuthRefused, match="not_active; the device is suspended"):
        suspended.authenticate(timeout=10)
    for state, reason in ((coap_unknown, "unknown_device"), (coap_suspended, "not_active")):
        result = sensor("--server", site.coap, "--quiet", state=state)
        assert result.returncode == 1
        assert f"refused 4.03 Forbidden {reason}" in result.stderr


def test_a_prober_cannot_tell_a_person_with_credentials_from_a_stranger(site: Site) -> None:
    import wallet as wal

    bob = wal.Wallet(
        f"{site.broker.host}:{site.broker.port}",
        key_path=site.tmp / "bob.pem",
        gateway_did=site.did,
        prefix=site.broker.prefix,
    )
    site.run("cred", "issue", "facility-manager", "--subject", bob.did, "--format", "sd-jwt")
    stranger = dev.did_from_public_key(secrets.token_bytes(32))
    site.gateway.start()
    answers = []
    with site.broker.peer() as peer:
        peer.connect()
        for did in (bob.did, stranger):
            reply = secrets.token_urlsafe(18)
            peer.subscribe(f"{site.broker.prefix}/auth/res/{reply}")
            hello = {"type": "hello", "did": did, "reply": reply}
            peer.publish(f"{site.broker.prefix}/auth/wallet", json.dumps(hello))
            answers.append(shape(json.loads(peer.next_message(timeout=10)[1])))
    assert answers[0] == answers[1] == (
        "challenge", "None", "device", "expires", "gateway", "nonce", "type"
    )  # fmt: skip

"""Devices over CoAP, against a peer nobody here wrote: libcoap's ``coap-client-notls``.

``didgw run`` serves CoAP on a free loopback port (MQTT off); the simulator
(``firmware-sim/coap_sensor.py``) authenticates and signs readings; libcoap's
client discovers the resources, posts garbage and posts the simulator's signed
reading from a file.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from coap_gateway import CoapGateway, write_config
from support import SENSOR, Run, free_udp_port, sensor

from gateway.chain.store import ChainStore
from gateway.db import connect
from gateway.identity import Signer
from gateway.identity.cose import sign1
from gateway.identity.keystore import load_private_key

pytestmark = pytest.mark.integration

COAP_CLIENT = "coap-client-notls"


@pytest.fixture
def gateway(didgw: Run, tmp_path: Path) -> Iterator[CoapGateway]:
    """Here the gateway serves CoAP (this overrides the MQTT one in conftest.py)."""
    assert shutil.which(COAP_CLIENT), f"{COAP_CLIENT} missing: run scripts/setup.sh"
    state = tmp_path / "state"
    assert didgw("init", "--state-dir", str(state)).returncode == 0
    port = free_udp_port()
    process = CoapGateway(state, write_config(tmp_path / "gateway.toml", port), port)
    process.start()
    yield process
    process.kill()


def coap_client(*args: str, payload: Path | None = None) -> str:
    """Run libcoap's client; its answer (payload, or code and diagnostic) as text."""
    command = [COAP_CLIENT, "-B", "10", *args]
    if payload is not None:
        command[1:1] = ["-f", str(payload)]
    result = subprocess.run(command, capture_output=True, timeout=30, check=False)
    return (result.stdout + result.stderr).decode("utf-8", errors="replace")


def register(didgw: Run, state: Path, did: str) -> None:
    result = didgw(
        "device", "register", did, "--name", "coap", "--kind", "sensor", "--state-dir", str(state)
    )
    assert result.returncode == 0, result.stderr


def readings(state: Path) -> list[Any]:
    store = ChainStore(connect(state / "didgw.db"))
    try:
        return [e for e in store.entries() if e.kind == "reading"]
    finally:
        store.close()


def registered_sensor(didgw: Run, gateway: CoapGateway, tmp_path: Path) -> Path:
    dev = tmp_path / "dev"
    did = sensor("--print-did", state=dev).stdout.strip()
    register(didgw, gateway.state, did)
    return dev


def registered_signer(didgw: Run, gateway: CoapGateway, tmp_path: Path) -> Signer:
    """A new device key, registered: for tests that sign what the simulator would not."""
    key = tmp_path / "k.pem"
    did = didgw("did", "new", "-o", str(key)).stdout.strip()
    register(didgw, gateway.state, did)
    return Signer.for_did_key(load_private_key(key, None))


def test_discovery_lists_the_auth_and_readings_resources(gateway: CoapGateway) -> None:
    links = coap_client("-m", "get", f"{gateway.uri}/.well-known/core")
    assert '</auth>;ct="60";rt="didgw.auth"' in links
    assert '</r>;ct="18";rt="didgw.readings"' in links
    non = coap_client("-N", "-m", "get", f"{gateway.uri}/.well-known/core")  # non-confirmable
    assert '</auth>;ct="60";rt="didgw.auth"' in non


def test_garbage_and_unsigned_readings_are_refused_with_their_codes(
    didgw: Run, gateway: CoapGateway, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\xff\x00 not cbor at all")
    assert "4.00 malformed" in coap_client("-m", "post", f"{gateway.uri}/r", payload=garbage)
    unsigned = tmp_path / "unsigned.cbor"  # the reading without its COSE envelope
    unsigned.write_bytes(cbor2.dumps({"did": "did:key:z6Mk", "seq": 1, "ts": 1, "values": {}}))
    assert "4.00 malformed" in coap_client("-m", "post", f"{gateway.uri}/r", payload=unsigned)
    assert "4.05" in coap_client("-m", "get", f"{gateway.uri}/r")
    hello = tmp_path / "hello.cbor"  # a DID nobody registered: challenged like any other
    hello.write_bytes(cbor2.dumps({"type": "hello", "did": "did:key:z6MkhaXgBZDvotDkL5257"}))
    assert "challenge" in coap_client("-m", "post", f"{gateway.uri}/auth", payload=hello)
    assert readings(gateway.state) == []


def test_a_simulator_reading_posted_by_libcoap_is_recorded_acked_and_not_replayed(
    didgw: Run, gateway: CoapGateway, tmp_path: Path
) -> None:
    dev = registered_sensor(didgw, gateway, tmp_path)
    file = tmp_path / "reading.cose"
    written = sensor("--server", gateway.uri, "--write-reading", str(file), state=dev)
    assert written.returncode == 0, written.stderr
    answer = subprocess.run(
        [COAP_CLIENT, "-B", "10", "-m", "post", "-t", "18", "-f", str(file), f"{gateway.uri}/r"],
        capture_output=True,
        timeout=30,
        check=True,
    )
    ack = cbor2.loads(answer.stdout)
    [entry] = readings(gateway.state)
    assert entry.payload == file.read_bytes()  # the device's signed bytes, as sent
    assert ack == {"seq": 1, "entry": entry.seq}
    assert "4.03 replay" in coap_client("-m", "post", f"{gateway.uri}/r", payload=file)
    assert "4.03 replay" in coap_client("-N", "-m", "post", f"{gateway.uri}/r", payload=file)
    assert len(readings(gateway.state)) == 1


def test_a_reading_without_a_session_is_unauthenticated(
    didgw: Run, gateway: CoapGateway, tmp_path: Path
) -> None:
    signer = registered_signer(didgw, gateway, tmp_path)
    file = tmp_path / "r.cose"
    file.write_bytes(signed_reading(signer, seq=1, values=1))
    assert "4.01 unauthenticated" in coap_client("-m", "post", f"{gateway.uri}/r", payload=file)
    assert readings(gateway.state) == []


def signed_reading(signer: Signer, *, seq: int, values: int, ts: int | None = None) -> bytes:
    body = {
        "did": signer.did,
        "seq": seq,
        "ts": int(time.time() * 1000) if ts is None else ts,
        "type": "energy",
        "values": {f"register.{i:02d}": {"value": i * 1.5, "unit": "kWh"} for i in range(values)},
    }
    return sign1(cbor2.dumps(body), signer, typ="didgw-reading+cose")


def test_block_wise_readings_are_reassembled_and_oversized_ones_refused(
    didgw: Run, gateway: CoapGateway, tmp_path: Path
) -> None:
    dev = registered_sensor(didgw, gateway, tmp_path)
    assert sensor("--server", gateway.uri, "--count", "1", state=dev).returncode == 0
    signer = Signer.for_did_key(load_private_key(dev / "key.pem", None))
    big = tmp_path / "big.cose"
    big.write_bytes(signed_reading(signer, seq=2, values=64))
    assert len(big.read_bytes()) > 1024  # more than one datagram's worth of payload
    ack = subprocess.run(
        [COAP_CLIENT, "-B", "10", "-b", "64", "-m", "post", "-f", str(big), f"{gateway.uri}/r"],
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert cbor2.loads(ack.stdout)["seq"] == 2
    assert readings(gateway.state)[-1].payload == big.read_bytes()
    huge = tmp_path / "huge.bin"
    huge.write_bytes(b"\x00" * 20_000)
    assert "4.13" in coap_client("-b", "1024", "-m", "post", f"{gateway.uri}/r", payload=huge)


def test_a_retransmitted_confirmable_request_is_recorded_once(
    didgw: Run, gateway: CoapGateway, tmp_path: Path
) -> None:
    from aiocoap import CON, POST, Message

    dev = registered_sensor(didgw, gateway, tmp_path)
    file = tmp_path / "reading.cose"
    assert sensor("--server", gateway.uri, "--write-reading", str(file), state=dev).returncode == 0
    request = Message(code=POST, payload=file.read_bytes(), uri_path=("r",))
    request.mtype, request.mid, request.token = CON, 4711, b"\x01\x02"
    datagram = request.encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        answers = []
        for _ in range(3):  # the original and two retransmissions (same message ID)
            sock.sendto(datagram, ("127.0.0.1", gateway.port))
            answers.append(sock.recv(2048))
    assert len(set(answers)) == 1  # the same stored response each time
    assert answers[0][1] == 0x44  # 2.04 Changed
    assert len(readings(gateway.state)) == 1


def post(uri: str, payload: bytes, tmp_path: Path) -> tuple[bool, bytes]:
    """POST with libcoap's client: (2.xx?, the answer's payload or the error it printed)."""
    body = tmp_path / "body.bin"
    body.write_bytes(payload)
    result = subprocess.run(
        [COAP_CLIENT, "-B", "10", "-m", "post", "-f", str(body), uri],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return (result.returncode == 0 and not result.stderr), result.stdout + result.stderr


def authenticate(uri: str, signer: Signer, ts: int, tmp_path: Path) -> tuple[bool, bytes]:
    """hello, challenge, a response signed with ``ts``: (granted?, the answer)."""
    ok, answer = post(uri, cbor2.dumps({"type": "hello", "did": signer.did}), tmp_path)
    assert ok, answer
    challenge = cbor2.loads(answer)
    body = {
        "type": "response",
        "nonce": challenge["nonce"],
        "device": signer.did,
        "gateway": challenge["gateway"],
        "ts": ts,
    }
    return post(uri, sign1(cbor2.dumps(body), signer, typ="didgw-auth+cose"), tmp_path)


def test_sighup_applies_a_new_clock_window_to_coap_authentication_and_readings(
    didgw: Run, gateway: CoapGateway, tmp_path: Path
) -> None:
    """A device 120 s ahead: refused under a 60 s window, accepted once SIGHUP widened it."""
    signer = registered_signer(didgw, gateway, tmp_path)
    gateway.stop()
    base = gateway.config.read_text()
    gateway.config.write_text(base + "[devices]\nclock_skew_seconds = 60\n")
    gateway.start()
    auth, readings_uri = f"{gateway.uri}/auth", f"{gateway.uri}/r"
    ahead = int(time.time() * 1000) + 120_000
    reading = signed_reading(signer, seq=1, values=1, ts=ahead)
    assert authenticate(auth, signer, int(time.time() * 1000), tmp_path)[0]  # a session
    assert b"4.03 clock_skew" in post(readings_uri, reading, tmp_path)[1]
    assert b"4.03 clock_skew" in authenticate(auth, signer, ahead, tmp_path)[1]

    gateway.config.write_text(base + "[devices]\nclock_skew_seconds = 300\n")
    gateway.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while not (granted := authenticate(auth, signer, ahead, tmp_path))[0]:
        assert b"4.03 clock_skew" in granted[1]
        assert time.monotonic() < deadline, "the new clock window was never applied"
        time.sleep(0.2)
    ok, ack = post(readings_uri, reading, tmp_path)
    assert ok and cbor2.loads(ack)["seq"] == 1
    assert gateway.stop() == 0
    assert "devices.clock_skew_seconds changed; applied" in gateway.output


def test_a_second_gateway_on_the_same_port_refuses_to_start(
    didgw: Run, gateway: CoapGateway, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    assert didgw("init", "--state-dir", str(other)).returncode == 0
    config = write_config(tmp_path / "other.toml", gateway.port)
    result = didgw("run", "--state-dir", str(other), "--config", str(config))
    assert result.returncode == 1
    assert "already in use" in result.stderr


def test_a_device_keeps_unacknowledged_readings_across_restarts(
    didgw: Run, gateway: CoapGateway, tmp_path: Path
) -> None:
    dev = registered_sensor(didgw, gateway, tmp_path)
    gateway.stop()
    down = subprocess.Popen(  # nobody answers: the reading waits in the device's queue
        [sys.executable, str(SENSOR), "--state", str(dev), "--server", gateway.uri],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        down.wait(timeout=5)
    except subprocess.TimeoutExpired:
        down.kill()  # the device loses power while retrying
        down.wait()
    gateway.start()
    result = sensor("--server", gateway.uri, "--count", "1", state=dev)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "seq 1: accepted" in result.stdout  # the queued one, sent again after the restart
    assert "seq 2: accepted" in result.stdout
    assert len(readings(gateway.state)) == 2


def test_ten_thousand_malformed_payloads_over_coap(didgw: Run, tmp_path: Path) -> None:
    """Part of the fault suite (tests/integration/test_faults.py has the MQTT half):
    10,000 hypothesis-generated payloads POSTed to the readings resource of a running
    gateway. Every one is answered with a refusal that names its reason, the gateway stays
    up, its memory stays flat, and nothing is recorded."""
    from aiocoap import CON, POST, Message
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    state = tmp_path / "state"
    assert didgw("init", "--state-dir", str(state)).returncode == 0
    port = free_udp_port()
    config = write_config(tmp_path / "gateway.toml", port, peer_rate=1000000, peer_burst=1000000)
    gateway = CoapGateway(state, config, port)
    gateway.start()
    payloads: list[bytes] = []
    shapes = st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.text(max_size=20)
            | st.binary(max_size=20),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
            max_leaves=10,
        ).map(cbor2.dumps),
        st.lists(st.binary(max_size=40), min_size=4, max_size=4).map(
            lambda parts: cbor2.dumps(cbor2.CBORTag(18, parts))  # COSE_Sign1-shaped
        ),
    )

    @settings(max_examples=10_000, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(shapes)
    def collect(payload: bytes) -> None:
        payloads.append(payload)

    collect()
    while len(payloads) < 10_000:
        payloads.extend(payloads[: 10_000 - len(payloads)])
    codes: dict[int, int] = {}
    reasons: set[bytes] = set()
    try:
        assert gateway.process is not None
        before = gateway.memory_kb()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(10)
            for i, payload in enumerate(payloads):
                request = Message(code=POST, payload=payload, uri_path=("r",))
                request.mtype, request.mid, request.token = CON, i % 65536, i.to_bytes(4, "big")
                sock.sendto(request.encode(), ("127.0.0.1", port))
                answer = Message.decode(sock.recv(4096))
                codes[int(answer.code)] = codes.get(int(answer.code), 0) + 1
                reasons.add(answer.payload)
        after = gateway.memory_kb()
        assert gateway.process.poll() is None
    finally:
        assert gateway.stop() == 0
    assert sum(codes.values()) == 10_000
    assert all(0x80 <= code < 0xA0 for code in codes), codes  # 4.xx: each one refused
    assert reasons <= {b"malformed", b"bad_signature", b"unknown_device", b"unauthenticated",
                       b"too_large"}, reasons  # fmt: skip
    assert after - before < 30_000, (before, after)
    assert readings(state) == []


def test_the_revocation_list_is_a_coap_resource(didgw: Run, gateway: CoapGateway) -> None:
    import json

    listing = coap_client("-m", "get", f"{gateway.uri}/.well-known/core")
    assert "</status-list>" in listing
    body = json.loads(coap_client("-m", "get", f"{gateway.uri}/status-list"))
    assert "BitstringStatusListCredential" in body["type"]
    assert (
        body["issuer"]
        == didgw("init", "--state-dir", str(gateway.state)).stdout.split("Gateway DID: ")[1].strip()
    )
    assert body["proof"]["cryptosuite"] == "eddsa-jcs-2022"

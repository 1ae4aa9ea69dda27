"""CoAP's sans-IO parts: COSE_Sign1, CBOR readings, the handshake over CoAP, limits,
and hypothesis fuzzing of every decoder that sees untrusted bytes."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import itertools
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth import ReadingChecker, ReadingRefused
from gateway.auth.coap_auth import AUTH_COSE_TYP, GRANT_COSE_TYP, CoapAuthenticator
from gateway.auth.handshake import Handshake
from gateway.auth.limits import PeerLimiter
from gateway.auth.readings import READING_COSE_TYP, READING_REASONS
from gateway.auth.strict import AuthRefused
from gateway.identity import offline_resolver
from gateway.identity.cose import CoseError, Sign1, sig_structure, sign1
from gateway.identity.keystore import generate_key
from gateway.identity.signing import Signer
from gateway.registry import Status
from gateway.run.coap_devices import CoapDevices, code_of
from gateway.transports.coap import CoapRequest

NOW = 1_700_000_000_000
_FUZZ_DEVICE = Signer.for_did_key(generate_key())
_FUZZ_GATEWAY = Signer.for_did_key(generate_key())
_FUZZ_DID = _FUZZ_DEVICE.did
VALUES = {"import_kwh": {"value": 1234.5, "unit": "kWh"}, "power_w": {"value": 812, "unit": "W"}}


def reading(signer: Signer, **change: Any) -> bytes:
    body = {"did": signer.did, "seq": 3, "ts": NOW, "type": "energy", "values": VALUES, **change}
    return sign1(cbor2.dumps(body), signer, typ=READING_COSE_TYP)


@pytest.fixture
def device() -> Signer:
    return Signer.for_did_key(generate_key())


def checker(device: Signer, status: Status | None = Status.ACTIVE) -> ReadingChecker:
    return ReadingChecker(offline_resolver(), lambda did: status if did == device.did else None)


# -- COSE_Sign1 -----------------------------------------------------------------


def test_a_cose_sign1_round_trips_and_its_signature_covers_the_sig_structure(
    device: Signer,
) -> None:
    data = sign1(b"hello", device, typ="t")
    assert data[0] == 0xD2  # tag 18
    parsed = Sign1.decode(data, "x")
    assert (parsed.payload, parsed.kid, parsed.typ) == (b"hello", device.kid, "t")
    assert parsed.to_be_signed() == cbor2.dumps(
        ["Signature1", parsed.protected_bytes, b"", b"hello"]
    )
    device.private_key.public_key().verify(
        parsed.signature, sig_structure(parsed.protected_bytes, b"hello")
    )


def _sign1_with(protected: dict[int, Any], unprotected: dict[int, Any] | None = None) -> bytes:
    return cbor2.dumps([cbor2.dumps(protected), unprotected or {}, b"p", b"s" * 64])


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "not valid CBOR"),
        (cbor2.dumps([1, 2, 3]), "array of four"),
        (cbor2.dumps(cbor2.CBORTag(98, [b"", {}, b"", b""])), "tag 98"),
        (_sign1_with({1: -7, 4: b"k", 16: "t"}), "alg -7 refused"),
        (_sign1_with({1: -8, 4: b"k", 16: "t", 2: [1]}), "critical"),
        (_sign1_with({1: -8, 16: "t"}), r"kid \(4\)"),
        (_sign1_with({1: -8, 4: b"k", 16: "t"}, {4: b"k"}), "both header buckets"),
        (_sign1_with({1: -8, 4: b"k"}), r"typ \(16\)"),
        (_sign1_with({1: -8, 4: b"k", 16: "t", 99: 1}), "not accepted"),
        (cbor2.dumps([cbor2.dumps({1: -8, 4: b"k", 16: "t"}), {}, None, b"s" * 64]), "detached"),
        (cbor2.dumps([cbor2.dumps({1: -8, 4: b"k", 16: "t"}), {}, b"p", b"short"]), "64-byte"),
        (_sign1_with({1: -8, 4: b"k", 16: "t"}) + b"\x00", "after its CBOR item"),
        (b"\x9f\x40\xa0\x40\x40\xff", "not valid CBOR"),  # indefinite-length array
    ],
)
def test_what_is_not_a_cose_sign1_of_our_form_is_refused_with_the_reason(
    data: bytes, why: str
) -> None:
    with pytest.raises(CoseError, match=why):
        Sign1.decode(data, "x")


# -- readings in COSE -------------------------------------------------------------


def test_a_cose_reading_is_checked_like_a_jws_one(device: Signer) -> None:
    data = reading(device)
    got = checker(device).check_cose(data, NOW, None)
    assert (got.did, got.seq, got.token) == (device.did, 3, data)
    assert got.values["power_w"].value == 812


def refusal(
    device: Signer, data: bytes, status: Status | None = Status.ACTIVE, last: int | None = None
) -> str:
    with pytest.raises(ReadingRefused) as caught:
        checker(device, status).check_cose(data, NOW, last)
    return caught.value.reason


def test_every_reason_a_cose_reading_is_refused(device: Signer) -> None:
    other = Signer.for_did_key(generate_key())
    assert refusal(device, b"\xa0") == "malformed"
    assert refusal(device, reading(device, extra=1)) == "malformed"
    assert refusal(device, reading(device, values={1: {"value": 1, "unit": "W"}})) == "malformed"
    body = cbor2.dumps({"did": device.did, "seq": 3, "ts": NOW, "type": "energy", "values": VALUES})
    assert refusal(device, sign1(body, device, typ="didgw-reading+jws")) == "malformed"
    assert refusal(device, reading(other, did=device.did)) == "bad_signature"
    forged = bytearray(reading(device))
    forged[-1] ^= 1
    assert refusal(device, bytes(forged)) == "bad_signature"
    assert refusal(device, reading(device), status=None) == "unknown_device"
    assert refusal(device, reading(device), status=Status.SUSPENDED) == "not_active"
    assert refusal(device, reading(device), last=3) == "replay"
    assert refusal(device, reading(device, ts=NOW + 3_600_000)) == "clock_skew"


# -- the handshake over CoAP -------------------------------------------------------


def authenticator(device: Signer, gateway: Signer, **timing: int) -> CoapAuthenticator:
    counter = itertools.count()
    core = Handshake(
        gateway,
        lambda did: Status.ACTIVE if did == device.did else None,
        random_bytes=lambda n: next(counter).to_bytes(n, "big"),
        **timing,
    )
    return CoapAuthenticator(core, offline_resolver())


def respond(device: Signer, challenge: dict[str, Any], **change: Any) -> bytes:
    body = {
        "type": "response",
        "nonce": challenge["nonce"],
        "device": device.did,
        "gateway": challenge["gateway"],
        "ts": NOW,
        **change,
    }
    return sign1(cbor2.dumps(body), device, typ=AUTH_COSE_TYP)


def test_a_device_authenticates_over_coap_and_gets_a_session(device: Signer) -> None:
    gateway = Signer.for_did_key(generate_key())
    auth = authenticator(device, gateway)
    hello = cbor2.dumps({"type": "hello", "did": device.did})
    challenge = cbor2.loads(auth.on_request(hello, NOW).payload)
    assert challenge["device"] == device.did and len(challenge["nonce"]) == 32
    answer = auth.on_request(respond(device, challenge), NOW)
    assert answer.session is not None and answer.session.did == device.did
    grant = Sign1.decode(answer.payload, "grant")
    assert grant.typ == GRANT_COSE_TYP and grant.kid == gateway.kid
    gateway.private_key.public_key().verify(grant.signature, grant.to_be_signed())
    body = cbor2.loads(grant.payload)
    assert body["nonce"] == challenge["nonce"] and body["expires"] == answer.session.expires_ms
    with pytest.raises(AuthRefused, match="bad_nonce"):  # the nonce is spent
        auth.on_request(respond(device, challenge), NOW)
    assert auth.core.outcomes == {"challenge": 1, "grant": 1, "bad_nonce": 1}


def test_a_forged_response_does_not_spend_the_nonce(device: Signer) -> None:
    gateway = Signer.for_did_key(generate_key())
    auth = authenticator(device, gateway)
    challenge = cbor2.loads(
        auth.on_request(cbor2.dumps({"type": "hello", "did": device.did}), NOW).payload
    )
    forged = bytearray(respond(device, challenge))
    forged[-1] ^= 1
    with pytest.raises(AuthRefused, match="bad_signature"):
        auth.on_request(bytes(forged), NOW)
    assert auth.on_request(respond(device, challenge), NOW).session is not None
    with pytest.raises(AuthRefused, match="clock_skew"):
        late = cbor2.loads(
            auth.on_request(cbor2.dumps({"type": "hello", "did": device.did}), NOW).payload
        )
        auth.on_request(respond(device, late, ts=NOW - 3_600_000), NOW)


def test_the_coap_handshake_takes_its_clock_window_and_session_from_its_core(
    device: Signer,
) -> None:
    auth = authenticator(device, Signer.for_did_key(generate_key()), clock_skew_ms=60_000)

    def response_at(ts: int) -> bytes:
        hello = cbor2.dumps({"type": "hello", "did": device.did})
        return respond(device, cbor2.loads(auth.on_request(hello, NOW).payload), ts=ts)

    with pytest.raises(AuthRefused, match="clock_skew"):
        auth.on_request(response_at(NOW + 120_000), NOW)
    auth.core.retime(session_ms=600_000, clock_skew_ms=300_000)
    session = auth.on_request(response_at(NOW + 120_000), NOW).session
    assert session is not None and session.expires_ms == NOW + 600_000


# -- the CoAP glue: codes, sessions, limits ------------------------------------------


def test_refusal_reasons_have_their_codes() -> None:
    assert code_of("malformed") == (4, 0)
    assert code_of("unauthenticated") == (4, 1)
    assert code_of("not_active") == (4, 3)
    assert code_of("too_large") == (4, 13)
    assert code_of("overloaded") == (5, 3)
    for reason in READING_REASONS:
        assert code_of(reason)[0] in (4, 5)


def test_the_peer_limiter_is_a_token_bucket_per_peer() -> None:
    limiter = PeerLimiter(rate=10, burst=3, max_peers=2)
    assert [limiter.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", 0.0)
    assert limiter.allow("a", 0.1)  # one token back after 1/10 s
    assert not limiter.allow("a", 0.1)


def test_a_peer_over_its_rate_gets_4_29_with_max_age(device: Signer) -> None:
    gateway = Signer.for_did_key(generate_key())
    devices = CoapDevices(
        authenticator=authenticator(device, gateway),
        checker=checker(device),
        pipeline=None,  # type: ignore[arg-type]
        peer_rate=1,
        peer_burst=1,
        monotonic=lambda: 0.0,
    )
    assert devices.admit("10.0.0.1") is None
    limited = devices.admit("10.0.0.1")
    assert limited is not None and limited.code == (4, 29) and limited.max_age == 2
    assert asyncio.run(devices.on_auth(CoapRequest("GET", b"", "p"))).code == (4, 5)


# -- fuzzing: no crash, every refusal typed ------------------------------------------

cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=70),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.integers(-20, 20) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


def _cose_like(
    draw_protected: Any, unprotected: Any, payload: Any, signature: Any, tagged: bool
) -> bytes:
    item = [cbor2.dumps(draw_protected), unprotected, payload, signature]
    return cbor2.dumps(cbor2.CBORTag(18, item) if tagged else item)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_are_refused_as_malformed_or_accepted(data: bytes) -> None:
    device = _FUZZ_DEVICE
    try:
        checker(device).check_cose(data, NOW, None)
    except ReadingRefused as exc:
        assert exc.reason in READING_REASONS
    with contextlib.suppress(CoseError):
        Sign1.decode(data, "x")


@FUZZ
@given(
    st.dictionaries(st.sampled_from([1, 2, 3, 4, 16, 7]), cbor_values, max_size=5),
    st.dictionaries(st.sampled_from([4, 5]), cbor_values, max_size=2),
    cbor_values,
    st.binary(min_size=0, max_size=70) | cbor_values,
    st.booleans(),
)
def test_fuzz_cose_shaped_input_is_refused_with_a_typed_reason(
    protected: Any, unprotected: Any, payload: Any, signature: Any, tagged: bool
) -> None:
    data = _cose_like(protected, unprotected, payload, signature, tagged)
    with pytest.raises(ReadingRefused) as caught:
        checker(_FUZZ_DEVICE).check_cose(data, NOW, None)
    assert caught.value.reason in ("malformed", "bad_signature", "unknown_device")


@FUZZ
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "did": st.just(_FUZZ_DID) | cbor_values,
            "seq": st.integers() | cbor_values,
            "ts": st.integers() | cbor_values,
            "type": st.just("energy") | cbor_values,
            "values": cbor_values,
        },
    )
)
def test_fuzz_signed_payloads_of_any_shape_are_refused_typed_or_accepted(
    body: dict[str, Any],
) -> None:
    data = sign1(cbor2.dumps(body), _FUZZ_DEVICE, typ=READING_COSE_TYP)
    try:
        checker(_FUZZ_DEVICE).check_cose(data, NOW, None)
    except ReadingRefused as exc:
        assert exc.reason in READING_REASONS


@FUZZ
@given(st.binary(max_size=200) | cbor_values.map(cbor2.dumps))
def test_fuzz_the_coap_auth_resource_refuses_typed(data: bytes) -> None:
    auth = authenticator(_FUZZ_DEVICE, _FUZZ_GATEWAY)
    try:
        auth.on_request(data, NOW)
    except AuthRefused as exc:
        assert exc.reason in ("malformed", "unknown_device", "bad_nonce", "bad_signature")


class _BusyPipeline:
    backlog = 5


def test_an_overloaded_gateway_answers_5_03_with_max_age(device: Signer) -> None:
    gateway = Signer.for_did_key(generate_key())
    devices = CoapDevices(
        authenticator=authenticator(device, gateway),
        checker=checker(device),
        pipeline=_BusyPipeline(),  # type: ignore[arg-type]
        max_in_flight=5,
        retry_after_seconds=7,
    )
    answer = asyncio.run(devices.on_reading(CoapRequest("POST", reading(device), "p")))
    assert (answer.code, answer.payload, answer.max_age) == ((5, 3), b"overloaded", 7)


# -- the CoAP sensor of firmware-sim and the gateway agree ----------------------------


@pytest.fixture
def coap_sensor() -> Any:
    import coap_sensor

    return coap_sensor


def test_the_coap_sensor_imports_nothing_from_the_gateway(coap_sensor: Any) -> None:
    tree = ast.parse(Path(coap_sensor.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] == "gateway"]


def test_what_the_sensor_signs_the_gateway_verifies_and_back(coap_sensor: Any) -> None:
    key = generate_key()
    identity = coap_sensor.Identity.from_key(key)
    data = coap_sensor.make_reading(identity, 5, NOW)
    device = Signer.for_did_key(key)
    assert checker(device).check_cose(data, NOW, None).seq == 5
    gateway = Signer.for_did_key(generate_key())
    grant = sign1(cbor2.dumps({"type": "grant"}), gateway, typ=GRANT_COSE_TYP)
    assert coap_sensor.open_cose_sign1(grant, GRANT_COSE_TYP, gateway.did) == {"type": "grant"}
    with pytest.raises(coap_sensor.DeviceError, match="not by"):
        coap_sensor.open_cose_sign1(grant, GRANT_COSE_TYP, device.did)

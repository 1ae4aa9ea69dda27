"""Signed readings: what is accepted, and every reason one is refused."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import pytest
from support import WebResolver

from gateway.auth import ClockWindow, Measurement, ReadingChecker, ReadingRefused
from gateway.auth.readings import READING_TYP
from gateway.identity import offline_resolver, sign_jws
from gateway.identity.did_key import ed25519_multikey
from gateway.identity.keystore import generate_key, public_bytes
from gateway.identity.signing import Signer
from gateway.registry import Status

NOW = 1_700_000_000_000
WEB_DID = "did:web:meter.example"
VALUES = {
    "import_kwh": {"value": 1234.567, "unit": "kWh"},
    "power_w": {"value": 812, "unit": "W"},
}
DROP = object()


def token(signer: Signer, *, typ: Any = READING_TYP, **change: Any) -> bytes:
    payload = {"did": signer.did, "seq": 17, "ts": NOW, "type": "energy", "values": VALUES}
    payload = {k: v for k, v in {**payload, **change}.items() if v is not DROP}
    return sign_raw(json.dumps(payload).encode(), signer, typ=typ)


def sign_raw(payload: bytes, signer: Signer, *, typ: Any = READING_TYP) -> bytes:
    headers = {} if typ is DROP else {"typ": typ}
    return sign_jws(payload, signer, headers=headers).encode()


def web_meter(relationships: list[str]) -> tuple[Signer, WebResolver]:
    signer = Signer(generate_key(), f"{WEB_DID}#key-1")
    method = {
        "id": signer.kid,
        "type": "Multikey",
        "controller": WEB_DID,
        "publicKeyMultibase": ed25519_multikey(public_bytes(signer.private_key)),
    }
    document = {
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": WEB_DID,
        "verificationMethod": [method],
        **{rel: [signer.kid] for rel in relationships},
    }
    return signer, WebResolver(document)


@dataclass
class World:
    checker: ReadingChecker
    registry: dict[str, Status]
    a: Signer
    b: Signer


def make_world(resolver: Any = None, **options: Any) -> World:
    a, b = Signer.for_did_key(generate_key()), Signer.for_did_key(generate_key())
    registry = {a.did: Status.ACTIVE, b.did: Status.ACTIVE, WEB_DID: Status.ACTIVE}
    checker = ReadingChecker(resolver or offline_resolver(), registry.get, **options)
    return World(checker, registry, a, b)


@pytest.fixture
def world() -> World:
    return make_world()


def refused(world: World, topic_did: str, data: bytes, last_seq: int | None = None) -> Any:
    with pytest.raises(ReadingRefused) as caught:
        world.checker.check(topic_did, data, NOW, last_seq)
    return caught.value


# -- accepted ----------------------------------------------------------------------------


@pytest.mark.parametrize("last_seq", [None, 1, 16])
def test_a_reading_is_accepted(world: World, last_seq: int | None) -> None:
    data = token(world.a)
    reading = world.checker.check(world.a.did, data, NOW, last_seq)
    assert (reading.did, reading.seq, reading.ts, reading.type) == (world.a.did, 17, NOW, "energy")
    assert reading.values == {
        "import_kwh": Measurement(1234.567, "kWh"),
        "power_w": Measurement(812, "W"),
    }
    assert reading.token is data  # the bytes as received, for the record


def test_the_readme_example_is_accepted(world: World) -> None:
    payload = (
        '{"did": "<did>", "seq": 17, "ts": 1700000000000, "type": "energy",\n'
        ' "values": {"import_kwh": {"value": 1234.567, "unit": "kWh"}, '
        '"power_w": {"value": 812, "unit": "W"}}}'
    ).replace("<did>", world.a.did)
    reading = world.checker.check(world.a.did, sign_raw(payload.encode(), world.a), NOW, None)
    assert reading.values["power_w"].value == 812


def test_sixty_four_values_and_odd_names_are_accepted(world: World) -> None:
    values = {f"1-0:{i}.8.0": {"value": -i * 0.5, "unit": "m³"} for i in range(64)}
    reading = world.checker.check(world.a.did, token(world.a, values=values), NOW, None)
    assert len(reading.values) == 64


@pytest.mark.parametrize("offset", [-300_000, 300_000])
def test_the_clock_window_is_inclusive(world: World, offset: int) -> None:
    # Exactly the clock skew (5 minutes) ahead or behind: accepted, its time as signed.
    reading = world.checker.check(world.a.did, token(world.a, ts=NOW + offset), NOW, None)
    assert (reading.did, reading.seq, reading.ts) == (world.a.did, 17, NOW + offset)


def test_a_did_web_device_signs_with_its_assertion_key() -> None:
    signer, resolver = web_meter(["assertionMethod"])
    world = make_world(resolver)
    assert world.checker.check(WEB_DID, token(signer), NOW, None).did == WEB_DID


# -- replay and clock --------------------------------------------------------------------


@pytest.mark.parametrize("last_seq", [17, 18, 1000])
def test_a_seq_not_above_the_last_one_is_a_replay(world: World, last_seq: int) -> None:
    error = refused(world, world.a.did, token(world.a), last_seq)
    assert (error.reason, error.seq) == ("replay", 17)


@pytest.mark.parametrize("offset", [300_001, -86_400_001, -NOW])
def test_a_time_outside_the_clock_window_is_refused(world: World, offset: int) -> None:
    # More than the clock skew ahead, or older than the maximum age (one day by default).
    error = refused(world, world.a.did, token(world.a, ts=NOW + offset))
    assert (error.reason, error.seq) == ("clock_skew", 17)


def test_a_new_clock_window_applies_to_the_next_reading(world: World) -> None:
    ahead, old = token(world.a, ts=NOW + 120_000), token(world.a, ts=NOW - 120_000)
    world.checker.window = ClockWindow(skew_ms=60_000, max_age_ms=60_000)
    assert refused(world, world.a.did, ahead).reason == "clock_skew"
    assert refused(world, world.a.did, old).reason == "clock_skew"
    world.checker.window = ClockWindow(skew_ms=300_000, max_age_ms=600_000)
    assert world.checker.check(world.a.did, ahead, NOW, None).ts == NOW + 120_000
    assert world.checker.check(world.a.did, old, NOW, None).ts == NOW - 120_000


def test_the_maximum_age_is_at_least_the_clock_skew() -> None:
    window = ClockWindow(skew_ms=300_000, max_age_ms=60_000)
    assert window.refusal(NOW - 300_000, NOW) is None
    assert window.refusal(NOW - 300_001, NOW) == "ts is 300001 ms old"
    with pytest.raises(ValueError, match="positive"):
        ClockWindow(skew_ms=0)


def test_a_reading_queued_during_an_outage_is_still_accepted(world: World) -> None:
    reading = world.checker.check(world.a.did, token(world.a, ts=NOW - 3_600_000), NOW, None)
    assert reading.ts == NOW - 3_600_000


def test_a_forgery_of_an_old_reading_is_a_bad_signature_not_a_replay(world: World) -> None:
    header, payload, signature = token(world.a).split(b".")
    raw = bytearray(base64.urlsafe_b64decode(signature + b"=="))
    raw[0] ^= 0x80
    forged = b".".join([header, payload, base64.urlsafe_b64encode(raw).rstrip(b"=")])
    error = refused(world, world.a.did, forged, last_seq=17)
    assert (error.reason, error.seq) == ("bad_signature", 17)


# -- who signed it ------------------------------------------------------------------------


def test_a_reading_signed_by_another_registered_device_is_refused(world: World) -> None:
    error = refused(world, world.a.did, token(world.b, did=world.a.did))
    assert (error.reason, error.seq) == ("bad_signature", 17)
    assert world.b.did in error.detail


def test_another_device_s_reading_on_this_topic_is_refused(world: World) -> None:
    error = refused(world, world.a.did, token(world.b))
    assert error.reason == "bad_signature"


def test_a_reading_on_another_device_s_topic_is_refused(world: World) -> None:
    error = refused(world, world.b.did, token(world.a))
    assert error.reason == "bad_signature"


def test_a_key_outside_assertion_method_is_refused() -> None:
    signer, resolver = web_meter(["authentication"])
    world = make_world(resolver)
    error = refused(world, WEB_DID, token(signer))
    assert error.reason == "bad_signature"
    assert "not authorised for assertionMethod" in error.detail


def test_a_document_that_cannot_be_fetched_now_is_unavailable() -> None:
    signer, resolver = web_meter(["assertionMethod"])
    resolver.down = True
    error = refused(make_world(resolver), WEB_DID, token(signer))
    assert (error.reason, error.seq) == ("unavailable", 17)


# -- the registry -------------------------------------------------------------------------


def test_an_unregistered_device_is_refused(world: World) -> None:
    stranger = Signer.for_did_key(generate_key())
    error = refused(world, stranger.did, token(stranger))
    assert (error.reason, error.seq) == ("unknown_device", 17)


@pytest.mark.parametrize("status", [Status.SUSPENDED, Status.REVOKED])
def test_an_inactive_device_is_refused(world: World, status: Status) -> None:
    world.registry[world.a.did] = status
    assert refused(world, world.a.did, token(world.a)).reason == "not_active"


@pytest.mark.parametrize("status", [None, Status.ACTIVE, Status.SUSPENDED])
def test_a_forged_reading_gets_the_same_answer_whatever_the_registration(
    world: World, status: Status | None
) -> None:
    """Over CoAP anyone can send a reading: what the registry says of a DID is told only to
    whoever signs for it."""
    target = Signer.for_did_key(generate_key())
    if status is not None:
        world.registry[target.did] = status
    forged = token(Signer(generate_key(), target.kid), did=target.did)
    assert refused(world, target.did, forged).reason == "bad_signature"


def test_an_unregistered_did_web_reading_is_refused_without_fetching() -> None:
    class NoNetwork:
        def resolve(self, did: str, *, now: float) -> Any:
            raise AssertionError(f"{did} was resolved")

    world = make_world(NoNetwork())
    signer = Signer(generate_key(), "did:web:elsewhere.example#key-1")
    error = refused(world, signer.did, token(signer))
    assert error.reason == "bad_signature" and "no document is fetched" in error.detail


# -- malformed ------------------------------------------------------------------------------

SIGNER = Signer.for_did_key(generate_key())
GOOD = token(SIGNER)
HEADER, BODY, SIGNATURE = GOOD.split(b".")


def value(**change: Any) -> dict[str, Any]:
    item = {k: v for k, v in {"value": 1.5, "unit": "W", **change}.items() if v is not DROP}
    return {"power_w": item}


def raw_payload(text: str) -> bytes:
    return sign_raw(text.replace("DID", SIGNER.did).encode(), SIGNER)


# (id, token, the seq the refusal carries)
GARBAGE: list[tuple[str, bytes, int | None]] = [
    ("empty", b"", None),
    ("garbage", b"\x00\x01 not a reading", None),
    ("bare JSON", json.dumps({"did": SIGNER.did, "seq": 17}).encode(), None),
    ("two parts", HEADER + b"." + BODY, None),
    ("four parts", GOOD + b"." + SIGNATURE, None),
    ("padded payload", HEADER + b"." + BODY + b"==." + SIGNATURE, None),
    ("standard base64", HEADER + b"." + BODY + b"+/." + SIGNATURE, None),
    ("short signature", HEADER + b"." + BODY + b"." + SIGNATURE[:40], None),
    ("not ascii", GOOD.replace(b".", "·".encode(), 1), None),
    ("too large", token(SIGNER, pad="x" * 16384), None),
    ("payload not JSON", sign_raw(b"seq=17", SIGNER), None),
    ("payload an array", sign_raw(b"[17]", SIGNER), None),
    ("payload NaN", raw_payload('{"did":"DID","seq":17,"ts":1,"type":"e","values":NaN}'), None),
    ("duplicate member", raw_payload('{"seq":17,"seq":18}'), None),
    ("deep nesting", sign_raw(b"[" * 4000 + b"]" * 4000, SIGNER), None),
    ("typ of auth", token(SIGNER, typ="didgw-auth+jws"), 17),
    ("no typ", token(SIGNER, typ=DROP), 17),
    ("no did", token(SIGNER, did=DROP), 17),
    ("did a number", token(SIGNER, did=7), 17),
    ("did not a DID", token(SIGNER, did="meter-7"), 17),
    ("extra member", token(SIGNER, unit="W"), 17),
    ("no seq", token(SIGNER, seq=DROP), None),
    ("seq 0", token(SIGNER, seq=0), None),
    ("seq negative", token(SIGNER, seq=-1), None),
    ("seq a string", token(SIGNER, seq="17"), None),
    ("seq a float", token(SIGNER, seq=17.0), None),
    ("seq a bool", token(SIGNER, seq=True), None),
    ("seq too large", token(SIGNER, seq=2**63), None),
    ("ts a string", token(SIGNER, ts=str(NOW)), 17),
    ("ts a float", token(SIGNER, ts=NOW + 0.5), 17),
    ("ts negative", token(SIGNER, ts=-1), 17),
    ("type capitalised", token(SIGNER, type="Energy"), 17),
    ("type empty", token(SIGNER, type=""), 17),
    ("type too long", token(SIGNER, type="e" * 33), 17),
    ("type two words", token(SIGNER, type="energy reading"), 17),
    ("type a number", token(SIGNER, type=5), 17),
    ("values empty", token(SIGNER, values={}), 17),
    ("values a list", token(SIGNER, values=[VALUES]), 17),
    ("values a string", token(SIGNER, values="812 W"), 17),
    ("65 values", token(SIGNER, values={f"v{i}": value()["power_w"] for i in range(65)}), 17),
    ("name empty", token(SIGNER, values={"": value()["power_w"]}), 17),
    ("name with slash", token(SIGNER, values={"a/b": value()["power_w"]}), 17),
    ("name with space", token(SIGNER, values={"power w": value()["power_w"]}), 17),
    ("name too long", token(SIGNER, values={"n" * 65: value()["power_w"]}), 17),
    ("measurement a number", token(SIGNER, values={"power_w": 812}), 17),
    ("value a string", token(SIGNER, values=value(value="812")), 17),
    ("value a bool", token(SIGNER, values=value(value=True)), 17),
    ("value null", token(SIGNER, values=value(value=None)), 17),
    ("value too large", token(SIGNER, values=value(value=2**63)), 17),
    (
        "value infinite",
        raw_payload(
            '{"did":"DID","seq":17,"ts":1,"type":"e","values":{"p":{"value":1e400,"unit":"W"}}}'
        ),
        17,
    ),
    ("value missing", token(SIGNER, values=value(value=DROP)), 17),
    ("unit missing", token(SIGNER, values=value(unit=DROP)), 17),
    ("unit empty", token(SIGNER, values=value(unit="")), 17),
    ("unit too long", token(SIGNER, values=value(unit="W" * 17)), 17),
    ("unit a number", token(SIGNER, values=value(unit=1)), 17),
    ("unit with newline", token(SIGNER, values=value(unit="W\n")), 17),
    ("measurement extra member", token(SIGNER, values=value(quality="good")), 17),
]


@pytest.mark.parametrize(
    ("data", "seq"), [(d, s) for _, d, s in GARBAGE], ids=[i for i, _, _ in GARBAGE]
)
def test_garbage_is_malformed(data: bytes, seq: int | None) -> None:
    world = make_world()
    world.registry[SIGNER.did] = Status.ACTIVE
    with pytest.raises(ReadingRefused) as caught:
        world.checker.check(SIGNER.did, data, NOW, None)
    assert (caught.value.reason, caught.value.seq) == ("malformed", seq)


def test_the_well_formed_base_of_the_garbage_is_accepted() -> None:
    """So each case above is refused for the one thing it changes."""
    world = make_world()
    world.registry[SIGNER.did] = Status.ACTIVE
    assert world.checker.check(SIGNER.did, GOOD, NOW, None).seq == 17


def test_the_size_limit_is_configurable(world: World) -> None:
    small = ReadingChecker(offline_resolver(), world.registry.get, max_bytes=200)
    data = token(world.a)
    assert len(data) > 200
    with pytest.raises(ReadingRefused, match="at most 200"):
        small.check(world.a.did, data, NOW, None)


def test_an_unknown_reason_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown refusal reason"):
        ReadingRefused("nope", None)

"""The DID challenge-response: a whole exchange as a device does it, and every refusal."""

from __future__ import annotations

import base64
import json
import random
import secrets
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from support import WebResolver

from gateway.auth import Authenticator, Grant, Handshake, Outgoing, open_secret
from gateway.auth.handshake import ASSUMED_RATE, MIN_RETRY_MS
from gateway.auth.mqtt_messages import (
    AUTH_TYP,
    Challenge,
    GrantPayload,
    Hello,
    Refusal,
    ResponsePayload,
)
from gateway.auth.strict import AuthRefused
from gateway.errors import ConfigError
from gateway.identity import offline_resolver, sign_jws, verify_jws
from gateway.identity.did_key import ed25519_multikey
from gateway.identity.keystore import generate_key, public_bytes
from gateway.identity.signing import Signer
from gateway.registry import Status

NOW = 1_700_000_000_000
GATEWAY = Signer.for_did_key(generate_key())
WEB_DID = "did:web:device.example"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Device:
    """What a device maker writes from docs/protocol/mqtt.md alone (plus the library's JWS
    signing)."""

    def __init__(self, signer: Signer | None = None) -> None:
        self.signer = signer or Signer.for_did_key(generate_key())
        self.did = self.signer.did
        self.x25519 = X25519PrivateKey.generate()
        self.reply = secrets.token_urlsafe(18)

    @property
    def epk(self) -> bytes:
        return self.x25519.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def hello(self) -> bytes:
        return Hello(self.did, self.reply).encode()

    def respond(
        self, challenge: Challenge, *, signer: Signer | None = None, **change: Any
    ) -> bytes:
        fields = {
            "nonce": challenge.nonce,
            "device": self.did,
            "gateway": challenge.gateway,
            "ts": NOW,
            "epk": self.epk,
            "reply": self.reply,
            **change,
        }
        payload = ResponsePayload(**fields).encode()
        return sign_jws(payload, signer or self.signer, headers={"typ": AUTH_TYP}).encode()


def web_document(signer: Signer, relationships: list[str]) -> dict[str, Any]:
    kid = f"{WEB_DID}#key-1"
    method = {
        "id": kid,
        "type": "Multikey",
        "controller": WEB_DID,
        "publicKeyMultibase": ed25519_multikey(public_bytes(signer.private_key)),
    }
    return {
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": WEB_DID,
        "verificationMethod": [method],
        **{rel: [kid] for rel in relationships},
    }


@dataclass
class World:
    auth: Authenticator
    registry: dict[str, Status]
    a: Device
    b: Device

    def challenge(self, device: Device, now: int = NOW) -> Challenge:
        out = self.auth.on_hello(device.hello(), now)
        assert out is not None
        assert out.topic == f"didgw/auth/res/{device.reply}"
        return Challenge.decode(out.payload)


def make_world(resolver: Any = None, **options: Any) -> World:
    a, b = Device(), Device()
    registry = {a.did: Status.ACTIVE, b.did: Status.ACTIVE}
    core = Handshake(GATEWAY, registry.get, random_bytes=random.Random(7).randbytes, **options)
    return World(Authenticator(core, resolver or offline_resolver()), registry, a, b)


@pytest.fixture
def world() -> World:
    return make_world()


def reason(out: Outgoing | None) -> str:
    assert out is not None
    return Refusal.decode(out.payload).reason


# -- the whole exchange ------------------------------------------------------------


def test_a_device_authenticates_and_reads_its_broker_password(world: World) -> None:
    device = world.a
    challenge = world.challenge(device)
    assert challenge.device == device.did
    assert challenge.gateway == GATEWAY.did
    assert challenge.expires == NOW + 30_000
    assert len(challenge.nonce) == 32

    out, grant = world.auth.on_response(device.respond(challenge), NOW + 1_000)

    assert out is not None and grant is not None
    assert out.topic == f"didgw/auth/res/{device.reply}" == grant.reply_topic
    assert grant.did == grant.username == device.did
    assert grant.expires_ms == NOW + 1_000 + 3_600_000
    assert grant.readings_topic == f"didgw/d/{device.did}/readings"
    assert grant.acks_topic == f"didgw/d/{device.did}/acks"
    assert len(base64.urlsafe_b64decode(grant.password + "=")) == 32
    # The device's side: check the gateway's signature, then decrypt the password.
    verified = verify_jws(
        out.payload, resolver=offline_resolver(), relationship="assertionMethod", now=NOW / 1000
    )
    assert verified.header["typ"] == "didgw-grant+jws"
    assert verified.header["kid"] == GATEWAY.kid
    assert verified.header["alg"] == "EdDSA"
    claims = GrantPayload.decode(verified.payload)
    assert json.loads(verified.payload)["type"] == "grant"
    assert (claims.device, claims.username, claims.expires) == (
        device.did,
        device.did,
        grant.expires_ms,
    )
    assert (claims.readings, claims.acks) == (grant.readings_topic, grant.acks_topic)
    password = open_secret(
        claims.secret,
        claims.iv,
        claims.epk,
        device_key=device.x25519,
        nonce=challenge.nonce,
        device_did=device.did,
    )
    assert password.decode() == grant.password
    assert world.auth.core.outcomes == {"challenge": 1, "grant": 1}
    assert world.auth.core.pending == 0
    assert world.auth.core.last_refusal is None


def test_the_password_never_shows_in_a_grant_s_repr(world: World) -> None:
    _, grant = world.auth.on_response(world.a.respond(world.challenge(world.a)), NOW)
    assert grant is not None
    assert grant.password not in repr(grant)


def test_on_request_tells_a_hello_from_a_response(world: World) -> None:
    out, grant = world.auth.on_request(world.a.hello(), NOW)
    assert out is not None and grant is None
    challenge = Challenge.decode(out.payload)
    out, grant = world.auth.on_request(world.a.respond(challenge), NOW)
    assert grant is not None


def test_the_topic_prefix_is_configurable() -> None:
    device = Device()
    core = Handshake(
        GATEWAY, {device.did: Status.ACTIVE}.get, random_bytes=random.Random(1).randbytes
    )
    auth = Authenticator(core, offline_resolver(), prefix="site/didgw")
    out = auth.on_hello(device.hello(), NOW)
    assert out is not None and out.topic == f"site/didgw/auth/res/{device.reply}"
    _, grant = auth.on_response(device.respond(Challenge.decode(out.payload)), NOW)
    assert grant is not None and grant.readings_topic == f"site/didgw/d/{device.did}/readings"


@pytest.mark.parametrize("prefix", ["", "$SYS", "a/+/b", "a/#", "a//b", "/a"])
def test_an_unusable_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigError):
        Authenticator(
            Handshake(GATEWAY, {}.get, random_bytes=random.randbytes),
            offline_resolver(),
            prefix=prefix,
        )


# -- the registry: told only to whoever signs for the DID ---------------------------


class NoNetwork:
    """A resolver that fails the test if it is asked anything."""

    def resolve(self, did: str, *, now: float) -> Any:
        raise AssertionError(f"{did} was resolved")


def test_every_did_gets_a_challenge_whatever_its_registration(world: World) -> None:
    world.registry[world.b.did] = Status.SUSPENDED
    stranger = Device()
    for device in (world.a, world.b, stranger):
        assert world.challenge(device).device == device.did
    assert world.auth.core.outcomes == {"challenge": 3}


@pytest.mark.parametrize(
    ("status", "told"),
    [(None, "unknown_device"), (Status.SUSPENDED, "not_active"), (Status.REVOKED, "not_active")],
)
def test_a_device_that_signs_its_response_learns_its_registration(
    world: World, status: Status | None, told: str
) -> None:
    device = Device()
    if status is not None:
        world.registry[device.did] = status
    challenge = world.challenge(device)
    out, grant = world.auth.on_response(device.respond(challenge), NOW)
    assert grant is None and reason(out) == told
    assert out is not None and out.topic == f"didgw/auth/res/{device.reply}"
    again, _ = world.auth.on_response(device.respond(challenge), NOW)
    assert reason(again) == "bad_nonce"  # its signature verified: the nonce is spent


@pytest.mark.parametrize("status", [None, Status.ACTIVE, Status.SUSPENDED, Status.REVOKED])
def test_a_forger_gets_the_same_answers_whatever_the_registration(
    world: World, status: Status | None
) -> None:
    target = Device()
    if status is not None:
        world.registry[target.did] = status
    forger = Signer(generate_key(), target.signer.kid)  # names the target's key
    challenge = world.challenge(target)
    out, grant = world.auth.on_response(target.respond(challenge, signer=forger), NOW)
    assert grant is None and reason(out) == "bad_signature"
    assert world.auth.core.pending == 1  # a forgery does not spend the nonce


@pytest.mark.parametrize("status", [Status.SUSPENDED, Status.REVOKED])
def test_a_device_suspended_or_revoked_after_its_challenge_gets_no_grant(
    world: World, status: Status
) -> None:
    challenge = world.challenge(world.a)
    world.registry[world.a.did] = status
    out, grant = world.auth.on_response(world.a.respond(challenge), NOW)
    assert grant is None and reason(out) == "not_active"


def test_an_unregistered_did_web_is_refused_without_fetching_its_document() -> None:
    world = make_world(resolver=NoNetwork())
    device = Device(Signer(generate_key(), f"{WEB_DID}#key-1"))
    challenge = world.challenge(device)
    out, grant = world.auth.on_response(device.respond(challenge), NOW)
    assert grant is None and reason(out) == "bad_signature"
    assert world.auth.core.last_refusal is not None
    assert "no document is fetched" in world.auth.core.last_refusal.detail


def test_a_response_to_another_device_s_nonce_is_refused(world: World) -> None:
    stranger = Device()
    challenge = world.challenge(world.a)
    out, grant = world.auth.on_response(stranger.respond(challenge), NOW)
    assert grant is None and reason(out) == "bad_nonce"
    assert out is not None and out.topic == f"didgw/auth/res/{stranger.reply}"


# -- signatures -------------------------------------------------------------------


def flip_signature(token: bytes) -> bytes:
    header, payload, signature = token.split(b".")
    raw = bytearray(base64.urlsafe_b64decode(signature + b"=="))
    raw[10] ^= 0x01
    return b".".join([header, payload, b64u(bytes(raw)).encode()])


def test_a_bad_signature_is_refused_and_does_not_spend_the_nonce(world: World) -> None:
    challenge = world.challenge(world.a)
    out, grant = world.auth.on_response(flip_signature(world.a.respond(challenge)), NOW)
    assert grant is None and reason(out) == "bad_signature"
    assert world.auth.core.last_refusal is not None
    assert "does not verify" in world.auth.core.last_refusal.detail
    # A forgery cannot cancel the device's authentication: the real response still works.
    _, grant = world.auth.on_response(world.a.respond(challenge), NOW)
    assert grant is not None


def test_a_signature_over_another_payload_is_refused(world: World) -> None:
    challenge = world.challenge(world.a)
    good = world.a.respond(challenge).split(b".")
    other = world.a.respond(challenge, ts=NOW + 1).split(b".")
    out, grant = world.auth.on_response(b".".join([good[0], other[1], good[2]]), NOW)
    assert grant is None and reason(out) == "bad_signature"


def test_another_registered_device_s_key_is_refused(world: World) -> None:
    challenge = world.challenge(world.a)
    forged = world.a.respond(challenge, signer=world.b.signer)  # says device A, signed by B
    out, grant = world.auth.on_response(forged, NOW)
    assert grant is None and reason(out) == "bad_signature"
    refusal = world.auth.core.last_refusal
    assert refusal is not None and world.b.did in refusal.detail
    _, grant = world.auth.on_response(world.a.respond(challenge), NOW)
    assert grant is not None


def test_a_key_outside_the_authentication_relationship_is_refused() -> None:
    web = Device(Signer(generate_key(), f"{WEB_DID}#key-1"))
    resolver = WebResolver(web_document(web.signer, ["assertionMethod"]))
    world = make_world(resolver)
    world.registry[WEB_DID] = Status.ACTIVE
    out, grant = world.auth.on_response(web.respond(world.challenge(web)), NOW)
    assert grant is None and reason(out) == "bad_signature"
    assert world.auth.core.last_refusal is not None
    assert "not authorised for authentication" in world.auth.core.last_refusal.detail


def test_a_did_web_device_authenticates_and_an_outage_is_unavailable_not_bad() -> None:
    web = Device(Signer(generate_key(), f"{WEB_DID}#key-1"))
    resolver = WebResolver(web_document(web.signer, ["authentication"]))
    world = make_world(resolver)
    world.registry[WEB_DID] = Status.ACTIVE
    challenge = world.challenge(web)
    resolver.down = True
    out, grant = world.auth.on_response(web.respond(challenge), NOW)
    assert grant is None and reason(out) == "unavailable"
    resolver.down = False  # the nonce was not spent: the device may send it again
    _, grant = world.auth.on_response(web.respond(challenge), NOW)
    assert grant is not None and grant.username == WEB_DID


# -- nonces -------------------------------------------------------------------------


def test_a_nonce_is_good_until_it_expires(world: World) -> None:
    challenge = world.challenge(world.a)
    _, grant = world.auth.on_response(world.a.respond(challenge), NOW + 29_999)
    assert grant is not None


def test_an_expired_nonce_is_refused(world: World) -> None:
    challenge = world.challenge(world.a)
    out, grant = world.auth.on_response(world.a.respond(challenge), NOW + 30_000)
    assert grant is None and reason(out) == "bad_nonce"
    assert world.auth.core.pending == 0
    out, _ = world.auth.on_response(world.a.respond(challenge), NOW + 30_000)
    assert reason(out) == "bad_nonce"


def test_a_nonce_is_single_use(world: World) -> None:
    challenge = world.challenge(world.a)
    response = world.a.respond(challenge)
    _, grant = world.auth.on_response(response, NOW)
    assert grant is not None
    out, grant = world.auth.on_response(response, NOW + 1)
    assert grant is None and reason(out) == "bad_nonce"
    out, grant = world.auth.on_response(world.a.respond(challenge, ts=NOW + 2), NOW + 2)
    assert grant is None and reason(out) == "bad_nonce"


def test_a_signed_response_that_is_refused_spends_the_nonce(world: World) -> None:
    challenge = world.challenge(world.a)
    out, _ = world.auth.on_response(world.a.respond(challenge, ts=NOW - 600_000), NOW)
    assert reason(out) == "clock_skew"
    out, grant = world.auth.on_response(world.a.respond(challenge), NOW)
    assert grant is None and reason(out) == "bad_nonce"


def test_an_unknown_nonce_is_refused(world: World) -> None:
    challenge = world.challenge(world.a)
    made_up = Challenge(bytes(32), challenge.gateway, challenge.device, challenge.expires)
    out, grant = world.auth.on_response(world.a.respond(made_up), NOW)
    assert grant is None and reason(out) == "bad_nonce"


def test_a_nonce_issued_to_another_device_is_refused(world: World) -> None:
    challenge = world.challenge(world.a)
    out, grant = world.auth.on_response(world.b.respond(challenge), NOW)  # B answers A's nonce
    assert grant is None and reason(out) == "bad_nonce"
    assert out is not None and out.topic == f"didgw/auth/res/{world.b.reply}"
    _, grant = world.auth.on_response(world.a.respond(challenge), NOW)
    assert grant is not None and grant.did == world.a.did


def test_a_response_for_another_gateway_is_refused(world: World) -> None:
    challenge = world.challenge(world.a)
    other_gateway = Signer.for_did_key(generate_key()).did
    out, grant = world.auth.on_response(world.a.respond(challenge, gateway=other_gateway), NOW)
    assert grant is None and reason(out) == "bad_nonce"


def test_a_response_with_another_reply_token_is_refused(world: World) -> None:
    challenge = world.challenge(world.a)
    other_reply = secrets.token_urlsafe(18)
    out, grant = world.auth.on_response(world.a.respond(challenge, reply=other_reply), NOW)
    assert grant is None and reason(out) == "bad_nonce"
    assert out is not None and out.topic == f"didgw/auth/res/{other_reply}"


def test_outstanding_nonces_per_device_are_capped(world: World) -> None:
    for _ in range(4):
        world.challenge(world.a)
    assert reason(world.auth.on_hello(world.a.hello(), NOW + 1)) == "rate_limited"
    world.challenge(world.b)  # other devices are not affected
    world.challenge(world.a, now=NOW + 30_000)  # once the old ones expired, it may ask again
    assert world.auth.core.outcomes == {"challenge": 6, "rate_limited": 1}


def test_a_full_pool_refuses_new_hellos_and_evicts_nothing() -> None:
    world = make_world(max_pending=2, max_pending_strangers=2)
    c = Device()
    world.registry[c.did] = Status.ACTIVE
    first, second = world.challenge(world.a), world.challenge(world.b)
    assert reason(world.auth.on_hello(c.hello(), NOW)) == "rate_limited"
    strangers = [Device() for _ in range(3)]
    world.challenge(strangers[0]), world.challenge(strangers[1])  # a pool of their own
    assert reason(world.auth.on_hello(strangers[2].hello(), NOW)) == "rate_limited"
    assert world.auth.core.pending == 4
    # nothing was evicted: both logins go through, and their places are free again
    assert world.auth.on_response(world.a.respond(first), NOW)[1] is not None
    assert world.auth.on_response(world.b.respond(second), NOW)[1] is not None
    world.challenge(c)
    world.challenge(strangers[2], now=NOW + 30_000)  # expired ones free places too


def retry_after(out: Outgoing | None) -> int | None:
    assert out is not None
    return Refusal.decode(out.payload).retry_after


def test_a_rate_limited_refusal_says_when_to_come_back() -> None:
    """A DID with all its challenges out waits their lifetime; a full pool gives places in a
    line, one grant's time apart (at the rate the gateway granted over the last second,
    measured from the first of those grants; the assumed rate before it can be measured),
    250 ms to 30 s away."""
    world = make_world(max_pending=4, max_pending_strangers=1)
    devices = [Device() for _ in range(8)]
    for d in devices:
        world.registry[d.did] = Status.ACTIVE
    for _ in range(4):
        world.challenge(world.a)
    assert retry_after(world.auth.on_hello(world.a.hello(), NOW)) == 30_000

    def full_world() -> tuple[World, list[Challenge]]:
        world = make_world(max_pending=4, max_pending_strangers=1)
        for d in devices:
            world.registry[d.did] = Status.ACTIVE
        return world, [world.challenge(d) for d in devices[:4]]

    def grant(world: World, out: list[Challenge], times: range) -> None:
        """Four grants at each of ``times`` (ms after NOW), the pool full again after each."""
        for t in times:
            for d, challenge in zip(devices[:4], out, strict=True):
                assert world.auth.on_response(d.respond(challenge), NOW + t)[1] is not None
            out[:] = [world.challenge(d, now=NOW + t) for d in devices[:4]]

    # no grant yet: each refusal (the same device may ask again) gets the next place, 1,000 /
    # ASSUMED_RATE ms after the one before; none nearer than 250 ms, none beyond 30 s
    world, _ = full_world()
    waits = [retry_after(world.auth.on_hello(devices[4].hello(), NOW)) for _ in range(20_000)]
    step = 1000 / ASSUMED_RATE
    assert waits[0] == MIN_RETRY_MS
    assert waits[999] == int(1000 * step)  # the thousandth place
    assert waits == sorted(waits)
    assert waits[-1] == 30_000 and waits.count(30_000) > 1000  # the line ends at the lifetime
    # a stranger's line is its own: its first place is near
    world.challenge(Device())
    assert retry_after(world.auth.on_hello(Device().hello(), NOW)) == MIN_RETRY_MS

    # grants faster than assumed (800 over the last second): places follow that rate
    world, out = full_world()
    grant(world, out, range(0, 1000, 5))
    waits = [retry_after(world.auth.on_hello(devices[4].hello(), NOW + 1000)) for _ in range(800)]
    assert waits[-1] == 1000  # 800 places at 800 grants/s
    # 1.5 s later those grants are history, and the line's end (NOW + 2,000) is past: the
    # line starts from now again, at the assumed rate
    waits = [retry_after(world.auth.on_hello(devices[4].hello(), NOW + 2500)) for _ in range(800)]
    assert waits[-1] == int(800 * step)

    # slower than assumed (a Pi: 100 over the last second): places follow that rate too, so
    # that refused devices do not come back before a place is free
    world, out = full_world()
    grant(world, out, range(0, 1000, 40))
    waits = [retry_after(world.auth.on_hello(devices[4].hello(), NOW + 1000)) for _ in range(100)]
    assert waits[49] == 500 and waits[-1] == 1000  # 10 ms apart: 100 places at 100 grants/s

    # a storm's first grants are counted over the moments they took: 40 in the first 100 ms
    # are 400 a second, not 40
    world, out = full_world()
    grant(world, out, range(0, 100, 10))
    assert world.auth.core.grant_rate(NOW + 100) == 400
    # and fewer than RATE_MIN_SAMPLES tell no rate
    world, out = full_world()
    grant(world, out, range(0, 12, 4))
    assert world.auth.core.grant_rate(NOW + 12) == ASSUMED_RATE


def test_a_refusal_with_and_without_retry_after_decodes_strictly() -> None:
    assert Refusal.decode(Refusal("rate_limited", 1500).encode()) == Refusal("rate_limited", 1500)
    assert Refusal.decode(b'{"type":"refused","reason":"malformed"}').retry_after is None
    for bad in (b'"x"', b"-1", b"1.5", b"3600001", b"true"):
        with pytest.raises(AuthRefused):
            Refusal.decode(b'{"type":"refused","reason":"rate_limited","retry_after":' + bad + b"}")
    with pytest.raises(AuthRefused):
        Refusal.decode(b'{"type":"refused","reason":"rate_limited","later":1}')


def test_whose_pool_a_hello_goes_in_can_be_decided_by_the_caller() -> None:
    """Wallets: the registry says nothing of people; those the gateway issued credentials
    to are known, a flood of fresh did:key hellos is not."""
    people = {Device() for _ in range(2)}
    core = Handshake(
        GATEWAY,
        lambda did: Status.ACTIVE,
        random_bytes=random.Random(7).randbytes,
        max_pending_strangers=1,
        known=lambda did: did in {p.did for p in people},
    )
    auth = Authenticator(core, offline_resolver())
    assert Challenge.decode(auth.on_hello(Device().hello(), NOW).payload)  # type: ignore[union-attr]
    assert reason(auth.on_hello(Device().hello(), NOW)) == "rate_limited"
    for person in people:
        assert Challenge.decode(auth.on_hello(person.hello(), NOW).payload)  # type: ignore[union-attr]


# -- the clock ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "granted"),
    [(-300_001, False), (300_001, False), (-300_000, True), (300_000, True), (0, True)],
)
def test_the_response_time_must_be_within_the_clock_window(
    world: World, offset: int, granted: bool
) -> None:
    challenge = world.challenge(world.a)
    out, grant = world.auth.on_response(world.a.respond(challenge, ts=NOW + offset), NOW)
    assert (grant is not None) is granted
    if not granted:
        assert reason(out) == "clock_skew"


def test_retime_applies_a_new_clock_window_and_session_to_the_next_response() -> None:
    world = make_world(clock_skew_ms=60_000, session_ms=3_600_000)
    late = world.challenge(world.a)  # issued before the change: answered after it
    out, grant = world.auth.on_response(
        world.a.respond(world.challenge(world.a), ts=NOW + 120_000), NOW
    )
    assert grant is None and reason(out) == "clock_skew"

    world.auth.core.retime(session_ms=600_000, clock_skew_ms=300_000)
    _, grant = world.auth.on_response(world.a.respond(late, ts=NOW + 120_000), NOW)
    assert grant is not None and grant.expires_ms == NOW + 600_000

    world.auth.core.retime(session_ms=600_000, clock_skew_ms=60_000)  # and back
    out, grant = world.auth.on_response(
        world.a.respond(world.challenge(world.a), ts=NOW - 120_000), NOW
    )
    assert grant is None and reason(out) == "clock_skew"


@pytest.mark.parametrize(("session_ms", "clock_skew_ms"), [(0, 1), (1, 0), (-5, 300_000)])
def test_retime_refuses_bounds_that_are_not_positive(session_ms: int, clock_skew_ms: int) -> None:
    world = make_world()
    with pytest.raises(ValueError, match="positive"):
        world.auth.core.retime(session_ms=session_ms, clock_skew_ms=clock_skew_ms)
    with pytest.raises(ValueError, match="positive"):
        make_world(session_ms=session_ms, clock_skew_ms=clock_skew_ms)


# -- the device's X25519 key -------------------------------------------------------------

LOW_ORDER = [
    bytes(32),
    b"\x01" + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


@pytest.mark.parametrize("point", LOW_ORDER, ids=[p.hex()[:8] for p in LOW_ORDER])
def test_a_low_order_epk_is_malformed(world: World, point: bytes) -> None:
    challenge = world.challenge(world.a)
    out, grant = world.auth.on_response(world.a.respond(challenge, epk=point), NOW)
    assert grant is None and reason(out) == "malformed"
    refusal = world.auth.core.last_refusal
    assert refusal is not None and "low-order" in refusal.detail


# -- malformed messages -------------------------------------------------------------------

REPLY = "abcdefghijklmnop"
SIGNER = Signer.for_did_key(generate_key())
HELLO = {"type": "hello", "did": SIGNER.did, "reply": REPLY}
DROP = object()


def hello_with(**change: Any) -> bytes:
    obj = {k: v for k, v in {**HELLO, **change}.items() if v is not DROP}
    return json.dumps(obj).encode()


# (id, payload, whether the refusal can be answered: the reply token is readable)
MALFORMED_HELLOS: list[tuple[str, bytes, bool]] = [
    ("empty", b"", False),
    ("not json", b"hello gateway", False),
    ("array", b"[]", False),
    ("string", b'"hello"', False),
    ("empty object", b"{}", False),
    ("no type", hello_with(type=DROP), True),
    ("type null", hello_with(type=None), True),
    ("unknown type", hello_with(type="goodbye"), True),
    ("response type", hello_with(type="response"), True),
    ("extra member", hello_with(firmware="1.2"), True),
    ("no did", hello_with(did=DROP), True),
    ("did not a string", hello_with(did=42), True),
    ("did not a DID", hello_with(did="sensor-7"), True),
    ("did with slash", hello_with(did="did:web:example.com/x"), True),
    ("did with wildcard", hello_with(did="did:web:example.com+#"), True),
    ("did too long", hello_with(did="did:web:" + "a" * 600), True),
    ("no reply", hello_with(reply=DROP), False),
    ("reply too short", hello_with(reply="a" * 15), False),
    ("reply too long", hello_with(reply="a" * 65), False),
    ("reply with slash", hello_with(reply="abcdefgh/ijklmnop"), False),
    ("reply with wildcard", hello_with(reply="abcdefghijklmnop#"), False),
    ("reply not ascii", hello_with(reply="abcdefghijklmnopé"), False),
    ("reply a number", hello_with(reply=1234567890123456), False),
    ("duplicate member", hello_with()[:-1] + b', "did": "did:key:z6Mk"}', False),
    ("NaN", hello_with()[:-1] + b', "x": NaN}', False),
    ("bad utf-8", hello_with(did="did:key:\udcff").replace(b"\\udcff", b"\xff"), False),
    ("BOM", b"\xef\xbb\xbf" + hello_with(), False),
    ("huge", hello_with() + b" " * 8192, False),
    ("huge member", hello_with(did="did:web:" + "a" * 9000), False),
    ("deep nesting", b"[" * 4000 + b"]" * 4000, False),
    ("deep object", b'{"a":' * 1300 + b"1" + b"}" * 1300, False),
]


@pytest.mark.parametrize(
    ("payload", "answered"),
    [(p, a) for _, p, a in MALFORMED_HELLOS],
    ids=[i for i, _, _ in MALFORMED_HELLOS],
)
def test_a_malformed_hello_is_refused(world: World, payload: bytes, answered: bool) -> None:
    out = world.auth.on_hello(payload, NOW)
    if answered:
        assert out is not None and out.topic == f"didgw/auth/res/{REPLY}"
        assert reason(out) == "malformed"
    else:
        assert out is None
    assert world.auth.core.outcomes == {"malformed": 1}
    refusal = world.auth.core.last_refusal
    assert refusal is not None and refusal.reason == "malformed"
    assert world.auth.core.pending == 0


EPK = X25519PrivateKey.from_private_bytes(bytes(range(32))).public_key().public_bytes_raw()
RESPONSE = {
    "type": "response",
    "nonce": b64u(bytes(range(32))),
    "device": SIGNER.did,
    "gateway": GATEWAY.did,
    "ts": NOW,
    "epk": b64u(EPK),
    "reply": REPLY,
}


def signed(payload: bytes, typ: Any = AUTH_TYP) -> bytes:
    headers = {} if typ is DROP else {"typ": typ}
    return sign_jws(payload, SIGNER, headers=headers).encode()


def response_with(typ: Any = AUTH_TYP, **change: Any) -> bytes:
    obj = {k: v for k, v in {**RESPONSE, **change}.items() if v is not DROP}
    return signed(json.dumps(obj).encode(), typ)


def segments(token: bytes) -> list[bytes]:
    return token.split(b".")


GOOD = response_with()
HEADER, BODY, SIGNATURE = segments(GOOD)

MALFORMED_RESPONSES: list[tuple[str, bytes, bool]] = [
    ("empty", b"", False),
    ("garbage", b"this is not a JWS", False),
    ("two parts", HEADER + b"." + BODY, False),
    ("four parts", GOOD + b".AAAA", False),
    ("empty signature", HEADER + b"." + BODY + b".", False),
    ("padded header", HEADER + b"==." + BODY + b"." + SIGNATURE, False),
    ("standard base64", GOOD.replace(b"-", b"+").replace(b"_", b"/") + b"+/", False),
    ("header not json", b64u(b"nope").encode() + b"." + BODY + b"." + SIGNATURE, False),
    ("header an array", b64u(b"[]").encode() + b"." + BODY + b"." + SIGNATURE, False),
    ("short signature", HEADER + b"." + BODY + b"." + b64u(bytes(32)).encode(), False),
    ("not ascii", GOOD + "é".encode(), False),
    ("huge", GOOD + b"A" * 8192, False),
    ("huge payload", signed(json.dumps({**RESPONSE, "pad": "x" * 9000}).encode()), False),
    ("payload not json", signed(b"response"), False),
    ("payload an array", signed(b"[1, 2]"), False),
    ("no reply", response_with(reply=DROP), False),
    ("bad reply", response_with(reply="short"), False),
    ("hello in a JWS", response_with(type="hello"), True),
    ("unknown type", response_with(type="grant"), True),
    ("no typ", response_with(typ=DROP), True),
    ("typ JWT", response_with(typ="JWT"), True),
    ("typ of a reading", response_with(typ="didgw-reading+jws"), True),
    ("extra member", response_with(firmware="1.2"), True),
    ("no epk", response_with(epk=DROP), True),
    ("nonce not base64url", response_with(nonce="!!!!"), True),
    ("nonce padded", response_with(nonce=RESPONSE["nonce"] + "="), True),
    ("nonce 31 bytes", response_with(nonce=b64u(bytes(31))), True),
    ("nonce 33 bytes", response_with(nonce=b64u(bytes(33))), True),
    ("nonce a number", response_with(nonce=7), True),
    ("epk 31 bytes", response_with(epk=b64u(EPK[:31])), True),
    ("epk 33 bytes", response_with(epk=b64u(EPK + b"\x00")), True),
    ("epk standard base64", response_with(epk=base64.b64encode(b"\xfb" * 32).decode()), True),
    ("epk non-canonical", response_with(epk=RESPONSE["epk"][:-1] + "x"), True),
    ("epk impossible length", response_with(epk="A" * 41), True),
    ("ts a string", response_with(ts=str(NOW)), True),
    ("ts a float", response_with(ts=NOW + 0.5), True),
    ("ts a bool", response_with(ts=True), True),
    ("ts negative", response_with(ts=-1), True),
    ("ts too large", response_with(ts=2**63), True),
    ("device not a DID", response_with(device="sensor-7"), True),
    ("device a list", response_with(device=[SIGNER.did]), True),
    ("gateway missing", response_with(gateway=DROP), True),
]


@pytest.mark.parametrize(
    ("payload", "answered"),
    [(p, a) for _, p, a in MALFORMED_RESPONSES],
    ids=[i for i, _, _ in MALFORMED_RESPONSES],
)
def test_a_malformed_response_is_refused(world: World, payload: bytes, answered: bool) -> None:
    world.registry[SIGNER.did] = Status.ACTIVE
    out, grant = world.auth.on_response(payload, NOW)
    assert grant is None
    if answered:
        assert out is not None and out.topic == f"didgw/auth/res/{REPLY}"
        assert reason(out) == "malformed"
    else:
        assert out is None
    assert world.auth.core.outcomes == {"malformed": 1}


def test_the_well_formed_base_of_the_malformed_cases_gets_past_parsing(world: World) -> None:
    """So each case above is refused for the one thing it changes."""
    world.registry[SIGNER.did] = Status.ACTIVE
    out, _ = world.auth.on_response(GOOD, NOW)
    assert reason(out) == "bad_nonce"
    out = world.auth.on_hello(hello_with(), NOW)
    assert out is not None and Challenge.decode(out.payload).device == SIGNER.did


# -- counting and the broker ----------------------------------------------------------------


def test_outcomes_are_counted_by_reason(world: World) -> None:
    world.auth.on_hello(b"{}", NOW)
    stranger = Device()
    world.auth.on_response(stranger.respond(world.challenge(stranger)), NOW)
    challenge = world.challenge(world.a)
    world.auth.on_response(flip_signature(world.a.respond(challenge)), NOW)
    world.auth.on_response(world.a.respond(challenge), NOW)
    assert world.auth.core.outcomes == {
        "malformed": 1,
        "unknown_device": 1,
        "challenge": 2,
        "bad_signature": 1,
        "grant": 1,
    }


def test_a_grant_the_broker_could_not_honour_becomes_unavailable(world: World) -> None:
    _, grant = world.auth.on_response(world.a.respond(world.challenge(world.a)), NOW)
    assert isinstance(grant, Grant)
    out = world.auth.refuse_unavailable(grant)
    assert out.topic == grant.reply_topic and reason(out) == "unavailable"
    assert world.auth.core.outcomes["unavailable"] == 1


def test_a_repeated_nonce_from_broken_randomness_is_an_error() -> None:
    device = Device()
    core = Handshake(GATEWAY, {device.did: Status.ACTIVE}.get, random_bytes=bytes)
    auth = Authenticator(core, offline_resolver())
    auth.on_hello(device.hello(), NOW)
    with pytest.raises(ValueError, match="repeated nonce"):
        auth.on_hello(device.hello(), NOW)

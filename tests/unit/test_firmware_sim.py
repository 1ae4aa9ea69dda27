"""The sensor simulator (firmware-sim/device.py) without a broker.

The simulator shares no code with the gateway; these tests load it by path (its directory
name has a hyphen) and, where it helps, check it against the gateway's own identity code and
the standards' vectors: what the device signs must verify in the gateway, and what the
gateway signs must verify in the device.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import device as dev
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from support import load_vectors

from gateway.identity import Signer, offline_resolver, sign_jws, verify_jws
from gateway.identity import did_from_public_key as gateway_did_from_public_key
from gateway.identity.keystore import write_private_key

NOW = 1_700_000_000.0


VALID = load_vectors("did-key/ed25519.json")["vectors"]
INVALID = load_vectors("did-key/invalid.json")["vectors"]


def b64u(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def split_jws(token: str) -> tuple[dict, dict, bytes]:
    import base64

    def unb64(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    header, payload, signature = token.split(".")
    return json.loads(unb64(header)), json.loads(unb64(payload)), unb64(signature)


def raw_jws(header: dict, payload: dict, key: Ed25519PrivateKey) -> str:
    """A compact JWS built by hand (for headers a JOSE library will not produce)."""
    signing_input = f"{b64u(json.dumps(header).encode())}.{b64u(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64u(key.sign(signing_input.encode()))}"


# --------------------------------------------------------------------------- did:key


@pytest.mark.parametrize("vector", VALID, ids=[v["name"] for v in VALID])
def test_did_key_matches_the_spec_vectors(vector: dict) -> None:
    public = bytes.fromhex(vector["public_key_hex"])
    assert dev.did_from_public_key(public) == vector["did"]
    assert dev.public_key_from_did(vector["did"]) == public
    kid = dev.kid_for(vector["did"])
    assert kid == f"{vector['did']}#{vector['did'].removeprefix('did:key:')}"
    assert dev.public_key_from_did(kid) == public


@pytest.mark.parametrize("vector", [v for v in VALID if "seed_hex" in v], ids=lambda v: v["name"])
def test_identity_from_a_seed_is_the_vectors_did(vector: dict) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["seed_hex"]))
    identity = dev.Identity.from_key(key)
    assert identity.did == vector["did"]
    assert identity.kid == dev.kid_for(vector["did"])


def test_seed_zero_is_z6MkiTBz() -> None:
    identity = dev.Identity.from_key(Ed25519PrivateKey.from_private_bytes(bytes(32)))
    assert identity.did == "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
    assert dev.public_key_from_did(identity.did).hex() == (
        "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
    )


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_did_keys_are_refused(vector: dict) -> None:
    with pytest.raises(dev.DeviceError):
        dev.public_key_from_did(vector.get("did") or vector["did_url"])


@pytest.mark.parametrize(
    "did",
    [
        # an X25519 did:key (multicodec 0xec): right encoding, wrong key type
        "did:key:z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW",
        # a DID URL whose fragment names another key
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp#z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
        "did:web:example.com",
        "did:key:",
    ],
)
def test_other_keys_and_methods_are_refused(did: str) -> None:
    with pytest.raises(dev.DeviceError):
        dev.public_key_from_did(did)


def test_b64u_is_strict() -> None:
    assert dev.b64u_decode(dev.b64u_encode(b"\xfb\xff")) == b"\xfb\xff"
    for bad in ("+/8", "-_8=", "a b", "abcde", 42, None):
        with pytest.raises(dev.DeviceError):
            dev.b64u_decode(bad)


# --------------------------------------------------------------------------- keys


def test_a_new_key_file_is_pkcs8_pem_mode_0600_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "dev.pem"
    key = dev.load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = dev.load_or_create_key(path)
    assert dev.Identity.from_key(again).did == dev.Identity.from_key(key).did


def test_a_key_written_by_didgw_loads_with_the_same_did(tmp_path: Path) -> None:
    path = tmp_path / "sensor-7.pem"
    key = Ed25519PrivateKey.generate()
    write_private_key(path, key, None)  # what `didgw did new -o` writes
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert dev.Identity.from_key(dev.load_or_create_key(path)).did == (
        gateway_did_from_public_key(raw)
    )


def test_encrypted_keys_need_their_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "dev.pem"
    key = dev.load_or_create_key(path, b"correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    with pytest.raises(dev.DeviceError, match="encrypted"):
        dev.load_or_create_key(path)
    with pytest.raises(dev.DeviceError, match="wrong passphrase"):
        dev.load_or_create_key(path, b"wrong")
    assert dev.Identity.from_key(dev.load_or_create_key(path, b"correct horse")).did == (
        dev.Identity.from_key(key).did
    )


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dev.pem"
    dev.load_or_create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(dev.DeviceError, match="chmod 600"):
        dev.load_or_create_key(path)


# --------------------------------------------------------------------------- messages


@pytest.fixture
def identity() -> object:
    return dev.Identity.from_key(Ed25519PrivateKey.generate())


def test_reading_jws_structure(identity: object) -> None:
    values = {
        "import_kwh": {"value": 1234.567, "unit": "kWh"},
        "power_w": {"value": 812, "unit": "W"},
    }
    token = dev.make_reading(
        identity, seq=17, ts_ms=1_700_000_000_000, reading_type="energy", values=values
    )
    header, payload, signature = split_jws(token)
    assert header == {"alg": "EdDSA", "kid": identity.kid, "typ": "didgw-reading+jws"}
    assert payload == {
        "did": identity.did,
        "seq": 17,
        "ts": 1_700_000_000_000,
        "type": "energy",
        "values": values,
    }
    signing_input = token.rsplit(".", 1)[0].encode()
    identity.private_key.public_key().verify(signature, signing_input)  # raises if bad
    # and the gateway accepts it as a statement by the device (assertionMethod)
    verified = verify_jws(
        token, resolver=offline_resolver(), relationship="assertionMethod", now=NOW
    )
    assert verified.signer.did == identity.did


def test_auth_response_structure(identity: object) -> None:
    epk = X25519PrivateKey.generate()
    epk_raw = epk.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    gateway = Signer.for_did_key(Ed25519PrivateKey.generate()).did
    token = dev.make_auth_response(
        identity, nonce=b64u(bytes(32)), gateway=gateway, epk=epk_raw, reply="r" * 32, ts_ms=5
    )
    header, payload, _ = split_jws(token)
    assert header == {"alg": "EdDSA", "kid": identity.kid, "typ": "didgw-auth+jws"}
    assert payload == {
        "type": "response",
        "nonce": b64u(bytes(32)),
        "device": identity.did,
        "gateway": gateway,
        "ts": 5,
        "epk": b64u(epk_raw),
        "reply": "r" * 32,
    }
    verify_jws(token, resolver=offline_resolver(), relationship="authentication", now=NOW)
    assert json.loads(dev.make_hello(identity.did, "r" * 32)) == {
        "type": "hello",
        "did": identity.did,
        "reply": "r" * 32,
    }


def test_challenge_checks(identity: object) -> None:
    gateway = Signer.for_did_key(Ed25519PrivateKey.generate()).did
    nonce = os.urandom(32)
    challenge = {
        "type": "challenge",
        "nonce": b64u(nonce),
        "gateway": gateway,
        "device": identity.did,
        "expires": 1,
    }
    assert dev.check_challenge(challenge, did=identity.did, gateway_did=None) == (gateway, nonce)
    assert dev.check_challenge(challenge, did=identity.did, gateway_did=gateway)[1] == nonce
    other = Signer.for_did_key(Ed25519PrivateKey.generate()).did
    bad = [
        ({}, {"gateway_did": other}),  # pinned to another gateway
        ({"device": other}, {}),
        ({"nonce": b64u(bytes(16))}, {}),
        ({"nonce": "not base64url!"}, {}),
        ({"gateway": "did:web:example.com"}, {}),
        ({"gateway": None}, {}),
    ]
    for change, options in bad:
        with pytest.raises(dev.AuthError):
            dev.check_challenge(
                {**challenge, **change}, did=identity.did, **{"gateway_did": None, **options}
            )


# --------------------------------------------------------------------------- grant


def seal(password: bytes, device_epk_public: bytes, nonce: bytes, did: str) -> dict:
    """The gateway's half, written from the formula in docs/protocol/mqtt.md."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    gateway_epk = X25519PrivateKey.generate()
    shared = gateway_epk.exchange(X25519PublicKey.from_public_bytes(device_epk_public))
    key = HKDF(hashes.SHA256(), 32, salt=nonce, info=b"didgw broker secret v1").derive(shared)
    iv = os.urandom(12)
    return {
        "epk": b64u(
            gateway_epk.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        ),
        "iv": b64u(iv),
        "secret": b64u(ChaCha20Poly1305(key).encrypt(iv, password, did.encode())),
    }


class GrantCase:
    """A device, a gateway and one exchange's nonce and keys, to build grants from."""

    def __init__(self) -> None:
        self.device = dev.Identity.from_key(Ed25519PrivateKey.generate())
        self.gateway = Signer.for_did_key(Ed25519PrivateKey.generate())
        self.nonce = os.urandom(32)
        self.device_epk = X25519PrivateKey.generate()
        self.password = b64u(os.urandom(32)).encode()

    def payload(self, **change: object) -> dict:
        did = self.device.did
        epk_public = self.device_epk.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {
            "type": "grant",
            "device": did,
            "username": did,
            "expires": 1_700_000_600_000,
            **seal(self.password, epk_public, self.nonce, did),
            "readings": f"didgw/d/{did}/readings",
            "acks": f"didgw/d/{did}/acks",
            **change,
        }

    def token(self, payload: dict | None = None, *, signer: object = None, **headers: str) -> str:
        return sign_jws(
            json.dumps(payload or self.payload()).encode(),
            signer or self.gateway,
            headers={"typ": "didgw-grant+jws", **headers},
        )

    def open(self, token: str, prefix: str = "didgw") -> object:
        return dev.open_grant(
            token,
            gateway_did=self.gateway.did,
            did=self.device.did,
            nonce=self.nonce,
            device_epk=self.device_epk,
            prefix=prefix,
        )


def test_grant_round_trip_gives_the_broker_password() -> None:
    case = GrantCase()
    grant = case.open(case.token())
    assert grant.password == case.password
    assert grant.username == case.device.did
    assert grant.expires_ms == 1_700_000_600_000
    assert grant.readings == f"didgw/d/{case.device.did}/readings"
    assert grant.acks == f"didgw/d/{case.device.did}/acks"
    assert case.password.decode() not in repr(grant)


def test_forged_or_misdirected_grants_are_refused() -> None:
    case = GrantCase()
    impostor = Signer.for_did_key(Ed25519PrivateKey.generate())
    other = GrantCase()
    forged = Signer(impostor.private_key, case.gateway.kid)  # claims the gateway's kid
    tampered = case.token().split(".")
    tampered[2] = ("A" if tampered[2][0] != "A" else "B") + tampered[2][1:]
    cases = {
        "signed by another key under the gateway's kid": case.token(signer=forged),
        "signed by another gateway": case.token(signer=impostor),
        "signature altered": ".".join(tampered),
        "wrong typ": case.token(typ="didgw-auth+jws"),
        "critical header": raw_jws(
            {"alg": "EdDSA", "kid": case.gateway.kid, "typ": "didgw-grant+jws", "crit": ["x"]},
            case.payload(),
            case.gateway.private_key,
        ),
        "for another device": case.token(case.payload(device=other.device.did)),
        "another username": case.token(case.payload(username="x")),
        "not a grant": case.token(case.payload(type="challenge")),
        "no expiry": case.token(case.payload(expires="soon")),
        "readings elsewhere": case.token(case.payload(readings="x/readings")),
        "bad iv": case.token(case.payload(iv=b64u(bytes(8)))),
        # encrypted for another device (associated data) or another exchange (salt)
        "sealed for another DID": case.token(
            case.payload(
                **seal(
                    case.password,
                    case.device_epk.public_key().public_bytes(
                        serialization.Encoding.Raw, serialization.PublicFormat.Raw
                    ),
                    case.nonce,
                    other.device.did,
                )
            )
        ),
        "sealed under another nonce": case.token(
            case.payload(
                **seal(
                    case.password,
                    case.device_epk.public_key().public_bytes(
                        serialization.Encoding.Raw, serialization.PublicFormat.Raw
                    ),
                    os.urandom(32),
                    case.device.did,
                )
            )
        ),
        "low-order epk": case.token(case.payload(epk=b64u(bytes(32)))),
        "not a JWS": "{}",
    }
    for name, token in cases.items():
        with pytest.raises(dev.AuthError):
            case.open(token)
            pytest.fail(f"accepted a grant: {name}")
    with pytest.raises(dev.AuthError, match="topic"):
        case.open(case.token(), prefix="other")


def test_secret_decryption_matches_the_formula() -> None:
    device_epk = X25519PrivateKey.generate()
    public = device_epk.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    nonce = os.urandom(32)
    sealed = seal(b"hunter2", public, nonce, "did:key:z6Mkexample")
    assert (
        dev.decrypt_secret(
            device_epk,
            dev.b64u_decode(sealed["epk"]),
            nonce=nonce,
            iv=dev.b64u_decode(sealed["iv"]),
            ciphertext=dev.b64u_decode(sealed["secret"]),
            did="did:key:z6Mkexample",
        )
        == b"hunter2"
    )


# --------------------------------------------------------------------------- outbox


def test_outbox_survives_reopening_and_drops_acked_entries(tmp_path: Path) -> None:
    path = tmp_path / "device.db"
    outbox = dev.Outbox(path, "did:key:z6Mkone")
    for _ in range(5):
        outbox.add(lambda seq: f"token-{seq}", created_ms=1)
    assert outbox.remove(2) and outbox.remove(4)
    assert not outbox.remove(4)
    outbox.close()

    outbox = dev.Outbox(path, "did:key:z6Mkone")
    assert len(outbox) == 3
    assert outbox.after(0, 10) == [(1, "token-1"), (3, "token-3"), (5, "token-5")]
    assert outbox.after(1, 1) == [(3, "token-3")]
    assert outbox.last_seq == 5
    assert outbox.add(lambda seq: f"token-{seq}", created_ms=2) == (6, "token-6")
    outbox.close()


def test_seq_persists_even_when_every_reading_was_acked(tmp_path: Path) -> None:
    path = tmp_path / "device.db"
    outbox = dev.Outbox(path, "did:key:z6Mkone", durable=False)
    for _ in range(3):
        seq, _ = outbox.add(str, created_ms=1)
        outbox.remove(seq)
    outbox.close()
    outbox = dev.Outbox(path, "did:key:z6Mkone")
    assert len(outbox) == 0
    assert outbox.add(str, created_ms=1)[0] == 4
    outbox.close()


def test_a_failed_build_allocates_no_seq(tmp_path: Path) -> None:
    outbox = dev.Outbox(tmp_path / "device.db", "did:key:z6Mkone")

    def fail(_seq: int) -> str:
        raise ValueError("cannot sign")

    with pytest.raises(ValueError, match="cannot sign"):
        outbox.add(fail, created_ms=1)
    assert outbox.add(str, created_ms=1)[0] == 1
    outbox.close()


def test_outbox_belongs_to_one_did_and_one_process(tmp_path: Path) -> None:
    path = tmp_path / "device.db"
    outbox = dev.Outbox(path, "did:key:z6Mkone")
    with pytest.raises(dev.DeviceError, match="in use"):
        dev.Outbox(path, "did:key:z6Mkone")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device.db", "device.db-wal"]
    outbox.close()
    with pytest.raises(dev.DeviceError, match="not of did:key:z6Mktwo"):
        dev.Outbox(path, "did:key:z6Mktwo")


# --------------------------------------------------------------------------- device


class FakeLink:
    """Stands in for an MQTT connection: records what is published."""

    def __init__(self) -> None:
        import threading

        self.ready = threading.Event()
        self.ready.set()
        self.closed = threading.Event()
        self.refused = None
        self.published: list[tuple[str, bytes | str]] = []

    def publish(self, topic: str, payload: bytes | str) -> object:
        self.published.append((topic, payload))
        return SimpleNamespace(rc=0)

    def close(self) -> None:
        self.closed.set()

    def seqs(self) -> list[int]:
        return [split_jws(token)[1]["seq"] for _, token in self.published]


@pytest.fixture
def clock() -> list[float]:
    return [NOW]


@pytest.fixture
def make_device(tmp_path: Path, clock: list[float]):
    made = []

    def make(**options: object) -> object:
        device = dev.Device(
            "127.0.0.1:1",  # never contacted in these tests
            key_path=tmp_path / "dev.pem",
            state_dir=tmp_path / "state",
            clock=lambda: clock[0],
            **options,
        )
        made.append(device)
        return device

    yield make
    for device in made:
        device.close()


def test_a_device_waits_what_the_gateway_says_plus_jitter_else_backs_off(make_device) -> None:
    """``rate_limited`` with ``retry_after``: that long plus 0 to 10 %; without a word from the
    gateway: the backoff, doubling to 30 s, plus 0 to 25 %."""
    device = make_device()
    told = [device._delay(dev.AuthRefused("rate_limited", device.did, 2.0)) for _ in range(200)]
    assert all(2.0 <= d < 2.2 for d in told) and max(told) - min(told) > 0.1
    assert device._backoff == 1.0  # the gateway's word does not grow the backoff
    alone = [device._delay(dev.AuthError("no answer")) for _ in range(7)]
    for delay, base in zip(alone, (1, 2, 4, 8, 16, 30, 30), strict=True):
        assert base <= delay < base * 1.25
    assert dev.retry_after_of({"retry_after": 1500}) == 1.5
    for bad in (-1, 3_600_001, 1.5, "9", True, None):
        assert dev.retry_after_of({"retry_after": bad}) is None


def ack(seq: int | None, status: str = "accepted", **extra: object) -> bytes:
    return json.dumps({"seq": seq, "status": status, **extra}).encode()


def test_readings_are_queued_on_disk_and_survive_a_device_restart(make_device) -> None:
    device = make_device()
    seqs = [
        device.publish_reading("energy", {"power_w": {"value": i, "unit": "W"}}) for i in range(3)
    ]
    assert seqs == [1, 2, 3]
    assert device.pending() == 3
    did = device.did
    device.close()

    device = make_device()
    assert device.did == did  # same key file
    assert device.pending() == 3
    device.receive_ack(ack(2, entry=40))
    assert device.pending() == 2
    assert device.publish_reading("energy", {}) == 4  # seq carries on
    assert device.stats["accepted"] == 1


def test_readings_are_signed_with_seq_and_ts(make_device, clock: list[float]) -> None:
    device = make_device()
    link = FakeLink()
    device._install(link)
    device.publish_reading("energy", {"power_w": {"value": 812, "unit": "W"}})
    ((topic, token),) = link.published
    assert topic == f"didgw/d/{device.did}/readings"
    header, payload, _ = split_jws(token)
    assert header["typ"] == "didgw-reading+jws"
    assert payload["seq"] == 1
    assert payload["ts"] == int(NOW * 1000)


def test_acks_remove_readings_refusals_too(make_device) -> None:
    device = make_device()
    for _ in range(3):
        device.publish_reading("energy", {})
    device.receive_ack(ack(1, entry=7))
    device.receive_ack(ack(2, "refused", reason="schema"))
    device.receive_ack(ack(2, "refused", reason="schema"))  # a repeat changes nothing
    device.receive_ack(ack(None, "refused", reason="malformed"))
    assert device.pending() == 1
    assert device.stats["accepted"] == 1
    assert device.stats["refused"] == 1
    assert [a["seq"] for a in device.acks] == [1, 2, 2, None]
    for bad in (b"not json", ack("1"), ack(3, "maybe"), b"[]"):
        with pytest.raises(dev.DeviceError):
            device.receive_ack(bad)
    assert device.pending() == 1


def test_whoever_sees_every_reading_acked_also_sees_it_counted(make_device) -> None:
    # The outbox forgets a reading before the ack is counted. A slow disk widens the gap
    # between the two; wait_acked must not return inside it.
    device = make_device()
    device.publish_reading("energy", {})
    forget = device.outbox.remove

    def slow_remove(seq: int) -> bool:
        removed = forget(seq)
        time.sleep(0.3)  # the reading is gone from the outbox, and not yet counted
        return removed

    device.outbox.remove = slow_remove
    acker = threading.Thread(target=device.receive_ack, args=(ack(1),))
    acker.start()
    time.sleep(0.1)
    assert device.wait_acked(timeout=5)
    seen = device.stats["accepted"]
    acker.join()
    assert seen == 1


def test_the_window_opens_with_acks_up_to_max_inflight(make_device) -> None:
    device = make_device(max_inflight=3)
    link = FakeLink()
    device._install(link)
    for _ in range(6):
        device.publish_reading("energy", {})
    assert link.seqs() == [1]  # a new connection sends one reading first
    device.receive_ack(ack(1))
    assert link.seqs() == [1, 2, 3]
    device.receive_ack(ack(2))
    assert link.seqs() == [1, 2, 3, 4, 5]
    assert len(device._inflight) == 3  # max_inflight
    device.receive_ack(ack(3))
    assert link.seqs() == [1, 2, 3, 4, 5, 6]
    assert len(device._inflight) == 3
    assert device.stats["sent"] == 6


def test_unacked_readings_are_sent_again_on_a_new_connection(make_device) -> None:
    device = make_device(max_inflight=2)
    for _ in range(3):
        device.publish_reading("energy", {})  # offline: queued only
    first = FakeLink()
    device._install(first)
    device.receive_ack(ack(1))
    assert first.seqs() == [1, 2, 3]
    second = FakeLink()
    device._install(second)  # reconnected: resend from the oldest unacked, in order
    assert first.closed.is_set()
    device.receive_ack(ack(2))
    assert second.seqs() == [2, 3]
    assert [t for _, t in second.published] == [t for _, t in first.published[1:]]  # same bytes
    assert device.stats["resent"] == 2


def test_a_lost_reading_is_never_overtaken(make_device, clock: list[float]) -> None:
    # The broker drops what nobody subscribes to (a gateway not yet back): the first reading
    # on a new connection is lost. Nothing newer may get through before it, or the gateway
    # would refuse it later as not newer than the last accepted.
    device = make_device(ack_timeout=10)
    device._renew_at = float("inf")  # no grant in this test: keep tick from authenticating
    link = FakeLink()
    device._install(link)
    for _ in range(3):
        device.publish_reading("energy", {})
    clock[0] += 9
    device.tick()
    assert link.seqs() == [1]
    clock[0] += 2
    device.tick()
    assert link.seqs() == [1, 1]
    device.receive_ack(ack(1))
    assert link.seqs() == [1, 1, 2, 3]


def test_readings_whose_ack_is_late_are_sent_again(make_device, clock: list[float]) -> None:
    device = make_device(ack_timeout=30, stall_after=3)
    device._renew_at = float("inf")
    link = FakeLink()
    device._install(link)
    for _ in range(3):
        device.publish_reading("energy", {})
    device.receive_ack(ack(1))
    device.receive_ack(ack(3))  # 2 is late
    device.publish_reading("energy", {})
    assert link.seqs() == [1, 2, 3, 4]
    clock[0] += 5
    device.publish_reading("energy", {})  # 2 is overdue: hold back new readings
    device.tick()
    assert link.seqs() == [1, 2, 3, 4]
    clock[0] += 26
    device.tick()  # 2 waited more than ack_timeout: send again from the oldest
    assert link.seqs() == [1, 2, 3, 4, 2]
    device.receive_ack(ack(2))
    assert link.seqs() == [1, 2, 3, 4, 2, 4, 5]


def test_publish_raw_needs_a_connection(make_device) -> None:
    device = make_device()
    with pytest.raises(dev.DeviceError, match="not connected"):
        device.publish_raw(b"{}")
    link = FakeLink()
    device._install(link)
    device.publish_raw(b"garbage")
    assert link.published == [(device.readings_topic, b"garbage")]
    assert device.pending() == 0


def test_connect_needs_a_grant(make_device) -> None:
    with pytest.raises(dev.DeviceError, match="authenticate"):
        make_device().connect()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1883", ("127.0.0.1", 1883)),
        ("broker.local", ("broker.local", 1883)),
        ("[::1]:8883", ("::1", 8883)),
        ("[::1]", ("::1", 1883)),
    ],
)
def test_parse_broker(text: str, expected: tuple[str, int]) -> None:
    assert dev.parse_broker(text) == expected


def test_fleet_keeps_each_device_in_its_own_directory(tmp_path: Path) -> None:
    with dev.Fleet(3, "127.0.0.1:1", state_dir=tmp_path) as fleet:
        assert (tmp_path / "dids.txt").read_text().split() == fleet.dids
        assert len(set(fleet.dids)) == 3
        fleet.publish_round("energy", lambda d: {"n": {"value": 1, "unit": "1"}})
        assert fleet.pending() == 3
    with dev.Fleet(3, "127.0.0.1:1", state_dir=tmp_path) as again:
        assert again.dids == fleet.dids
        assert again.pending() == 3
    for i in (1, 2, 3):
        assert stat.S_IMODE((tmp_path / f"dev-000{i}" / "key.pem").stat().st_mode) == 0o600


def refused(reason: str) -> bytes:
    return json.dumps({"type": "refused", "reason": reason}).encode()


CHALLENGE = json.dumps({"type": "challenge", "nonce": "x"}).encode()
GRANT_JWS = b"header.payload.signature"


def expect(device: object, messages: list[bytes], what: str, timeout: float = 0.5) -> object:
    import queue
    import time

    inbox: queue.Queue[bytes] = queue.Queue()
    for message in messages:
        inbox.put(message)
    return device._expect(inbox, time.monotonic() + timeout, FakeLink(), what)


def test_a_refused_hello_ends_authentication_at_once(make_device) -> None:
    device = make_device()
    with pytest.raises(dev.AuthRefused) as refusal:
        expect(device, [refused("unknown_device")], "challenge", timeout=5)
    assert refusal.value.reason == "unknown_device"
    assert "didgw device register" in str(refusal.value)


def test_refusals_of_someone_elses_response_are_ignored(make_device) -> None:
    # Before our response is out, a refusal of a response answers a forged one.
    device = make_device()
    assert expect(device, [refused("bad_signature"), CHALLENGE], "challenge") == json.loads(
        CHALLENGE
    )
    with pytest.raises(dev.AuthError, match=r"ignored answers: refused \(bad_nonce\)"):
        expect(device, [refused("bad_nonce")], "challenge", timeout=0.2)
    # After it, a grant that follows a refusal still wins; so does one after a 2nd challenge.
    assert expect(device, [refused("bad_signature"), GRANT_JWS], "grant") == GRANT_JWS
    assert expect(device, [CHALLENGE, GRANT_JWS], "grant") == GRANT_JWS


def test_a_refusal_without_a_grant_after_it_is_final(make_device, monkeypatch) -> None:
    monkeypatch.setattr(dev, "REFUSAL_GRACE", 0.05)
    device = make_device()
    with pytest.raises(dev.AuthRefused, match="clock_skew"):
        expect(device, [refused("clock_skew")], "grant", timeout=5)
    with pytest.raises(dev.AuthError, match="expected a grant"):
        expect(device, [b'{"type": "grant"}'], "grant")


def test_a_fleet_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(dev.DeviceError, match="several processes"):
        dev.Fleet(dev.MAX_FLEET + 1, "127.0.0.1:1", state_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_sensor_print_did(tmp_path: Path, capsys) -> None:
    import sensor

    assert sensor.main(["--state", str(tmp_path), "--print-did"]) == 0
    did = capsys.readouterr().out.strip()
    assert did.startswith("did:key:z6Mk")
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600
    assert sensor.main(["--state", str(tmp_path), "--print-did"]) == 0
    assert capsys.readouterr().out.strip() == did


@pytest.mark.parametrize(
    ("text", "host", "port", "tls"),
    [
        ("127.0.0.1:1883", "127.0.0.1", 1883, False),
        ("gateway.local:8883", "gateway.local", 8883, True),  # MQTT over TLS's port
        ("mqtts://gateway.local", "gateway.local", 8883, True),
        ("mqtts://gateway.local:9999", "gateway.local", 9999, True),
        ("mqtts://[fd00::1]", "fd00::1", 8883, True),
        ("mqtts://[fd00::1]:8884", "fd00::1", 8884, True),
        ("mqtt://localhost", "localhost", 1883, False),
        ("mqtt://127.0.0.1:8883", "127.0.0.1", 8883, False),  # the scheme says plain
    ],
)
def test_parse_broker_url(text: str, host: str, port: int, tls: bool) -> None:
    assert dev.parse_broker_url(text) == dev.BrokerAddress(host, port, tls)


@pytest.mark.parametrize("text", ["https://x", "mqtts://", "mqtts://x/path", "mqtt://x:port"])
def test_parse_broker_url_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(dev.DeviceError):
        dev.parse_broker_url(text)


def test_plain_mqtt_goes_to_this_machine_only(tmp_path: Path) -> None:
    """The broker password and the readings never leave the machine in clear: plain MQTT
    to another host is refused before anything is sent; TLS is chosen by the URL, the
    port, or a trust anchor given."""
    options = {"key_path": tmp_path / "k.pem", "state_dir": tmp_path / "s"}
    for broker in ("192.168.1.10:1883", "mqtt://gateway.local", ("10.0.0.1", 1883)):
        with pytest.raises(dev.DeviceError, match="refusing plain MQTT"):
            dev.Device(broker, **options)
    for broker, trust in (
        ("mqtts://gateway.local", None),
        ("192.168.1.10:8883", None),
        ("192.168.1.10:1883", dev.Trust(pin="00" * 32)),
    ):
        with dev.Device(broker, tls=trust, **options) as device:
            assert device.trust is not None
    with dev.Device("127.0.0.1:1883", **options) as local:
        assert local.trust is None


def test_a_trust_anchor_is_a_file_or_a_pin(tmp_path: Path) -> None:
    assert dev.Trust(pin="AB:" * 31 + "AB").pin == bytes([0xAB]) * 32
    assert dev.Trust(pin="sha256 Fingerprint=" + "0a" * 32).pin == bytes([0x0A]) * 32
    with pytest.raises(dev.DeviceError, match="not a SHA-256 fingerprint"):
        dev.Trust(pin="abcd")
    with pytest.raises(dev.DeviceError, match="not both"):
        dev.Trust(ca_file=tmp_path / "ca.crt", pin="00" * 32)
    with pytest.raises(dev.DeviceError, match=r"cannot use .* as the CA"):
        dev.Trust(ca_file=tmp_path / "missing.crt").context("127.0.0.1", 8883, 1)

"""The grant secret: sealed by the gateway, opened only by the device, for one exchange."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.auth.secret import SecretError, open_secret, seal_secret

DID = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
NONCE = bytes(range(32))
SECRET = b"x" * 43

# Points of small order on Curve25519 (the list libsodium refuses): the shared
# secret with any of them is all zeros.
LOW_ORDER = [
    bytes(32),
    b"\x01" + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def raw(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.fixture
def device() -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes(range(100, 132)))


def seal(device_epk: bytes, nonce: bytes = NONCE, did: str = DID) -> tuple[bytes, bytes, bytes]:
    return seal_secret(SECRET, device_epk, nonce, did, random_bytes=random.Random(1).randbytes)


def test_the_device_opens_what_the_gateway_sealed(device: X25519PrivateKey) -> None:
    epk, iv, ciphertext = seal(raw(device))
    assert len(epk) == 32 and len(iv) == 12 and len(ciphertext) == len(SECRET) + 16
    opened = open_secret(ciphertext, iv, epk, device_key=device, nonce=NONCE, device_did=DID)
    assert opened == SECRET


def test_the_recipe_is_exactly_the_readme_s(device: X25519PrivateKey) -> None:
    """X25519 → HKDF-SHA256(salt = nonce, info) → ChaCha20-Poly1305 with the DID as AAD."""
    epk, iv, ciphertext = seal(raw(device))
    shared = device.exchange(X25519PublicKey.from_public_bytes(epk))
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=NONCE, info=b"didgw broker secret v1"
    ).derive(shared)
    assert ChaCha20Poly1305(key).decrypt(iv, ciphertext, DID.encode()) == SECRET


def test_sealing_is_deterministic_given_the_randomness(device: X25519PrivateKey) -> None:
    assert seal(raw(device)) == seal(raw(device))
    other = seal_secret(SECRET, raw(device), NONCE, DID, random_bytes=random.Random(2).randbytes)
    assert other != seal(raw(device))


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("another device key", {"device_key": X25519PrivateKey.from_private_bytes(bytes(32))}),
        ("another nonce", {"nonce": bytes(32)}),
        ("another DID", {"device_did": DID + "x"}),
    ],
)
def test_anything_else_does_not_open_it(device: X25519PrivateKey, what: str, change: dict) -> None:
    epk, iv, ciphertext = seal(raw(device))
    args = {"device_key": device, "nonce": NONCE, "device_did": DID, **change}
    with pytest.raises(SecretError, match="does not decrypt"):
        open_secret(ciphertext, iv, epk, **args)


def test_a_tampered_ciphertext_or_iv_does_not_open(device: X25519PrivateKey) -> None:
    epk, iv, ciphertext = seal(raw(device))
    flipped = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    with pytest.raises(SecretError):
        open_secret(flipped, iv, epk, device_key=device, nonce=NONCE, device_did=DID)
    with pytest.raises(SecretError):
        open_secret(ciphertext, bytes(12), epk, device_key=device, nonce=NONCE, device_did=DID)
    with pytest.raises(SecretError, match="iv must be 12"):
        open_secret(ciphertext, iv[:8], epk, device_key=device, nonce=NONCE, device_did=DID)


@pytest.mark.parametrize("point", LOW_ORDER, ids=[p.hex()[:8] for p in LOW_ORDER])
def test_a_low_order_device_key_is_refused(point: bytes) -> None:
    with pytest.raises(SecretError, match="low-order"):
        seal(point)


@pytest.mark.parametrize("point", LOW_ORDER[:2], ids=["zero", "one"])
def test_the_device_refuses_a_low_order_gateway_key(device: X25519PrivateKey, point: bytes) -> None:
    with pytest.raises(SecretError, match="low-order"):
        open_secret(b"x" * 20, bytes(12), point, device_key=device, nonce=NONCE, device_did=DID)


@pytest.mark.parametrize(
    ("epk", "nonce", "message"),
    [
        (bytes(31), NONCE, "32 bytes, got 31"),
        (bytes(33), NONCE, "32 bytes, got 33"),
        (b"\x09" + bytes(31), NONCE[:16], "nonce must be 32 bytes"),
    ],
)
def test_wrong_lengths_are_refused(epk: bytes, nonce: bytes, message: str) -> None:
    with pytest.raises(SecretError, match=message):
        seal(epk, nonce)


def test_short_randomness_is_a_programming_error(device: X25519PrivateKey) -> None:
    with pytest.raises(ValueError, match="returned 0 bytes"):
        seal_secret(SECRET, raw(device), NONCE, DID, random_bytes=lambda n: b"")

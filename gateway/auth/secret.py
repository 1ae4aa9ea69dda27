"""The broker secret in a grant, readable only by the device that proved itself.

A grant travels on ``<prefix>/auth/res/<reply>``, which any anonymous client may
read, so the broker password in it is encrypted to the fresh X25519 key (``epk``)
the device put in its *signed* response: only the holder of the private half,
which never left the device, can read it.

The recipe, exactly as docs/protocol/mqtt.md ("Opening the broker secret") gives it to
device makers:

* the gateway makes an ephemeral X25519 key for this one grant;
* key = HKDF-SHA256(ikm = X25519 shared secret, salt = the challenge nonce's
  32 bytes, info = ``b"didgw broker secret v1"``, length 32): the salt ties the
  key to this exchange;
* ChaCha20-Poly1305 with a random 12-byte iv, and the device DID (UTF-8) as
  associated data, so the ciphertext cannot be passed off as another device's.

A low-order ``epk`` would make the shared secret all zeros, a key anyone can
compute; it is refused here whatever the underlying library does about it.

:func:`seal_secret` is the gateway's half (:func:`new_password` makes a broker
password and seals it, for devices and wallets alike); :func:`open_secret` is what a
device does with the grant (the tests and simulators use it).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.auth.strict import b64u
from gateway.errors import DidgwError

INFO = b"didgw broker secret v1"
KEY_BYTES = 32
PASSWORD_BYTES = 32
IV_BYTES = 12
NONCE_BYTES = 32

#: ``random_bytes(n)``: n bytes from a CSPRNG (``os.urandom`` in the gateway).
RandomBytes = Callable[[int], bytes]


class SecretError(DidgwError):
    """A key or ciphertext of the grant secret that cannot be used."""

    code = "bad_secret"


def seal_secret(
    secret: bytes,
    device_epk: bytes,
    nonce: bytes,
    device_did: str,
    *,
    random_bytes: RandomBytes,
) -> tuple[bytes, bytes, bytes]:
    """Encrypt ``secret`` to ``device_epk``; return ``(gateway_epk, iv, ciphertext)``."""
    ephemeral = X25519PrivateKey.from_private_bytes(_random(random_bytes, KEY_BYTES))
    key = _derive(ephemeral, device_epk, nonce)
    iv = _random(random_bytes, IV_BYTES)
    ciphertext = ChaCha20Poly1305(key).encrypt(iv, secret, device_did.encode("utf-8"))
    gateway_epk = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return gateway_epk, iv, ciphertext


@dataclass(frozen=True)
class SealedPassword:
    """A broker password, and the grant's ``epk``, ``iv`` and ``secret`` that carry it."""

    password: str = field(repr=False)  # a session token, or random; never logged
    epk: bytes
    iv: bytes
    secret: bytes


def new_password(
    device_epk: bytes,
    nonce: bytes,
    device_did: str,
    *,
    random_bytes: RandomBytes,
    password: str | None = None,
) -> SealedPassword:
    """``password`` (the broker session token), else a random one, sealed to ``device_epk``
    (:class:`SecretError` for an unusable key, e.g. a low-order point)."""
    if password is None:
        password = b64u(_random(random_bytes, PASSWORD_BYTES))
    sealed = seal_secret(
        password.encode("ascii"), device_epk, nonce, device_did, random_bytes=random_bytes
    )
    return SealedPassword(password, *sealed)


def open_secret(
    ciphertext: bytes,
    iv: bytes,
    gateway_epk: bytes,
    *,
    device_key: X25519PrivateKey,
    nonce: bytes,
    device_did: str,
) -> bytes:
    """The device's side: decrypt the grant's ``secret`` with the key behind its ``epk``."""
    key = _derive(device_key, gateway_epk, nonce)
    if len(iv) != IV_BYTES:
        raise SecretError(f"iv must be {IV_BYTES} bytes, got {len(iv)}")
    try:
        return ChaCha20Poly1305(key).decrypt(iv, ciphertext, device_did.encode("utf-8"))
    except InvalidTag:
        raise SecretError("the grant secret does not decrypt (wrong key, nonce or DID)") from None


def _derive(private_key: X25519PrivateKey, peer_public: bytes, nonce: bytes) -> bytes:
    if len(peer_public) != 32:
        raise SecretError(f"an X25519 public key is 32 bytes, got {len(peer_public)}")
    if len(nonce) != NONCE_BYTES:
        raise SecretError(f"the nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:  # OpenSSL refuses an all-zero result itself
        shared = bytes(32)
    if hmac.compare_digest(shared, bytes(32)):
        raise SecretError("the X25519 public key is a low-order point (all-zero shared secret)")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=nonce, info=INFO).derive(shared)


def _random(random_bytes: RandomBytes, n: int) -> bytes:
    data = random_bytes(n)
    if len(data) != n:
        raise ValueError(f"random_bytes({n}) returned {len(data)} bytes")
    return data

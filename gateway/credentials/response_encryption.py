"""Encrypted OpenID4VP responses (``direct_post.jwt``, OpenID4VP 1.0 §8.3), sans-IO.

Each sign-in request offers its own ephemeral keys in ``client_metadata.jwks`` (a P-256
key first, the one HAIP names, then an X25519 key), each with a ``kid`` of its own, ``use``
``enc`` and ``alg`` ``ECDH-ES``; the wallet encrypts its response (a JSON object with
``vp_token`` and ``state``) to one of them as a compact JWE. The private keys live only in
the pending request, in memory; they die with it.

What is taken, and nothing else (every check before any decryption work):

* a compact JWE of at most :data:`MAX_JWE_CHARS` characters, five parts, the fourth
  (the encrypted key) empty, as ``ECDH-ES`` (direct key agreement) has none;
* a protected header of known members only (:data:`HEADER_NAMES`: no ``zip``, which would
  let a small envelope inflate, no ``crit``, no ``jku``/``x5u`` to fetch), ``alg``
  ``ECDH-ES``, ``enc`` one of :data:`ENC_VALUES`, and the ``kid`` of a key the request
  offered;
* then joserfc decrypts with that one key, allowing only ``ECDH-ES`` and that ``enc``; the
  AES-GCM tag authenticates the header and the ciphertext together.

ECDH-ES proves nothing about who encrypted (anyone may encrypt to a public key): what
makes a response the holder's is still its presentation's key-binding JWT.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, x25519
from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey

ALG = "ECDH-ES"
#: The content encryptions offered (``encrypted_response_enc_values_supported``).
ENC_VALUES = ("A128GCM", "A256GCM")
#: The JWE, whole, at most: under the edge's 64 KiB body cap, so an envelope too large
#: gets a reason rather than a bare 413.
MAX_JWE_CHARS = 48 * 1024
MAX_HEADER_CHARS = 2048
HEADER_NAMES = frozenset({"alg", "enc", "kid", "epk", "apu", "apv", "typ", "cty"})
KID_BYTES = 16

#: The P-256 group order: a private scalar is drawn below it.
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class EnvelopeRefused(ValueError):
    """The JWE is not one this request takes; the text says which check failed."""


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64u(text: str) -> bytes:
    if not text.isascii() or "=" in text:
        raise EnvelopeRefused("a JWE part is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise EnvelopeRefused("a JWE part is not base64url") from None


@dataclass(frozen=True)
class ResponseKeys:
    """The ephemeral keys of one request, by ``kid`` (first one first)."""

    keys: dict[str, ECKey | OKPKey] = field(repr=False)

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set for ``client_metadata.jwks``."""
        return {"keys": [key.as_dict(private=False) for key in self.keys.values()]}

    def kids(self) -> list[str]:
        return list(self.keys)


def new_keys(random_bytes: Callable[[int], bytes]) -> ResponseKeys:
    """A P-256 and an X25519 key, from ``random_bytes`` (the caller's randomness)."""
    scalar = 0
    while not 0 < scalar < _P256_ORDER:
        scalar = int.from_bytes(random_bytes(32), "big")
    p256 = ec.derive_private_key(scalar, ec.SECP256R1())
    x = x25519.X25519PrivateKey.from_private_bytes(random_bytes(32))
    p256_kid, x_kid = (_b64u(random_bytes(KID_BYTES)) for _ in range(2))
    keys: dict[str, ECKey | OKPKey] = {
        p256_kid: ECKey.import_key(p256, {"kid": p256_kid, "use": "enc", "alg": ALG}),
        x_kid: OKPKey.import_key(x, {"kid": x_kid, "use": "enc", "alg": ALG}),
    }
    return ResponseKeys(keys)


def header_of(token: str) -> dict[str, Any]:
    """The protected header of a compact JWE, unverified but bounded and checked for
    shape: only to find the key and refuse what is not offered, before decrypting."""
    if len(token) > MAX_JWE_CHARS:
        raise EnvelopeRefused(f"the JWE is longer than {MAX_JWE_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 5:
        raise EnvelopeRefused("not a compact JWE (five parts separated by dots)")
    if parts[1]:
        raise EnvelopeRefused("ECDH-ES has no encrypted key; the second part must be empty")
    if len(parts[0]) > MAX_HEADER_CHARS:
        raise EnvelopeRefused("the JWE header is too long")
    try:
        header = json.loads(_unb64u(parts[0]))
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        raise EnvelopeRefused("the JWE header is not JSON") from None
    if not isinstance(header, dict):
        raise EnvelopeRefused("the JWE header is not a JSON object")
    unknown = set(header) - HEADER_NAMES
    if unknown:
        raise EnvelopeRefused(f"the JWE header has members not taken here: {sorted(unknown)}")
    if header.get("alg") != ALG:
        raise EnvelopeRefused(f"alg must be {ALG}, not {header.get('alg')!r}")
    if header.get("enc") not in ENC_VALUES:
        raise EnvelopeRefused(f"enc must be one of {list(ENC_VALUES)}, not {header.get('enc')!r}")
    if not isinstance(header.get("kid"), str):
        raise EnvelopeRefused("the JWE header needs the kid of the key it is encrypted to")
    return header


def decrypt(token: str, keys: ResponseKeys) -> bytes:
    """The plaintext of ``token``, encrypted to one of ``keys`` (see the module docstring)."""
    header = header_of(token)
    key = keys.keys.get(header["kid"])
    if key is None:
        raise EnvelopeRefused("the JWE's kid names no key this sign-in request offered")
    try:
        opened = jwe.decrypt_compact(token, key, algorithms=[ALG, header["enc"]])
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise EnvelopeRefused(f"the JWE does not decrypt with the offered key: {exc}") from None
    if opened.plaintext is None:
        raise EnvelopeRefused("the JWE has no plaintext")
    return opened.plaintext

"""COSE_Sign1 (RFC 9052 §4.2) with EdDSA and ``kid`` = a DID URL, on cbor2.

The CoAP counterpart of compact JWS: what a constrained device signs (readings,
its authentication response) and what the gateway signs back (the grant). The
CBOR comes from cbor2; this module only arranges the four-element structure and
the ``Sig_structure`` that is signed, and checks what arrives strictly:

* at most ``max_bytes``, one CBOR data item and nothing after it, no indefinite
  lengths, no duplicate map keys, nesting of at most 16;
* ``COSE_Sign1 = [protected: bstr .cbor map, unprotected: map, payload: bstr,
  signature: bstr(64)]``, with or without tag 18; a detached (nil) payload is refused;
* protected headers: ``alg`` (1) is -8 (EdDSA) or -19 (Ed25519, RFC 9864), ``typ``
  (16, RFC 9596) a text string, optional content type (3); ``kid`` (4, a byte
  string holding the UTF-8 DID URL) is protected or unprotected, not both; no
  ``crit`` (2) and no other header parameter anywhere.

Anything else is a :class:`CoseError` (the caller's ``malformed``). The signature
is then checked by :func:`~gateway.identity.signing.verify_detached` over the
``Sig_structure`` — the same recipe as every JWS — so a COSE reading and a JWS
reading by the same key are verified by the same code.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from gateway.errors import DidgwError
from gateway.identity.signing import Signer

COSE_SIGN1_TAG = 18
ALG, CRIT, CONTENT_TYPE, KID, TYP = 1, 2, 3, 4, 16
EDDSA, ED25519 = -8, -19
COSE_ALGORITHMS = (EDDSA, ED25519)
_PROTECTED_LABELS = frozenset({ALG, CONTENT_TYPE, KID, TYP})
_UNPROTECTED_LABELS = frozenset({KID})
MAX_DEPTH = 16
#: What cbor2 (or Python under it) raises on hostile input: every one becomes a CoseError.
_DECODE_ERRORS = (
    cbor2.CBORDecodeError,
    EOFError,
    ValueError,
    TypeError,
    OverflowError,
    RecursionError,
    LookupError,
)


class CoseError(DidgwError):
    """Not a COSE_Sign1 (or CBOR) of the form didgw accepts; the message says why."""

    code = "malformed"


def _no_tags(tag: cbor2.CBORTag, immutable: bool) -> Any:
    """Unknown tags stay visible as CBORTag, which every schema check then refuses
    (cbor2 decodes a tag's content immutable: arrays as tuples, maps as frozendicts)."""
    return tag


def decode_cbor(data: bytes, what: str, *, max_bytes: int) -> Any:
    """Exactly one CBOR data item of at most ``max_bytes``, decoded strictly."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CoseError(f"{what} is not bytes")
    if len(data) > max_bytes:
        raise CoseError(f"{what} is {len(data)} bytes; at most {max_bytes} are accepted")
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(
            stream,
            tag_hook=_no_tags,
            allow_duplicate_keys=False,
            allow_indefinite=False,
            max_depth=MAX_DEPTH,
        ).decode()
    except _DECODE_ERRORS as exc:
        raise CoseError(f"{what} is not valid CBOR: {exc}") from None
    if stream.tell() != len(data):
        raise CoseError(f"{what} has {len(data) - stream.tell()} bytes after its CBOR item")
    return value


@dataclass(frozen=True)
class Sign1:
    """A COSE_Sign1 as received, split but not yet verified."""

    protected_bytes: bytes
    protected: dict[int, Any]
    unprotected: dict[int, Any]
    payload: bytes
    signature: bytes

    @property
    def kid(self) -> str:
        raw: bytes = self.protected[KID] if KID in self.protected else self.unprotected[KID]
        return raw.decode("utf-8")  # checked in decode

    @property
    def typ(self) -> str:
        value: str = self.protected[TYP]
        return value

    def to_be_signed(self) -> bytes:
        """The ``Sig_structure`` of RFC 9052 §4.4 (no external AAD)."""
        return sig_structure(self.protected_bytes, self.payload)

    @classmethod
    def decode(cls, data: bytes, what: str, *, max_bytes: int = 16384) -> Sign1:
        item = decode_cbor(data, what, max_bytes=max_bytes)
        if isinstance(item, cbor2.CBORTag):
            if item.tag != COSE_SIGN1_TAG:
                raise CoseError(f"{what} has CBOR tag {item.tag}, not 18 (COSE_Sign1)")
            item = item.value
        if not isinstance(item, list | tuple) or len(item) != 4:
            raise CoseError(f"{what} is not a COSE_Sign1 (an array of four)")
        protected_bytes, unprotected, payload, signature = item
        if not isinstance(protected_bytes, bytes) or not protected_bytes:
            raise CoseError(f"{what}: the protected headers must be a non-empty byte string")
        protected = decode_cbor(protected_bytes, f"{what} protected headers", max_bytes=max_bytes)
        if not isinstance(protected, Mapping) or not isinstance(unprotected, Mapping):
            raise CoseError(f"{what}: header parameters must be maps")
        if payload is None:
            raise CoseError(f"{what}: a detached payload is not accepted")
        if not isinstance(payload, bytes):
            raise CoseError(f"{what}: the payload must be a byte string")
        if not isinstance(signature, bytes) or len(signature) != 64:
            raise CoseError(f"{what}: the signature must be a 64-byte string")
        _check_headers(protected, unprotected, what)
        return cls(protected_bytes, dict(protected), dict(unprotected), payload, signature)


def _check_headers(protected: Mapping[Any, Any], unprotected: Mapping[Any, Any], what: str) -> None:
    if CRIT in protected or CRIT in unprotected:
        raise CoseError(f"{what} has critical header parameters; refused")
    unknown = (protected.keys() - _PROTECTED_LABELS) | (unprotected.keys() - _UNPROTECTED_LABELS)
    if unknown:
        raise CoseError(f"{what}: header parameters {sorted(map(repr, unknown))} not accepted")
    alg = protected.get(ALG)
    if type(alg) is not int or alg not in COSE_ALGORITHMS:
        raise CoseError(f"{what}: protected alg {alg!r} refused; expected -8 (EdDSA)")
    if not isinstance(protected.get(TYP), str):
        raise CoseError(f"{what}: protected typ (16) must be a text string")
    if CONTENT_TYPE in protected and not isinstance(protected[CONTENT_TYPE], str | int):
        raise CoseError(f"{what}: content type must be a text string or an integer")
    if KID in protected and KID in unprotected:
        raise CoseError(f"{what}: kid in both header buckets")
    kid = protected.get(KID, unprotected.get(KID))
    if not isinstance(kid, bytes) or not 0 < len(kid) <= 1024:
        raise CoseError(f"{what}: kid (4) must be a byte string holding the signer's DID URL")
    try:
        kid.decode("utf-8")
    except UnicodeDecodeError:
        raise CoseError(f"{what}: kid is not UTF-8") from None


def sig_structure(protected_bytes: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """``["Signature1", body_protected, external_aad, payload]`` as CBOR."""
    return cbor2.dumps(["Signature1", protected_bytes, external_aad, payload])


def sign1(payload: bytes, signer: Signer, *, typ: str) -> bytes:
    """A tagged COSE_Sign1 by ``signer``: alg EdDSA, kid its DID URL, typ ``typ``."""
    protected = cbor2.dumps({ALG: EDDSA, KID: signer.kid.encode("utf-8"), TYP: typ})
    signature = signer.sign(sig_structure(protected, payload))
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, payload, signature]))

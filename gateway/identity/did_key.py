"""``did:key`` for Ed25519: encode, parse and resolve, per the did:key specification.

A did:key is ``did:key:`` + a multibase (``z`` = base58btc) string of a
multicodec-prefixed public key. For Ed25519 the multicodec is ``ed25519-pub``
(0xed, varint ``0xed 0x01``), so every such DID starts ``did:key:z6Mk``.

Resolution is pure: the document is computed from the DID. It lists one
``Multikey`` verification method, referenced from ``authentication``,
``assertionMethod``, ``capabilityDelegation`` and ``capabilityInvocation``, the
same document (key order included) as the reference implementation,
Digital Bazaar's did-method-key with Ed25519 Multikey. The spec's optional
``enableEncryptionKeyDerivation`` (an X25519 ``keyAgreement`` key derived from the
Ed25519 key) is available with ``key_agreement=True``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import base58

from gateway.errors import DidError

ED25519_PUB = 0xED
X25519_PUB = 0xEC

# Names of the multicodecs people are most likely to paste, for error messages.
_KNOWN_CODECS = {
    0xE7: "secp256k1-pub",
    0xEC: "x25519-pub",
    0xED: "ed25519-pub",
    0x1200: "p256-pub",
    0x1201: "p384-pub",
    0x1202: "p521-pub",
    0x1205: "rsa-pub",
    0xEB51: "jwk_jcs-pub",
}

DID_CONTEXT = "https://www.w3.org/ns/did/v1"
MULTIKEY_CONTEXT = "https://w3id.org/security/multikey/v1"
_FIELD_P = 2**255 - 19


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes) -> tuple[int, int]:
    """Return (value, bytes consumed) of the unsigned varint at the start of ``data``."""
    value = 0
    for i, byte in enumerate(data[:9]):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
    raise DidError("multicodec prefix is not a valid varint")


def encode_multikey(codec: int, key: bytes) -> str:
    """Multibase base58btc of ``varint(codec) || key``: the ``publicKeyMultibase`` value."""
    return "z" + base58.b58encode(_varint(codec) + key).decode("ascii")


def decode_multikey(value: str) -> tuple[int, bytes]:
    """Split a base58btc multibase multikey into (multicodec, raw key bytes)."""
    if not value:
        raise DidError("empty multibase value")
    if value[0] != "z":
        raise DidError(
            f"multibase prefix {value[0]!r} is not supported: did:key uses 'z' (base58btc)"
        )
    try:
        raw = base58.b58decode(value[1:])
    except ValueError as exc:
        raise DidError(f"{value!r} is not valid base58btc: {exc}") from None
    codec, used = _read_varint(raw)
    return codec, raw[used:]


def ed25519_multikey(public_key: bytes) -> str:
    """The ``z6Mk…`` multikey of a raw 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise DidError(f"an Ed25519 public key is 32 bytes, not {len(public_key)}")
    return encode_multikey(ED25519_PUB, public_key)


def did_from_public_key(public_key: bytes) -> str:
    """``did:key`` of a raw 32-byte Ed25519 public key."""
    return "did:key:" + ed25519_multikey(public_key)


@dataclass(frozen=True)
class DidKey:
    """A parsed Ed25519 did:key."""

    did: str
    multikey: str
    public_key: bytes

    @property
    def kid(self) -> str:
        """The DID URL of its only signing key, as used in JWS ``kid`` and COSE ``kid``."""
        return f"{self.did}#{self.multikey}"


@functools.lru_cache(maxsize=4096)
def parse_did_key(did: str) -> DidKey:
    """Parse and check an Ed25519 did:key; raise :class:`DidError` saying what is wrong.

    Cached: the same few devices send many messages, and parsing is pure.
    """
    prefix = "did:key:"
    if not did.startswith(prefix):
        raise DidError(f"{did!r} is not a did:key (it must start with 'did:key:')")
    multikey = did[len(prefix) :]
    if not multikey or any(c in multikey for c in ":/?#"):
        raise DidError(f"{did!r} is not a did:key: expected did:key:<multibase key>")
    try:
        codec, key = decode_multikey(multikey)
    except DidError as exc:
        raise DidError(f"{did!r} is not a valid did:key: {exc}") from None
    if codec != ED25519_PUB:
        name = _KNOWN_CODECS.get(codec, "unknown")
        raise DidError(
            f"{did!r} holds a {name} key (multicodec {codec:#x}); "
            "didgw supports did:key with ed25519-pub (0xed) only"
        )
    if len(key) != 32:
        raise DidError(f"{did!r}: an Ed25519 public key is 32 bytes, this one is {len(key)}")
    return DidKey(did=did, multikey=multikey, public_key=key)


def ed25519_to_x25519(public_key: bytes) -> bytes:
    """Map an Ed25519 public key to its X25519 (Montgomery) form: u = (1 + y) / (1 - y).

    The birational map of RFC 7748 section 4.1, which the did:key spec uses to
    derive the keyAgreement key. pyca/cryptography does not expose it.
    """
    y = int.from_bytes(public_key, "little") & ((1 << 255) - 1)
    if y >= _FIELD_P or y == 1:
        raise DidError("Ed25519 public key is not a valid curve point encoding")
    u = (1 + y) * pow(1 - y, _FIELD_P - 2, _FIELD_P) % _FIELD_P
    return u.to_bytes(32, "little")


def resolve_did_key(did: str, *, key_agreement: bool = False) -> dict[str, Any]:
    """The DID document of an Ed25519 did:key, as the did:key spec builds it."""
    parsed = parse_did_key(did)
    vm_id = parsed.kid
    document: dict[str, Any] = {
        "@context": [DID_CONTEXT, MULTIKEY_CONTEXT],
        "id": did,
        "verificationMethod": [
            {
                "id": vm_id,
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": parsed.multikey,
            }
        ],
        "authentication": [vm_id],
        "assertionMethod": [vm_id],
        "capabilityDelegation": [vm_id],
        "capabilityInvocation": [vm_id],
    }
    if key_agreement:
        x_multikey = encode_multikey(X25519_PUB, ed25519_to_x25519(parsed.public_key))
        document["keyAgreement"] = [
            {
                "id": f"{did}#{x_multikey}",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": x_multikey,
            }
        ]
    return document

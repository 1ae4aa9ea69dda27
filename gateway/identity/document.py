"""Reading DID documents: find a verification method, check its relationship, get its key.

DID documents arrive from did:key (computed), did:web (fetched) and universal
resolvers (fetched), so everything here treats the document as untrusted JSON
and refuses, with a reason, anything it does not understand. Only Ed25519 keys
are accepted, in the encodings DID documents use for them in practice.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from typing import Any

import base58

from gateway.errors import DidError, DidgwError, SignatureError
from gateway.identity.did_key import ED25519_PUB, decode_multikey

RELATIONSHIPS = (
    "authentication",
    "assertionMethod",
    "keyAgreement",
    "capabilityInvocation",
    "capabilityDelegation",
)

_MULTIBASE_TYPES = {"Multikey", "Ed25519VerificationKey2020"}
_JWK_TYPES = {"JsonWebKey", "JsonWebKey2020"}


def split_did_url(did_url: str) -> tuple[str, str]:
    """Split ``did:method:id#fragment`` into the DID and the fragment; both must be present."""
    did, sep, fragment = did_url.partition("#")
    if not sep or not fragment:
        raise DidError(f"{did_url!r} is not a DID URL with a key fragment (did:…#key-id)")
    check_did_syntax(did)
    return did, fragment


# DID Core 1.0 section 3.1: did:method-name:method-specific-id
_DID_RE = re.compile(
    r"did:([a-z0-9]+):((?:[A-Za-z0-9._-]|%[0-9A-Fa-f]{2})*(?::(?:[A-Za-z0-9._-]|%[0-9A-Fa-f]{2})*)*)"
)


def check_did_syntax(did: str) -> str:
    """Return the DID's method name if ``did`` has the DID Core syntax ``did:method:id``."""
    if type(did) is str and len(did) <= 4096:
        return _checked_did(did)  # every reading names its DID twice: remember valid ones
    return _check_did_syntax(did)


@functools.lru_cache(maxsize=4096)
def _checked_did(did: str) -> str:
    return _check_did_syntax(did)


def _check_did_syntax(did: str) -> str:
    match = _DID_RE.fullmatch(did)
    if match is None or not match.group(2) or match.group(2).endswith(":"):
        raise DidError(
            f"{did!r} is not a DID (expected did:<method>:<identifier>, "
            "method in lower-case letters and digits)"
        )
    return match.group(1)


def _entries(document: dict[str, Any], name: str) -> list[Any]:
    """A list-valued document property; anything else (absent, malformed) counts as empty."""
    value = document.get(name)
    return list(value) if isinstance(value, list) else []


def _absolute(doc_id: str, ref: str) -> str:
    return doc_id + ref if ref.startswith("#") else ref


def find_verification_method(document: dict[str, Any], vm_id: str) -> dict[str, Any]:
    """The verification method ``vm_id``, listed or embedded anywhere in the document."""
    doc_id = str(document.get("id"))
    candidates = _entries(document, "verificationMethod")
    for rel in RELATIONSHIPS:
        candidates.extend(_entries(document, rel))
    for method in candidates:
        ref = method.get("id") if isinstance(method, dict) else None
        if isinstance(ref, str) and _absolute(doc_id, ref) == vm_id:
            return method  # type: ignore[no-any-return]
    raise SignatureError(f"DID document {doc_id} has no verification method {vm_id}")


def relationship_ids(document: dict[str, Any], relationship: str) -> list[str]:
    """Absolute ids of the methods listed (by reference or embedded) under ``relationship``."""
    if relationship not in RELATIONSHIPS:
        raise ValueError(f"unknown verification relationship {relationship!r}")
    doc_id = str(document.get("id"))
    ids = []
    for entry in _entries(document, relationship):
        ref = entry.get("id") if isinstance(entry, dict) else entry
        if isinstance(ref, str):
            ids.append(_absolute(doc_id, ref))
    return ids


def is_authorized(document: dict[str, Any], vm_id: str, relationship: str) -> bool:
    """Whether ``vm_id`` is listed (by reference or embedded) under ``relationship``."""
    return vm_id in relationship_ids(document, relationship)


def usable_ed25519_methods(document: dict[str, Any], relationship: str) -> list[str]:
    """Ids of the methods under ``relationship`` that hold an Ed25519 key didgw can use."""
    usable = []
    for vm_id in relationship_ids(document, relationship):
        try:
            ed25519_key_of(find_verification_method(document, vm_id))
        except DidgwError:
            continue  # malformed or another key type; another method may still do
        usable.append(vm_id)
    return usable


def ed25519_key_of(method: dict[str, Any]) -> bytes:
    """The raw 32-byte Ed25519 public key of a verification method, or a clear refusal."""
    vm_type = method.get("type")
    vm_id = method.get("id")
    if vm_type in _MULTIBASE_TYPES and isinstance(method.get("publicKeyMultibase"), str):
        codec, key = decode_multikey(method["publicKeyMultibase"])
        if codec != ED25519_PUB:
            raise SignatureError(f"verification method {vm_id} is not an Ed25519 key")
    elif vm_type in _JWK_TYPES and isinstance(method.get("publicKeyJwk"), dict):
        jwk = method["publicKeyJwk"]
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or "d" in jwk:
            raise SignatureError(
                f"verification method {vm_id} is not a public Ed25519 JWK (kty OKP, crv Ed25519)"
            )
        x = str(jwk.get("x", ""))
        try:
            key = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
        except (binascii.Error, ValueError):
            raise SignatureError(f"verification method {vm_id}: JWK x is not base64url") from None
    elif vm_type == "Ed25519VerificationKey2018" and isinstance(method.get("publicKeyBase58"), str):
        try:
            key = base58.b58decode(method["publicKeyBase58"])
        except ValueError:
            raise SignatureError(f"verification method {vm_id}: bad publicKeyBase58") from None
    else:
        raise SignatureError(
            f"verification method {vm_id} has type {vm_type!r}, which didgw cannot use "
            "(Multikey, Ed25519VerificationKey2020/2018 or an Ed25519 JsonWebKey)"
        )
    if len(key) != 32:
        raise SignatureError(f"verification method {vm_id}: Ed25519 key must be 32 bytes")
    return key

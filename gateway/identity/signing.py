"""Signing recipes: the one place where didgw signs and checks signatures.

Everything else (MQTT readings, CoAP/COSE readings, credentials, checkpoints)
calls these, never raw Ed25519:

* :class:`Signer` signs with a private key under a DID URL (``kid``);
* :func:`verify_detached` checks a signature by a ``kid``: it resolves the DID,
  finds the verification method, checks that the method is authorised for the
  relationship asked (``authentication`` for a device proving itself,
  ``assertionMethod`` for statements such as readings and credentials) and
  verifies the Ed25519 signature. Any failure raises :class:`SignatureError`
  with the reason;
* :func:`sign_jws` / :func:`verify_jws` wrap the same in a compact JWS.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from gateway.errors import DidgwError, SignatureError
from gateway.identity.did_key import did_from_public_key, ed25519_multikey
from gateway.identity.document import (
    ed25519_key_of,
    find_verification_method,
    is_authorized,
    split_did_url,
)
from gateway.identity.keystore import public_bytes
from gateway.identity.resolver import Resolution, Resolver, Unreachable

# The product signs JWS with alg "EdDSA" (RFC 8037), which every JOSE stack
# deployed on devices understands. RFC 9864 deprecates it in favour of the
# fully specified "Ed25519" (same signature), and joserfc warns on each use.
# Both are accepted on verification; the warning is noise for us.
warnings.filterwarnings("ignore", message="EdDSA is deprecated via RFC 9864")

JWS_ALGORITHMS = ("EdDSA", "Ed25519")


class SignerUnavailable(SignatureError):
    """The signature could not be checked because the signer's DID document cannot be
    fetched now (and no fresh-enough copy is cached). Nothing is proven either way: a
    caller may answer "try again later" rather than "forged"."""

    code = "signer_unavailable"


@dataclass(frozen=True)
class Signer:
    """A private key and the DID URL that names its public half."""

    private_key: Ed25519PrivateKey
    kid: str

    @classmethod
    def for_did_key(cls, private_key: Ed25519PrivateKey) -> Signer:
        """The signer of a did:key: ``kid`` is ``did:key:z…#z…``."""
        raw = public_bytes(private_key)
        return cls(private_key, f"{did_from_public_key(raw)}#{ed25519_multikey(raw)}")

    @property
    def did(self) -> str:
        return self.kid.partition("#")[0]

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)


@dataclass(frozen=True)
class VerifiedKey:
    """A public key found for a ``kid`` and allowed for the relationship that was asked."""

    kid: str
    did: str
    public_key: Ed25519PublicKey
    resolution: Resolution


def resolve_key(kid: str, *, resolver: Resolver, relationship: str, now: float) -> VerifiedKey:
    """Resolve ``kid`` (a DID URL) to an Ed25519 key authorised for ``relationship``."""
    did, _ = split_did_url(kid)
    resolution = resolver.resolve(did, now=now)
    method = find_verification_method(resolution.document, kid)
    if not is_authorized(resolution.document, kid, relationship):
        raise SignatureError(f"{kid} is not authorised for {relationship} in the DID document")
    key = Ed25519PublicKey.from_public_bytes(ed25519_key_of(method))
    return VerifiedKey(kid, did, key, resolution)


def verify_detached(
    kid: str,
    message: bytes,
    signature: bytes,
    *,
    resolver: Resolver,
    relationship: str,
    now: float,
) -> VerifiedKey:
    """Check that ``signature`` over ``message`` was made by ``kid``; return the key."""
    verified = resolve_key(kid, resolver=resolver, relationship=relationship, now=now)
    try:
        verified.public_key.verify(signature, message)
    except InvalidSignature:
        raise SignatureError(f"signature by {kid} does not verify") from None
    return verified


@dataclass(frozen=True)
class VerifiedJws:
    """A compact JWS whose signature checked out."""

    payload: bytes
    header: dict[str, Any]
    signer: VerifiedKey


def sign_jws(payload: bytes, signer: Signer, *, headers: Mapping[str, Any] | None = None) -> str:
    """Compact JWS, ``alg`` EdDSA, ``kid`` the signer's DID URL."""
    from joserfc import jws
    from joserfc.jwk import OKPKey

    protected = {"alg": "EdDSA", "kid": signer.kid, **(headers or {})}
    return jws.serialize_compact(
        protected, payload, OKPKey.import_key(signer.private_key), algorithms=["EdDSA"]
    )


def verify_jws(
    token: str | bytes, *, resolver: Resolver, relationship: str, now: float
) -> VerifiedJws:
    """Verify a compact JWS whose ``kid`` is a DID URL; refuse anything unexpected."""
    from joserfc import jws
    from joserfc.errors import JoseError
    from joserfc.jwk import OKPKey

    try:
        obj = jws.extract_compact(_as_bytes(token))
        header = obj.headers()
    except (JoseError, ValueError) as exc:
        raise SignatureError(f"not a compact JWS: {exc}") from None
    alg = header.get("alg")
    if alg not in JWS_ALGORITHMS:
        raise SignatureError(f"JWS alg {alg!r} refused; expected EdDSA")
    if "crit" in header:
        raise SignatureError(f"JWS has critical header parameters {header['crit']!r}; refused")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise SignatureError("JWS header has no kid (the signer's DID URL)")
    try:
        signer = resolve_key(kid, resolver=resolver, relationship=relationship, now=now)
    except SignatureError:
        raise
    except Unreachable as exc:
        raise SignerUnavailable(f"cannot check JWS by {kid}: {exc}") from None
    except DidgwError as exc:
        raise SignatureError(f"cannot check JWS by {kid}: {exc}") from None
    try:
        valid = jws.validate_compact(obj, OKPKey.import_key(signer.public_key), algorithms=[alg])
    except JoseError as exc:
        raise SignatureError(f"JWS by {kid} refused: {exc.description or exc}") from None
    if not valid:
        raise SignatureError(f"JWS signature by {kid} does not verify")
    return VerifiedJws(obj.payload, dict(header), signer)


def _as_bytes(token: str | bytes) -> bytes:
    return token.encode("ascii") if isinstance(token, str) else token

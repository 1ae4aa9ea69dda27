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
* :func:`sign_jws` / :func:`verify_jws` wrap the same in a compact JWS, under the
  header rules of :func:`jws_header` and :func:`check_jws_header` (the only place that
  says what a didgw JWS header holds; the readings' fast path in ``auth/strict.py``
  applies the same function).

Verification is the ingest hot path (every reading), so two things are done
once rather than per signature: a ``did:key`` key is resolved once per process
(its document is a pure function of the DID, so the result cannot go stale),
and the Ed25519 check itself runs on libsodium (PyNaCl), which verifies about
twice as fast as OpenSSL through ``cryptography`` (bench/jws_verify.py).
"""

from __future__ import annotations

import base64
import functools
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import OKPKey
from joserfc.jws import JWSRegistry
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

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

JWS_ALG = "EdDSA"  # what didgw signs with
JWS_ALGORITHMS = (JWS_ALG, "Ed25519")  # what it accepts


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
    raw: bytes = b""  # the 32-byte public key, for libsodium

    @functools.cached_property
    def jwk(self) -> OKPKey:
        """The key as joserfc takes it (made once per key, not per signature)."""
        return OKPKey.import_key(self.public_key)

    @functools.cached_property
    def sodium(self) -> VerifyKey:
        """The key as libsodium takes it."""
        return VerifyKey(self.raw)

    def verifies(self, signature: bytes, message: bytes) -> bool:
        """True when ``signature`` over ``message`` is this key's."""
        return _sodium_verifies(self.sodium, signature, message)


#: did:key keys already resolved, by (kid, relationship). Bounded: cleared when full.
_DID_KEY_CACHE: dict[tuple[str, str], VerifiedKey] = {}
_DID_KEY_CACHE_MAX = 65_536


def resolve_key(kid: str, *, resolver: Resolver, relationship: str, now: float) -> VerifiedKey:
    """Resolve ``kid`` (a DID URL) to an Ed25519 key authorised for ``relationship``."""
    cached = _DID_KEY_CACHE.get((kid, relationship))
    if cached is not None:
        return cached
    did, _ = split_did_url(kid)
    resolution = resolver.resolve(did, now=now)
    method = find_verification_method(resolution.document, kid)
    if not is_authorized(resolution.document, kid, relationship):
        raise SignatureError(f"{kid} is not authorised for {relationship} in the DID document")
    raw = ed25519_key_of(method)
    verified = VerifiedKey(kid, did, Ed25519PublicKey.from_public_bytes(raw), resolution, raw)
    if did.startswith("did:key:") and resolution.source == "did:key":
        if len(_DID_KEY_CACHE) >= _DID_KEY_CACHE_MAX:
            _DID_KEY_CACHE.clear()
        _DID_KEY_CACHE[(kid, relationship)] = verified
    return verified


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
    if not verified.verifies(signature, message):
        raise SignatureError(f"signature by {kid} does not verify")
    return verified


@dataclass(frozen=True)
class VerifiedJws:
    """A compact JWS whose signature checked out."""

    payload: bytes
    header: dict[str, Any]
    signer: VerifiedKey


# -- the JWS header rules: what didgw puts in a header, and what it accepts ----------


def jws_header(signer: Signer, headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The protected header of a JWS by ``signer``: ``alg`` EdDSA, ``kid`` its DID URL, then
    ``headers`` (e.g. ``typ``), which may not set ``alg``, ``kid`` or ``crit``."""
    extra = dict(headers or {})
    if extra.keys() & {"alg", "kid", "crit"}:
        raise ValueError("alg, kid and crit are set by the header rules, not by the caller")
    return {"alg": JWS_ALG, "kid": signer.kid, **extra}


def check_jws_header(header: Mapping[str, Any], *, kid_required: bool = True) -> str:
    """Refuse (:class:`SignatureError`) a header didgw does not accept: an ``alg`` other than
    EdDSA/Ed25519, any ``crit`` (RFC 7515 §4.1.11: we understand no extension, e.g. RFC 7797's
    unencoded payload), and with ``kid_required`` a missing ``kid``. Returns the ``kid``
    ("" when it is not required and absent)."""
    alg = header.get("alg")
    if alg not in JWS_ALGORITHMS:
        raise SignatureError(f"JWS alg {alg!r} refused; expected EdDSA")
    if "crit" in header:
        raise SignatureError(f"JWS has critical header parameters {header['crit']!r}; refused")
    kid = header.get("kid")
    if not isinstance(kid, str):
        if kid_required:
            raise SignatureError("JWS header has no kid (the signer's DID URL)")
        return ""
    return kid


def sign_jws(payload: bytes, signer: Signer, *, headers: Mapping[str, Any] | None = None) -> str:
    """Compact JWS (RFC 7515 §7.1) with the header of :func:`jws_header`.

    Written out here rather than through joserfc: a grant signs two of these per handshake,
    and joserfc's key import and checks cost three times the Ed25519 signature itself. The
    result is byte for byte joserfc's (the same compact JSON; Ed25519 is deterministic):
    tests/unit/test_signing.py compares them."""
    header = json.dumps(jws_header(signer, headers), ensure_ascii=True, separators=(",", ":"))
    signing_input = f"{_b64u(header.encode('ascii'))}.{_b64u(payload)}"
    return f"{signing_input}.{_b64u(signer.sign(signing_input.encode('ascii')))}"


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _SodiumEd25519(JWSAlgModel):
    """joserfc's Ed25519 JWS algorithm with the check done by libsodium (signing stays
    with joserfc's own). Registered under both names, "EdDSA" and "Ed25519"."""

    description = "Ed25519 (libsodium)"
    key_type = "OKP"

    def __init__(self, name: str) -> None:
        self.name = name

    def sign(self, msg: bytes, key: Any) -> bytes:
        raise NotImplementedError("didgw signs with joserfc's own algorithm")

    def verify(self, msg: bytes, sig: bytes, key: Any) -> bool:
        public = key.raw_value if isinstance(key, OKPKey) else None
        if not isinstance(public, Ed25519PublicKey):
            return False
        return _sodium_verifies(VerifyKey(public.public_bytes_raw()), sig, msg)


def _sodium_verifies(key: VerifyKey, signature: bytes, message: bytes) -> bool:
    if len(signature) != 64:  # libsodium would read a shorter one as part of the message
        return False
    try:
        key.verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


class _VerifyRegistry(JWSRegistry):
    algorithms = {name: _SodiumEd25519(name) for name in JWS_ALGORITHMS}  # noqa: RUF012


_REGISTRY = _VerifyRegistry(algorithms=JWS_ALGORITHMS)


def verify_jws(
    token: str | bytes, *, resolver: Resolver, relationship: str, now: float
) -> VerifiedJws:
    """Verify a compact JWS whose ``kid`` is a DID URL; refuse anything unexpected."""
    from joserfc import jws
    from joserfc.errors import JoseError

    obj, header = _extract(token)
    kid = check_jws_header(header)
    try:
        signer = resolve_key(kid, resolver=resolver, relationship=relationship, now=now)
    except SignatureError:
        raise
    except Unreachable as exc:
        raise SignerUnavailable(f"cannot check JWS by {kid}: {exc}") from None
    except DidgwError as exc:
        raise SignatureError(f"cannot check JWS by {kid}: {exc}") from None
    try:
        valid = jws.validate_compact(obj, signer.jwk, registry=_REGISTRY)
    except JoseError as exc:
        raise SignatureError(f"JWS by {kid} refused: {exc.description or exc}") from None
    if not valid:
        raise SignatureError(f"JWS signature by {kid} does not verify")
    return VerifiedJws(obj.payload, dict(header), signer)


def _extract(token: str | bytes) -> tuple[Any, dict[str, Any]]:
    """The parsed compact JWS (not yet verified) and its protected header."""
    from joserfc import jws
    from joserfc.errors import JoseError

    try:
        obj = jws.extract_compact(token.encode("ascii") if isinstance(token, str) else token)
        return obj, dict(obj.headers())
    except (JoseError, ValueError) as exc:
        raise SignatureError(f"not a compact JWS: {exc}") from None


def verify_jws_with_key(token: str | bytes, public_key: bytes) -> VerifiedJws:
    """Verify a compact JWS against a given raw Ed25519 public key (no DID involved).

    For keys carried inside a credential (an SD-JWT's ``cnf.jwk``): the caller has
    already established whose key it is. Same refusals as :func:`verify_jws`.
    """
    from joserfc import jws
    from joserfc.errors import JoseError

    obj, header = _extract(token)
    check_jws_header(header, kid_required=False)
    if len(public_key) != 32:
        raise SignatureError("an Ed25519 public key is 32 bytes")
    key = OKPKey.import_key(Ed25519PublicKey.from_public_bytes(public_key))
    try:
        valid = jws.validate_compact(obj, key, registry=_REGISTRY)
    except JoseError as exc:
        raise SignatureError(f"JWS refused: {exc.description or exc}") from None
    if not valid:
        raise SignatureError("JWS signature does not verify")
    verified = VerifiedKey("", "", Ed25519PublicKey.from_public_bytes(public_key), _NO_RESOLUTION)
    return VerifiedJws(obj.payload, dict(header), verified)


_NO_RESOLUTION = Resolution("", {}, "jwk", 0.0)

"""OpenID for Verifiable Credential Issuance 1.0, pre-authorized code flow: the issuer side.

What a wallet sees (``docs/protocol/openid4vci.md`` says it for wallet makers):

1. an offer URI ``openid-credential-offer://?credential_offer_uri=<base>/oid4vci/offers/<id>``,
   and a PIN told to the person another way;
2. the credential issuer metadata and the authorization server metadata at their
   well-known paths (:func:`issuer_metadata`, :func:`authorization_server_metadata`);
3. the token endpoint: the pre-authorized code and the PIN for an access token
   (:meth:`Issuance.token`, over :class:`~gateway.credentials.offers.CredentialOffers`);
4. the nonce endpoint: a ``c_nonce``, single use (:class:`NoncePool`);
5. the credential endpoint: the access token and a proof JWT signed by the wallet's key
   (:func:`check_proof`); the answer is an SD-JWT VC (``dc+sd-jwt``) bound to that key,
   about the did:key of that key, issued by :class:`CredentialIssuer` as any other.

Only Ed25519 (``EdDSA``) keys are taken, named by a did:key DID URL (``kid``) or given as
a public ``jwk``; nothing the wallet names is fetched (no ``x5c``, no ``jku``, no other
DID method). Errors are :class:`Oid4vciError`: the OAuth/OpenID4VCI error code, a
sentence saying what and why, and the HTTP status to answer with.

Sans-IO: the clock and randomness come in as arguments.
"""

from __future__ import annotations

import json
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from gateway.credentials.issuer import CredentialIssuer
from gateway.credentials.kinds import KINDS
from gateway.credentials.offers import (
    ACCESS_TOKEN_SECONDS,
    CredentialOffers,
    OfferRefused,
    code_of,
)
from gateway.credentials.sd_jwt import b64u_decode
from gateway.errors import CredentialError, DidgwError, SignatureError
from gateway.identity.did_key import did_from_public_key, parse_did_key
from gateway.identity.signing import JWS_ALGORITHMS, Signer, verify_jws_with_key

RandomBytes = Callable[[int], bytes]

FORMAT = "dc+sd-jwt"
PROOF_TYP = "openid4vci-proof+jwt"
PRE_AUTHORIZED_GRANT = "urn:ietf:params:oauth:grant-type:pre-authorized_code"
OFFER_SCHEME = "openid-credential-offer://"
TOKEN_PATH = "/oid4vci/token"  # noqa: S105 - a path, not a secret
NONCE_PATH = "/oid4vci/nonce"
CREDENTIAL_PATH = "/oid4vci/credential"
OFFERS_PATH = "/oid4vci/offers/"

MAX_PROOF_CHARS = 8192
PROOF_MAX_AGE_SECONDS = 300
PROOF_MAX_AHEAD_SECONDS = 60
NONCE_SECONDS = 120
MAX_PENDING_NONCES = 4096
#: Header parameters that name a key somewhere else or assert what we cannot check.
REFUSED_HEADERS = ("x5c", "x5u", "x5t", "x5t#S256", "jku", "trust_chain", "key_attestation")

DISPLAY = {
    "household": "Household membership",
    "facility-manager": "Facility manager",
    "device-owner": "Device ownership",
    "vouch": "Device vouch",
}
CLAIM_DISPLAY = {
    "household": "Household (DID)",
    "role": "Role (seller or buyer)",
    "name": "Name",
    "site": "Site",
    "device": "Device (DID)",
    "kind": "Device kind",
}


class Oid4vciError(CredentialError):
    """A refusal to a wallet: ``error`` (the protocol's code) and ``status`` (HTTP)."""

    code = "oid4vci"

    def __init__(self, error: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.error, self.status = error, status

    def to_json(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.message}


# -- metadata and offers ----------------------------------------------------------------


def issuer_metadata(base_url: str) -> dict[str, Any]:
    """``/.well-known/openid-credential-issuer``: one configuration per kind, id = kind."""
    configurations = {}
    for kind in KINDS.values():
        claims = [
            {
                "path": [name],
                "mandatory": name in kind.required,
                "display": [{"name": CLAIM_DISPLAY.get(name, name), "locale": "en"}],
            }
            for name in kind.required + kind.optional
        ]
        configurations[kind.name] = {
            "format": FORMAT,
            "vct": kind.vct,
            "cryptographic_binding_methods_supported": ["jwk", "did:key"],
            "credential_signing_alg_values_supported": ["EdDSA"],
            "proof_types_supported": {"jwt": {"proof_signing_alg_values_supported": ["EdDSA"]}},
            "credential_metadata": {
                "display": [{"name": DISPLAY[kind.name], "locale": "en"}],
                "claims": claims,
            },
        }
    return {
        "credential_issuer": base_url,
        "credential_endpoint": base_url + CREDENTIAL_PATH,
        "nonce_endpoint": base_url + NONCE_PATH,
        "display": [{"name": "didgw gateway", "locale": "en"}],
        "credential_configurations_supported": configurations,
    }


def authorization_server_metadata(base_url: str) -> dict[str, Any]:
    """``/.well-known/oauth-authorization-server`` (RFC 8414): the token endpoint only."""
    return {
        "issuer": base_url,
        "token_endpoint": base_url + TOKEN_PATH,
        "grant_types_supported": [PRE_AUTHORIZED_GRANT],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["none"],
        "pre-authorized_grant_anonymous_access_supported": True,
    }


def offer_url(base_url: str, offer_id: str) -> str:
    return base_url + OFFERS_PATH + offer_id


def offer_uri(base_url: str, offer_id: str) -> str:
    """The URI a wallet scans: the offer by reference."""
    query = urllib.parse.urlencode({"credential_offer_uri": offer_url(base_url, offer_id)})
    return f"{OFFER_SCHEME}?{query}"


def offer_json(base_url: str, kind: str, offer_id: str) -> dict[str, Any]:
    """The credential offer object served at :func:`offer_url`."""
    return {
        "credential_issuer": base_url,
        "credential_configuration_ids": [kind],
        "grants": {
            PRE_AUTHORIZED_GRANT: {
                "pre-authorized_code": code_of(offer_id),
                "tx_code": {
                    "input_mode": "numeric",
                    "length": 6,
                    "description": "The PIN shown to whoever made this offer for you",
                },
            }
        },
    }


def offer_qr_svg(uri: str) -> str:
    """The offer URI as a QR code, an SVG document (for a page)."""
    import io

    import segno

    out = io.BytesIO()
    segno.make(uri, error="m").save(out, kind="svg", scale=4, border=2, xmldecl=False)
    return out.getvalue().decode("utf-8")


def offer_qr_text(uri: str) -> str:
    """The offer URI as a QR code drawn with block characters (for a terminal)."""
    import io

    import segno

    out = io.StringIO()
    segno.make(uri, error="m").terminal(out, compact=True, border=2)
    return out.getvalue()


# -- nonces -----------------------------------------------------------------------------


class NoncePool:
    """The ``c_nonce`` values given out and not yet used: single use, short-lived, and at
    most ``capacity`` of them; when full of live ones a new one is refused (503), never
    an old one forgotten (that would let a flood of requests break others' issuance
    silently)."""

    def __init__(
        self,
        *,
        capacity: int = MAX_PENDING_NONCES,
        lifetime_ms: int = NONCE_SECONDS * 1000,
        random_bytes: RandomBytes,
    ) -> None:
        self._live: OrderedDict[str, int] = OrderedDict()  # nonce → expiry, oldest first
        self.capacity, self.lifetime_ms = capacity, lifetime_ms
        self._random = random_bytes

    def __len__(self) -> int:
        return len(self._live)

    def issue(self, now_ms: int) -> str:
        self._drop_expired(now_ms)
        if len(self._live) >= self.capacity:
            raise Oid4vciError(
                "temporarily_unavailable",
                "too many nonces are waiting to be used; try again in a minute",
                status=503,
            )
        from gateway.credentials.offers import b64u

        nonce = b64u(self._random(24))
        self._live[nonce] = now_ms + self.lifetime_ms
        return nonce

    def take(self, nonce: str, now_ms: int) -> bool:
        """True once for a nonce issued here and still live; False otherwise."""
        expires = self._live.pop(nonce, None)
        return expires is not None and now_ms < expires

    def _drop_expired(self, now_ms: int) -> None:
        while self._live:
            nonce, expires = next(iter(self._live.items()))
            if expires > now_ms:
                return
            del self._live[nonce]


# -- the proof of possession ----------------------------------------------------------------


@dataclass(frozen=True)
class ProofKey:
    """The wallet's key, proven by a proof JWT: the holder."""

    public_key: bytes
    did: str  # its did:key
    by: str  # "kid" or "jwk": how the proof named it


def check_proof(jwt: Any, *, audience: str, nonces: NoncePool, now: float) -> ProofKey:
    """Check a ``jwt`` proof (OpenID4VCI 1.0 §F.1) and return the key it proves; raise
    :class:`Oid4vciError` (``invalid_proof`` or ``invalid_nonce``) saying what is wrong.

    The nonce is taken (used up) only once everything else holds."""
    if not isinstance(jwt, str) or not 0 < len(jwt) <= MAX_PROOF_CHARS:
        raise _bad_proof(f"the proof must be a compact JWT of at most {MAX_PROOF_CHARS} chars")
    parts = jwt.split(".")
    if len(parts) != 3:
        raise _bad_proof("the proof is not a compact JWT (three dot-separated parts)")
    header = _json_part(parts[0], "header")
    if header.get("typ") != PROOF_TYP:
        raise _bad_proof(f"the proof's typ is {header.get('typ')!r}; expected {PROOF_TYP!r}")
    if header.get("alg") not in JWS_ALGORITHMS:
        raise _bad_proof(f"the proof's alg {header.get('alg')!r} is refused; expected EdDSA")
    refused = [name for name in REFUSED_HEADERS if name in header]
    if refused:
        raise _bad_proof(
            f"the proof's header has {refused}: only a did:key kid or an Ed25519 jwk "
            "names the key here"
        )
    key, by = _proof_key(header)
    try:
        verified = verify_jws_with_key(jwt, key)
    except SignatureError as exc:
        raise _bad_proof(f"the proof's signature: {exc}") from None
    payload = _json_bytes(verified.payload, "payload")
    aud = payload.get("aud")
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise _bad_proof(f"the proof's aud is {aud!r}; expected this issuer, {audience!r}")
    iat = payload.get("iat")
    if not isinstance(iat, int) or isinstance(iat, bool):
        raise _bad_proof("the proof has no iat (a number of seconds)")
    if iat > now + PROOF_MAX_AHEAD_SECONDS:
        raise _bad_proof("the proof's iat is in the future; check the wallet's clock")
    if iat < now - PROOF_MAX_AGE_SECONDS:
        raise _bad_proof(
            f"the proof was made more than {PROOF_MAX_AGE_SECONDS} seconds ago (iat); "
            "make a fresh one"
        )
    nonce = payload.get("nonce")
    if not isinstance(nonce, str):
        raise Oid4vciError(
            "invalid_nonce", "the proof has no nonce; get a c_nonce from the nonce endpoint"
        )
    if not nonces.take(nonce, int(now * 1000)):
        raise Oid4vciError(
            "invalid_nonce",
            "the proof's nonce is not one this issuer gave, or it was used or has expired; "
            "get a fresh c_nonce from the nonce endpoint",
        )
    return ProofKey(key, did_from_public_key(key), by)


def _proof_key(header: Mapping[str, Any]) -> tuple[bytes, str]:
    kid, jwk = header.get("kid"), header.get("jwk")
    if (kid is None) == (jwk is None):
        raise _bad_proof("the proof's header must name its key by kid (did:key) or jwk, one only")
    if kid is not None:
        if not isinstance(kid, str) or not kid.startswith("did:key:"):
            raise _bad_proof(f"the proof's kid {kid!r} is not a did:key DID URL")
        did, _, fragment = kid.partition("#")
        try:
            parsed = parse_did_key(did)
        except DidgwError as exc:
            raise _bad_proof(f"the proof's kid: {exc}") from None
        if fragment != parsed.multikey:
            raise _bad_proof(f"the proof's kid must be {parsed.kid!r}")
        return parsed.public_key, "kid"
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise _bad_proof("the proof's jwk must be an Ed25519 key (kty OKP, crv Ed25519)")
    if "d" in jwk:
        raise _bad_proof("the proof's jwk holds a private key (d); refused, and never send it")
    x = jwk.get("x")
    try:
        key = b64u_decode(x, "jwk x") if isinstance(x, str) else b""
    except CredentialError as exc:
        raise _bad_proof(f"the proof's {exc}") from None
    if len(key) != 32:
        raise _bad_proof("the proof's jwk x is not a 32-byte Ed25519 public key")
    return key, "jwk"


def _json_part(part: str, what: str) -> dict[str, Any]:
    try:
        raw = b64u_decode(part, f"the proof's {what}")
    except CredentialError as exc:
        raise _bad_proof(str(exc)) from None
    return _json_bytes(raw, what)


def _json_bytes(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        raise _bad_proof(f"the proof's {what} is not JSON") from None
    if not isinstance(value, dict):
        raise _bad_proof(f"the proof's {what} is not a JSON object")
    return value


def _bad_proof(message: str) -> Oid4vciError:
    return Oid4vciError("invalid_proof", message)


# -- the endpoints' work ------------------------------------------------------------------------


class Issuance:
    """The token, nonce, credential and offer endpoints' work, on one database connection
    (used from one thread: the HTTP edge's desk)."""

    def __init__(
        self,
        db: Database,
        issuer: CredentialIssuer,
        signer: Callable[[], Signer],
        *,
        base_url: str,
        random_bytes: RandomBytes,
        nonces: NoncePool | None = None,
    ) -> None:
        self.offers = CredentialOffers(db)
        self.issuer, self.base_url = issuer, base_url
        self._signer, self._random = signer, random_bytes
        self.nonces = nonces or NoncePool(random_bytes=random_bytes)

    def offer(self, offer_id: str, *, now: float) -> dict[str, Any]:
        """The offer object, while the offer can still be redeemed."""
        offer = self.offers.by_id(offer_id)
        if offer is None:
            raise Oid4vciError("not_found", "no such credential offer", status=404)
        reason = offer.refusal(int(now * 1000))
        if reason is not None:
            raise Oid4vciError("invalid_grant", reason, status=410)
        return offer_json(self.base_url, offer.kind, offer_id)

    def token(self, form: Mapping[str, str], *, now: float) -> dict[str, Any]:
        """The token request (form fields) → the token response."""
        grant = form.get("grant_type")
        if grant != PRE_AUTHORIZED_GRANT:
            raise Oid4vciError(
                "unsupported_grant_type",
                f"grant_type {grant!r}: this issuer takes only {PRE_AUTHORIZED_GRANT}",
            )
        code = form.get("pre-authorized_code")
        if not code:
            raise Oid4vciError("invalid_request", "pre-authorized_code is missing")
        try:
            token, _ = self.offers.redeem(
                code, form.get("tx_code"), now_ms=int(now * 1000), random_bytes=self._random
            )
        except OfferRefused as exc:
            raise Oid4vciError(exc.error, exc.message) from None
        return {"access_token": token, "token_type": "Bearer", "expires_in": ACCESS_TOKEN_SECONDS}

    def nonce(self, *, now: float) -> dict[str, Any]:
        return {"c_nonce": self.nonces.issue(int(now * 1000))}

    def credential(self, token: str, request: Any, *, now: float) -> dict[str, Any]:
        """The credential request (JSON) with its access token → the credential response."""
        try:
            offer = self.offers.by_token(token, now_ms=int(now * 1000))
        except OfferRefused as exc:
            raise Oid4vciError(exc.error, exc.message, status=401) from None
        jwt = _request_proof(request, offer.kind)
        holder = check_proof(jwt, audience=self.base_url, nonces=self.nonces, now=now)
        if not self.offers.spend(offer):
            raise Oid4vciError(
                "invalid_token", "this access token was already used for its credential", 401
            )
        try:
            issued = self.issuer.issue(
                offer.kind,
                holder.did,
                offer.claims,
                fmt="sd-jwt",
                signer=self._signer(),
                now=now,
                random_bytes=self._random,
            )
        except CredentialError as exc:
            self.offers.unspend(offer)
            raise Oid4vciError("credential_request_denied", str(exc), status=500) from None
        except BaseException:
            self.offers.unspend(offer)
            raise
        self.offers.issued(offer, issued.record.id)
        return {"credentials": [{"credential": issued.text}]}


def _request_proof(request: Any, kind: str) -> Any:
    """The one proof JWT of a credential request for ``kind``; refuse anything else."""
    if not isinstance(request, dict):
        raise Oid4vciError("invalid_credential_request", "the request body is not a JSON object")
    if "credential_identifier" in request:
        raise Oid4vciError(
            "unknown_credential_identifier",
            "this issuer gives no credential identifiers; ask by credential_configuration_id",
        )
    if "credential_response_encryption" in request:
        raise Oid4vciError(
            "invalid_encryption_parameters", "this issuer does not encrypt credential responses"
        )
    wanted = request.get("credential_configuration_id")
    if not isinstance(wanted, str):
        raise Oid4vciError("invalid_credential_request", "credential_configuration_id is missing")
    if wanted != kind:
        raise Oid4vciError(
            "unknown_credential_configuration",
            f"this access token is for a {kind!r} credential, not {wanted!r}",
        )
    proofs, proof = request.get("proofs"), request.get("proof")
    if proofs is not None and proof is not None:
        raise Oid4vciError("invalid_credential_request", "send proofs or proof, not both")
    if proofs is not None:
        jwts = proofs.get("jwt") if isinstance(proofs, dict) else None
        if not isinstance(proofs, dict) or set(proofs) != {"jwt"} or not isinstance(jwts, list):
            raise Oid4vciError("invalid_proof", 'proofs must be {"jwt": [one proof JWT]}')
        if len(jwts) != 1:
            raise Oid4vciError(
                "invalid_proof", f"one proof JWT per request (no batch issuance), got {len(jwts)}"
            )
        return jwts[0]
    if proof is not None:
        if not isinstance(proof, dict) or proof.get("proof_type") != "jwt":
            raise Oid4vciError("invalid_proof", 'proof must be {"proof_type": "jwt", "jwt": …}')
        return proof.get("jwt")
    raise Oid4vciError(
        "invalid_proof", "a proof of possession of the wallet's key is required (proofs.jwt)"
    )

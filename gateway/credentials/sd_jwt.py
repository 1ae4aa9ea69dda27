"""SD-JWT VC (IETF RFC 9901 and SD-JWT-based Verifiable Credentials): issue, present, verify.

Why a module of our own rather than a library: the reference implementation on PyPI
(``sd-jwt``) brings a second JOSE stack (jwcrypto) beside joserfc and has not followed
the RFC's final text; what SD-JWT adds on top of JWS is small (disclosures, digests,
the key-binding JWT) and is written here against the RFC, with every JWS going through
:mod:`gateway.identity.signing`.

Form: ``<issuer-signed JWT>~<disclosure>~…~<key-binding JWT>``. A disclosure is
base64url of the JSON array ``[salt, name, value]`` (``[salt, value]`` for an array
element); its digest is base64url(SHA-256(the disclosure's ASCII)), listed in ``_sd``
(or as ``{"...": digest}`` in an array).

Refused, as the RFC requires: a digest that appears more than once, a disclosure that
no digest references, a disclosure that would overwrite a claim or is named ``_sd`` or
``...``, an ``_sd_alg`` other than ``sha-256``; a key-binding JWT that is missing, not
``typ`` ``kb+jwt``, not signed by the ``cnf`` key, over another nonce or audience, with
a wrong ``sd_hash`` or an ``iat`` out of the window; an issuer JWT whose ``typ`` is not
``dc+sd-jwt`` (or the transitional ``vc+sd-jwt``), without ``vct``, expired or not yet
valid.

**Trust first.** With ``trusted_issuers`` (the gateway authenticating a person), the
issuer JWT's ``kid`` and ``iss`` are read before anything is verified, and a credential
of any other issuer is refused (:class:`UntrustedIssuer`) before its issuer's DID is
resolved or its status list fetched: whoever sends a presentation must not be able to
make the gateway connect to a host of their choosing.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.credentials.status_source import StatusLists
from gateway.errors import CredentialError, DidgwError
from gateway.identity.document import split_did_url
from gateway.identity.resolver import Resolver
from gateway.identity.signing import Signer, sign_jws, verify_jws, verify_jws_with_key

SD_JWT_VC_TYP = "dc+sd-jwt"
ACCEPTED_TYPS = (SD_JWT_VC_TYP, "vc+sd-jwt")
KB_TYP = "kb+jwt"
SD_ALG = "sha-256"
SALT_BYTES = 16
MAX_PRESENTATION_BYTES = 64 * 1024
MAX_DISCLOSURES = 64
#: Claims a disclosure may never set: they steer verification.
RESERVED = frozenset({"_sd", "...", "_sd_alg", "iss", "iat", "exp", "nbf", "cnf", "vct", "status"})


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str, what: str) -> bytes:
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise CredentialError(f"{what} is not base64url") from None
    if b64u(data) != text:
        raise CredentialError(f"{what} is not canonical unpadded base64url")
    return data


def digest_of(encoded: str) -> str:
    return b64u(hashlib.sha256(encoded.encode("ascii")).digest())


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def ed25519_jwk(public_key: bytes) -> dict[str, str]:
    return {"kty": "OKP", "crv": "Ed25519", "x": b64u(public_key)}


class UntrustedIssuer(CredentialError):
    """The credential's issuer is not one the verifier trusts (refused before resolution)."""


@dataclass(frozen=True)
class Disclosure:
    encoded: str
    salt: str
    name: str | None  # None for an array element
    value: Any

    @property
    def digest(self) -> str:
        return digest_of(self.encoded)


def make_disclosure(name: str, value: Any, salt: bytes) -> Disclosure:
    salt_text = b64u(salt)
    return Disclosure(b64u(_json([salt_text, name, value])), salt_text, name, value)


def parse_disclosure(encoded: str) -> Disclosure:
    """Decode one disclosure; refuse anything but ``[salt, name, value]``/``[salt, value]``."""
    try:
        value = json.loads(b64u_decode(encoded, "a disclosure"))
    except ValueError:
        raise CredentialError("a disclosure is not JSON") from None
    if not isinstance(value, list) or len(value) not in (2, 3) or not isinstance(value[0], str):
        raise CredentialError("a disclosure must be [salt, name, value] or [salt, value]")
    if len(value) == 2:
        return Disclosure(encoded, value[0], None, value[1])
    if not isinstance(value[1], str):
        raise CredentialError("a disclosure's claim name must be a string")
    if value[1] in RESERVED:
        raise CredentialError(f"a disclosure may not set the claim {value[1]!r}")
    return Disclosure(encoded, value[0], value[1], value[2])


def issue(
    claims: Mapping[str, Any],
    selective: Mapping[str, Any],
    signer: Signer,
    *,
    random_bytes: Callable[[int], bytes],
    typ: str = SD_JWT_VC_TYP,
) -> str:
    """An SD-JWT: ``claims`` in clear, each of ``selective`` as its own disclosure."""
    disclosures = [make_disclosure(n, v, random_bytes(SALT_BYTES)) for n, v in selective.items()]
    clash = set(claims) & set(selective)
    if clash:
        raise CredentialError(f"claims both clear and selective: {sorted(clash)}")
    payload = dict(claims)
    if disclosures:  # sorted: the order of the digests gives nothing away
        payload["_sd"] = sorted(d.digest for d in disclosures)
        payload["_sd_alg"] = SD_ALG
    token = sign_jws(_json(payload), signer, headers={"typ": typ})
    return "~".join([token, *(d.encoded for d in disclosures)]) + "~"


def split(text: str) -> tuple[str, list[str], str]:
    """(issuer JWT, disclosures, key-binding JWT or "") of an SD-JWT or a presentation."""
    if len(text) > MAX_PRESENTATION_BYTES:
        raise CredentialError(f"the SD-JWT is longer than {MAX_PRESENTATION_BYTES} bytes")
    parts = text.strip().split("~")
    if len(parts) < 2 or not parts[0]:
        raise CredentialError("not an SD-JWT (expected <JWT>~<disclosures>~[<KB-JWT>])")
    if len(parts) - 2 > MAX_DISCLOSURES or any(not p for p in parts[1:-1]):
        raise CredentialError("an SD-JWT has empty or too many disclosures")
    return parts[0], parts[1:-1], parts[-1]


def present(
    sd_jwt: str,
    disclose: Collection[str],
    holder: Signer,
    *,
    nonce: str,
    aud: str,
    iat: int,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The holder's presentation: the chosen disclosures and a key-binding JWT."""
    token, encoded, kb = split(sd_jwt)
    if kb:
        raise CredentialError("this is already a presentation; present the issued SD-JWT")
    by_name = {d.name: d.encoded for d in map(parse_disclosure, encoded) if d.name is not None}
    unknown = sorted(set(disclose) - set(by_name))
    if unknown:
        raise CredentialError(
            f"cannot disclose {unknown}: the credential has selectively disclosable "
            f"claims {sorted(by_name)}"
        )
    chosen = [by_name[name] for name in by_name if name in disclose]
    presented = "~".join([token, *chosen]) + "~"
    claims = {
        "iat": iat,
        "aud": aud,
        "nonce": nonce,
        "sd_hash": digest_of(presented),
        **(extra or {}),
    }
    return presented + sign_jws(_json(claims), holder, headers={"typ": KB_TYP})


@dataclass(frozen=True)
class VerifiedSdJwt:
    """A presentation that passed every check."""

    issuer: str
    vct: str
    subject: str | None
    claims: dict[str, Any]  # the issuer's claims with the disclosed ones in place
    disclosed: dict[str, Any]  # only what the holder chose to disclose (personal data)
    holder_key: bytes = field(repr=False)
    digest: str = ""  # SHA-256 hex of the presentation exactly as received
    key_binding: dict[str, Any] = field(default_factory=dict)


def verify_presentation(
    text: str,
    *,
    resolver: Resolver,
    now: float,
    nonce: str,
    aud: str,
    status: StatusLists | None,
    max_kb_age: float = 300.0,
    clock_skew: float = 300.0,
    key_binding: bool = True,
    trusted_issuers: Collection[str] | None = None,
) -> VerifiedSdJwt:
    """Verify an SD-JWT VC presentation with key binding, for this ``nonce`` and ``aud``.

    ``key_binding=False`` checks an SD-JWT as issued (no key-binding JWT may be present):
    for ``didgw cred verify`` on a holder's own file, never for authentication.
    ``trusted_issuers``: refuse any other issuer first (:class:`UntrustedIssuer`), before
    anything the credential names is resolved or fetched; None trusts any issuer.
    """
    token, encoded, kb = split(text)
    if trusted_issuers is not None:
        check_trusted(token, trusted_issuers)
    if key_binding and not kb:
        raise CredentialError("the presentation has no key-binding JWT")
    if not key_binding and kb:
        raise CredentialError("this presentation has a key-binding JWT: give its nonce and aud")
    try:
        issued = verify_jws(token, resolver=resolver, relationship="assertionMethod", now=now)
    except DidgwError as exc:
        raise CredentialError(f"issuer signature: {exc}") from None
    if issued.header.get("typ") not in ACCEPTED_TYPS:
        raise CredentialError(f"issuer JWT typ {issued.header.get('typ')!r} is not {SD_JWT_VC_TYP}")
    try:
        payload = json.loads(issued.payload)
    except ValueError:
        raise CredentialError("the issuer JWT payload is not JSON") from None
    if not isinstance(payload, dict):
        raise CredentialError("the issuer JWT payload is not a JSON object")
    issuer = _check_issuer_claims(payload, issued.signer.did, now, clock_skew)
    disclosures = [parse_disclosure(e) for e in encoded]
    by_digest = {d.digest: d for d in disclosures}
    if len(by_digest) != len(disclosures):
        raise CredentialError("a disclosure is presented more than once")
    if payload.get("_sd_alg", SD_ALG) != SD_ALG:
        raise CredentialError(f"_sd_alg {payload.get('_sd_alg')!r} is not supported")
    used: set[str] = set()
    seen: set[str] = set()
    claims = _unfold(payload, by_digest, used, seen)
    unreferenced = set(by_digest) - used
    if unreferenced:
        raise CredentialError(f"{len(unreferenced)} disclosure(s) not referenced by the credential")
    claims.pop("_sd_alg", None)
    holder_key = _cnf_key(payload)
    binding = {}
    if key_binding:
        binding = _check_key_binding(
            kb,
            text[: len(text) - len(kb)],
            holder_key,
            nonce=nonce,
            aud=aud,
            now=now,
            max_age=max_kb_age,
            skew=clock_skew,
        )
    if "status" in payload:
        _check_status(payload["status"], issuer, status, now)
    disclosed = {d.name: d.value for d in disclosures if d.name is not None}
    subject = payload.get("sub") if isinstance(payload.get("sub"), str) else None
    return VerifiedSdJwt(
        issuer,
        payload["vct"],
        subject,
        claims,
        disclosed,
        holder_key,
        hashlib.sha256(text.encode()).hexdigest(),
        binding,
    )


def check_trusted(token: str, trusted: Collection[str]) -> None:
    """Refuse an issuer JWT whose ``kid`` or ``iss`` names a DID outside ``trusted``, from its
    header and payload as they are (nothing verified, resolved or fetched yet)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise CredentialError("the issuer JWT is not a compact JWS")
    try:
        header = json.loads(b64u_decode(parts[0], "the issuer JWT header"))
        payload = json.loads(b64u_decode(parts[1], "the issuer JWT payload"))
    except ValueError:
        raise CredentialError("the issuer JWT header or payload is not JSON") from None
    kid = header.get("kid") if isinstance(header, dict) else None
    iss = payload.get("iss") if isinstance(payload, dict) else None
    if not isinstance(kid, str) or not isinstance(iss, str):
        raise CredentialError("the issuer JWT needs a kid and an iss")
    for did in (kid.partition("#")[0], iss):
        if did not in trusted:
            raise UntrustedIssuer(f"credentials issued by {did} are not trusted here")


def _check_issuer_claims(payload: dict[str, Any], signer_did: str, now: float, skew: float) -> str:
    vct = payload.get("vct")
    if not isinstance(vct, str) or not vct:
        raise CredentialError("the SD-JWT VC has no vct (its credential type)")
    issuer = payload.get("iss")
    if issuer != signer_did:
        raise CredentialError(f"iss {issuer!r} is not the signer {signer_did}")
    for name in ("iat", "exp", "nbf"):
        if name in payload and (type(payload[name]) not in (int, float)):
            raise CredentialError(f"{name} must be a number (seconds)")
    if "exp" in payload and payload["exp"] <= now:
        raise CredentialError("the SD-JWT VC has expired (exp)")
    if "nbf" in payload and payload["nbf"] > now + skew:
        raise CredentialError("the SD-JWT VC is not valid yet (nbf)")
    if "iat" in payload and payload["iat"] > now + skew:
        raise CredentialError("the SD-JWT VC was issued in the future (iat)")
    return signer_did


def _unfold(value: Any, by_digest: dict[str, Disclosure], used: set[str], seen: set[str]) -> Any:
    """Replace digests by the disclosed claims, recursively; refuse repeats and clashes."""
    if isinstance(value, list):
        out = []
        for item in value:
            if isinstance(item, dict) and set(item) == {"..."}:
                digest = item["..."]
                _note(digest, seen)
                found = by_digest.get(digest)
                if found is not None:
                    if found.name is not None:
                        raise CredentialError("an object disclosure is referenced from an array")
                    used.add(digest)
                    out.append(_unfold(found.value, by_digest, used, seen))
            else:
                out.append(_unfold(item, by_digest, used, seen))
        return out
    if not isinstance(value, dict):
        return value
    result = {k: _unfold(v, by_digest, used, seen) for k, v in value.items() if k != "_sd"}
    digests = value.get("_sd", [])
    if not isinstance(digests, list):
        raise CredentialError("_sd must be a list of digests")
    for digest in digests:
        _note(digest, seen)
        found = by_digest.get(digest)
        if found is None:
            continue  # a decoy, or a claim the holder did not disclose
        if found.name is None:
            raise CredentialError("an array-element disclosure is referenced from _sd")
        if found.name in result:
            raise CredentialError(f"a disclosure would overwrite the claim {found.name!r}")
        used.add(digest)
        result[found.name] = _unfold(found.value, by_digest, used, seen)
    return result


def _note(digest: Any, seen: set[str]) -> None:
    if not isinstance(digest, str):
        raise CredentialError("a digest must be a string")
    if digest in seen:
        raise CredentialError("a digest appears more than once in the credential")
    seen.add(digest)


def _cnf_key(payload: Mapping[str, Any]) -> bytes:
    cnf = payload.get("cnf")
    jwk = cnf.get("jwk") if isinstance(cnf, dict) else None
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise CredentialError("the SD-JWT VC has no cnf.jwk Ed25519 holder key")
    if "d" in jwk:
        raise CredentialError("cnf.jwk contains a private key; refused")
    x = jwk.get("x")
    key = b64u_decode(x, "cnf.jwk x") if isinstance(x, str) else b""
    if len(key) != 32:
        raise CredentialError("cnf.jwk x is not a 32-byte Ed25519 key")
    return key


def _check_key_binding(
    kb: str,
    presented: str,
    holder_key: bytes,
    *,
    nonce: str,
    aud: str,
    now: float,
    max_age: float,
    skew: float,
) -> dict[str, Any]:
    try:
        verified = verify_jws_with_key(kb, holder_key)
    except DidgwError as exc:
        raise CredentialError(f"key-binding JWT: {exc}") from None
    if verified.header.get("typ") != KB_TYP:
        raise CredentialError(f"key-binding JWT typ {verified.header.get('typ')!r} is not {KB_TYP}")
    try:
        claims = json.loads(verified.payload)
    except ValueError:
        raise CredentialError("the key-binding JWT payload is not JSON") from None
    if not isinstance(claims, dict):
        raise CredentialError("the key-binding JWT payload is not an object")
    if claims.get("nonce") != nonce:
        raise CredentialError("the key-binding JWT is over another nonce")
    if claims.get("aud") != aud:
        raise CredentialError("the key-binding JWT is for another audience")
    if claims.get("sd_hash") != digest_of(presented):
        raise CredentialError("the key-binding JWT's sd_hash does not match the presentation")
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or not now - max_age <= iat <= now + skew:
        raise CredentialError("the key-binding JWT's iat is missing or outside the window")
    return claims


def _check_status(value: Any, issuer: str, status: StatusLists | None, now: float) -> None:
    entry = value.get("status_list") if isinstance(value, dict) else None
    if not isinstance(entry, dict):
        raise CredentialError("status must be {'status_list': {'idx', 'uri'}}")
    idx, uri = entry.get("idx"), entry.get("uri")
    if type(idx) is not int or not isinstance(uri, str):
        raise CredentialError("status_list needs an integer idx and a uri")
    if status is None:
        raise CredentialError("the credential has a status, and no status list can be read here")
    bitstring_entry = {
        "type": "BitstringStatusListEntry",
        "statusPurpose": "revocation",
        "statusListIndex": str(idx),
        "statusListCredential": uri,
    }
    if status.revoked(bitstring_entry, issuer=issuer, now=now):
        raise CredentialError("the credential is revoked")
    if status.suspended(bitstring_entry, issuer=issuer):
        raise CredentialError("the credential is suspended")


def holder_did_matches(subject: str | None, holder_key: bytes) -> bool:
    """True when ``subject`` is the did:key of ``holder_key`` (the holder is the subject)."""
    from gateway.identity.did_key import did_from_public_key

    if subject is None:
        return False
    did, _ = split_did_url(subject) if "#" in subject else (subject, "")
    return did == did_from_public_key(holder_key)

"""OpenID4VP 1.0: the gateway as verifier of a person's sign-in, sans-IO.

The gateway asks a wallet for an SD-JWT VC presentation (``dc+sd-jwt``) with a signed
request object passed by reference (``request_uri``), and takes the answer at its
``response_uri``: encrypted to the request's own key (``direct_post.jwt``, the default:
:mod:`gateway.credentials.response_encryption`) or in the clear (``direct_post``, when
``[http] response_mode`` says so). Time and randomness come in as arguments; verifying a
presentation (which reads the revocation list) is injected as ``verify``.

**Client identifier.** ``decentralized_identifier:<gateway DID>`` (OpenID4VP 1.0 §5.9.3):
the gateway has a DID and a key in it, and no web PKI certificate of a public name (it
sits in a home, often on a local address), so ``x509_san_dns``/``x509_hash`` do not fit
and ``redirect_uri`` would leave the request unsigned. With this prefix the request
object must be signed by a key of that DID, named by ``kid`` (a DID URL); a wallet
resolves the DID (a ``did:key`` needs no network) and checks the signature. The full
client identifier, prefix included, is the ``aud`` a key-binding JWT must carry.

**What is asked** (:data:`SIGN_IN_QUERY`, DCQL): either a household credential,
disclosing ``household`` and ``role`` only (never ``name``), or a facility-manager
credential, disclosing nothing personal; ``credential_sets`` offers the two.

**Pending requests** (:class:`PendingLogins`): bounded, never evicted (a full pool
refuses a new sign-in), each alive :data:`REQUEST_LIFETIME_MS`, answered at most once:
the first response naming a request's ``state`` consumes it, whatever its outcome. An
encrypted response names its ``state`` only inside the envelope: one that does not open
with the request's key names none, and consumes nothing.

**Refusals** (:class:`VpRefused`) carry a stable ``reason`` (:data:`REASONS`), the same on
the wallet's error answer, on the browser's page and in docs/protocol/openid4vp.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.credentials import response_encryption
from gateway.credentials.kinds import KINDS
from gateway.credentials.permissions import Permissions
from gateway.credentials.response_encryption import EnvelopeRefused, ResponseKeys
from gateway.credentials.sd_jwt import UntrustedIssuer, VerifiedSdJwt, split
from gateway.errors import CredentialError, DidgwError
from gateway.identity.signing import Signer, sign_jws

REQUEST_TYP = "oauth-authz-req+jwt"
CLIENT_ID_PREFIX = "decentralized_identifier:"
#: The audience of a request object for a wallet found by static discovery (§5.8, §13.1).
SELF_ISSUED_AUD = "https://self-issued.me/v2"
FORMAT = "dc+sd-jwt"
REQUEST_LIFETIME_MS = 5 * 60_000
NONCE_BYTES = 16  # 128 bits, base64url
ID_BYTES = 16
MAX_STATE_CHARS = 64
MAX_VP_TOKEN_BYTES = 60 * 1024
DIRECT_POST = "direct_post"
DIRECT_POST_JWT = "direct_post.jwt"
#: What ``[http] response_mode`` may say; the first is the default.
RESPONSE_MODES = (DIRECT_POST_JWT, DIRECT_POST)

#: Every refusal's reason, stable: wallets, pages and docs use these strings.
REASONS = {
    "malformed": "the response is not a form with state and a vp_token JSON object, "
    "nor one with a response JWE of vp_token and state",
    "bad_encryption": "the response JWE is not ECDH-ES with an offered enc to a key of "
    "this sign-in request, or does not decrypt with it",
    "not_encrypted": "the sign-in request asked for an encrypted response (direct_post.jwt)",
    "unknown_request": "no sign-in request has this state (never made, or finished)",
    "expired_request": "the sign-in request is older than 5 minutes",
    "replayed": "the sign-in request was already answered once",
    "not_requested": "the vp_token does not answer the request's DCQL query",
    "missing_claim": "a claim the query asks for was not disclosed",
    "wrong_nonce": "the key-binding JWT is over another nonce than the request's",
    "wrong_audience": "the key-binding JWT's aud is not the gateway's client_id",
    "bad_key_binding": "the key-binding JWT is not signed by the credential's key",
    "tampered_disclosure": "a disclosure is not the issuer's, or the sd_hash does not match",
    "expired_credential": "the credential has expired",
    "revoked": "the credential is revoked",
    "suspended": "the credential is suspended by the gateway's operator",
    "untrusted_issuer": "the credential was not issued by this gateway",
    "not_permitted": "the credentials grant nothing here, or are not the holder's",
    "bad_presentation": "the presentation is not a valid SD-JWT VC with key binding",
    "unavailable": "the gateway cannot check the presentation now; try again",
}

#: The reasons answered ``invalid_request`` (the response's form is wrong); the others are
#: ``access_denied`` (a well-formed response, refused).
INVALID_REQUEST = frozenset({"malformed", "bad_encryption", "not_encrypted"})

HOUSEHOLD_QUERY_ID = "household"
MANAGER_QUERY_ID = "facility_manager"

#: The DCQL query of a sign-in: a household credential (household, role) or a facility
#: manager's credential (no personal claim).
SIGN_IN_QUERY: dict[str, Any] = {
    "credentials": [
        {
            "id": HOUSEHOLD_QUERY_ID,
            "format": FORMAT,
            "meta": {"vct_values": [KINDS["household"].vct]},
            "claims": [{"path": ["household"]}, {"path": ["role"]}],
        },
        {
            "id": MANAGER_QUERY_ID,
            "format": FORMAT,
            "meta": {"vct_values": [KINDS["facility-manager"].vct]},
        },
    ],
    "credential_sets": [{"options": [[HOUSEHOLD_QUERY_ID], [MANAGER_QUERY_ID]]}],
}

#: What the verifier accepts, for ``client_metadata.vp_formats_supported``.
VP_FORMATS = {FORMAT: {"sd-jwt_alg_values": ["EdDSA"], "kb-jwt_alg_values": ["EdDSA"]}}

#: ``verify(presentation, nonce, aud)``: the verified presentation, or CredentialError
#: (:class:`UntrustedIssuer` before anything is fetched) / DidgwError (cannot check now).
Verify = Callable[[str, str, str], VerifiedSdJwt]
#: ``permissions(verified, holder)``: what she may do, or CredentialError.
PermissionsOf = Callable[[list[VerifiedSdJwt], str], Permissions]


class VpRefused(DidgwError):
    """A sign-in response refused; ``reason`` is one of :data:`REASONS`."""

    code = "vp_refused"

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class PoolFull(DidgwError):
    """Too many sign-ins are waiting for a wallet; none is forgotten to make room."""

    code = "busy"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def client_id_of(gateway_did: str) -> str:
    return CLIENT_ID_PREFIX + gateway_did


def browser_hash(token: str) -> str:
    """What a pending request keeps of the browser's login cookie (never the cookie)."""
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True)
class VpGrant:
    """A verified sign-in: who, what she may do, and what she showed."""

    did: str
    permissions: Permissions
    presentations: tuple[VerifiedSdJwt, ...]
    expires_ms: int  # the first credential's expiry, or the session's longest
    status_indexes: frozenset[int]

    @property
    def digests(self) -> list[str]:
        return [p.digest for p in self.presentations]

    def disclosed(self) -> dict[str, Any]:
        """The personal data the holder chose to show, by credential type."""
        return {p.vct: p.disclosed for p in self.presentations}


@dataclass
class LoginRequest:
    """One sign-in waiting for (or answered by) a wallet."""

    id: str  # in the request_uri
    state: str
    nonce: str
    browser: str  # browser_hash of the login cookie that started it
    created_ms: int
    expires_ms: int
    response_mode: str = DIRECT_POST_JWT
    #: the ephemeral keys a direct_post.jwt response is encrypted to (None: direct_post)
    keys: ResponseKeys | None = field(default=None, repr=False)
    answered: bool = False
    grant: VpGrant | None = None
    disclosure: int | None = None  # the record entry of what the grant disclosed
    refusal: VpRefused | None = field(default=None, repr=False)

    def request_uri(self, base_url: str) -> str:
        return f"{base_url}/oid4vp/requests/{self.id}"


class PendingLogins:
    """The sign-ins in flight, bounded (see the module docstring); one thread uses it."""

    def __init__(
        self,
        capacity: int,
        *,
        random_bytes: Callable[[int], bytes],
        lifetime_ms: int = REQUEST_LIFETIME_MS,
    ) -> None:
        self.capacity, self.lifetime_ms = capacity, lifetime_ms
        self._random = random_bytes
        self._by_id: dict[str, LoginRequest] = {}
        self._by_state: dict[str, LoginRequest] = {}
        self._by_kid: dict[str, LoginRequest] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def purge(self, now_ms: int) -> None:
        for request in [r for r in self._by_id.values() if r.expires_ms <= now_ms]:
            self._drop(request)

    def new(self, browser: str, now_ms: int, response_mode: str = DIRECT_POST_JWT) -> LoginRequest:
        if response_mode not in RESPONSE_MODES:
            raise ValueError(f"response_mode must be one of {RESPONSE_MODES}")
        self.purge(now_ms)
        if len(self._by_id) >= self.capacity:
            raise PoolFull(f"{self.capacity} sign-ins are waiting for a wallet; try again soon")
        request = LoginRequest(
            b64u(self._random(ID_BYTES)),
            b64u(self._random(ID_BYTES)),
            b64u(self._random(NONCE_BYTES)),
            browser,
            now_ms,
            now_ms + self.lifetime_ms,
            response_mode,
        )
        if response_mode == DIRECT_POST_JWT:
            request.keys = response_encryption.new_keys(self._random)
            for kid in request.keys.kids():
                self._by_kid[kid] = request
        self._by_id[request.id] = request
        self._by_state[request.state] = request
        return request

    def get(self, request_id: str, now_ms: int) -> LoginRequest | None:
        """A live request by its id (for the request object and the browser)."""
        request = self._by_id.get(request_id)
        if request is None or request.expires_ms <= now_ms:
            return None
        return request

    def claim(self, state: str, now_ms: int) -> LoginRequest:
        """The request a response answers, marked answered: it takes no other response."""
        request = self._by_state.get(state) if isinstance(state, str) else None
        if request is None:
            raise VpRefused("unknown_request", "no pending sign-in has this state")
        if request.expires_ms <= now_ms:
            raise VpRefused("expired_request", "the sign-in request has expired; start again")
        if request.answered:
            raise VpRefused("replayed", "this sign-in request was already answered")
        request.answered = True
        return request

    def open(self, token: str, now_ms: int) -> tuple[LoginRequest, bytes]:
        """The request whose key ``token`` (a compact JWE) is encrypted to, and the
        plaintext; ``bad_encryption`` (or ``expired_request``) consumes nothing."""
        try:
            kid = response_encryption.header_of(token)["kid"]
        except EnvelopeRefused as exc:
            raise VpRefused("bad_encryption", str(exc)) from None
        request = self._by_kid.get(kid)
        if request is None or request.keys is None:
            raise VpRefused("bad_encryption", "the JWE's kid names no key of a pending sign-in")
        if request.expires_ms <= now_ms:
            raise VpRefused("expired_request", "the sign-in request has expired; start again")
        try:
            return request, response_encryption.decrypt(token, request.keys)
        except EnvelopeRefused as exc:
            raise VpRefused("bad_encryption", str(exc)) from None

    def finish(self, request_id: str, browser: str, now_ms: int) -> LoginRequest | None:
        """The answered request of this browser, removed (its grant opens one session)."""
        request = self.get(request_id, now_ms)
        if request is None or request.browser != browser:
            return None
        if request.grant is None and request.refusal is None:
            return None  # not answered, or still being checked
        self._drop(request)
        return request

    def _drop(self, request: LoginRequest) -> None:
        self._by_id.pop(request.id, None)
        self._by_state.pop(request.state, None)
        for kid in request.keys.kids() if request.keys is not None else ():
            self._by_kid.pop(kid, None)


def request_object(
    request: LoginRequest,
    *,
    signer: Signer,
    base_url: str,
    now_ms: int,
    redirect: bool = True,
) -> str:
    """The signed request object (``typ`` ``oauth-authz-req+jwt``) of ``request``."""
    claims = {
        "aud": SELF_ISSUED_AUD,
        "client_id": client_id_of(signer.did),
        "response_type": "vp_token",
        "response_mode": request.response_mode,
        "response_uri": f"{base_url}/oid4vp/response",
        "nonce": request.nonce,
        "state": request.state,
        "dcql_query": SIGN_IN_QUERY,
        "client_metadata": client_metadata(request),
        "iat": now_ms // 1000,
        "exp": request.expires_ms // 1000,
    }
    body = json.dumps(claims, separators=(",", ":")).encode()
    return sign_jws(body, signer, headers={"typ": REQUEST_TYP})


def client_metadata(request: LoginRequest) -> dict[str, Any]:
    """What the wallet needs of the verifier: the formats taken, and for an encrypted
    response the request's public keys and the ``enc`` values taken."""
    metadata: dict[str, Any] = {"vp_formats_supported": VP_FORMATS}
    if request.keys is not None:
        metadata["jwks"] = request.keys.jwks()
        metadata["encrypted_response_enc_values_supported"] = list(response_encryption.ENC_VALUES)
    return metadata


def authorization_url(request: LoginRequest, *, gateway_did: str, base_url: str) -> str:
    """``openid4vp://?client_id=…&request_uri=…``: the same-device link and the QR code."""
    from urllib.parse import urlencode

    query = urlencode(
        {"client_id": client_id_of(gateway_did), "request_uri": request.request_uri(base_url)}
    )
    return f"openid4vp://?{query}"


def take_response(
    form: Mapping[str, Any], pending: PendingLogins, now_ms: int
) -> tuple[LoginRequest, dict[str, list[str]]]:
    """The request a response answers, claimed, and its ``vp_token``: from a
    ``direct_post.jwt`` body (``response``, a JWE) or a ``direct_post`` one. A claimed
    request's refusal is kept on it (its browser's page shows it)."""
    if "response" in form:
        token = form["response"]
        if "vp_token" in form or "state" in form or not isinstance(token, str):
            raise VpRefused("malformed", "an encrypted response is the one field response")
        request, plaintext = pending.open(token, now_ms)
        try:
            payload = json.loads(plaintext)
        except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
            raise VpRefused("malformed", "the decrypted response is not JSON") from None
        if not isinstance(payload, dict):
            raise VpRefused("malformed", "the decrypted response is not a JSON object")
        state = _state_of(payload)
        if state != request.state:
            raise VpRefused("bad_encryption", "encrypted to the key of another sign-in")
        claimed = pending.claim(state, now_ms)
        try:
            return claimed, _vp_token_of(payload.get("vp_token"))
        except VpRefused as refusal:
            claimed.refusal = refusal
            raise
    state, vp_token = parse_response(form)
    claimed = pending.claim(state, now_ms)
    if claimed.response_mode != DIRECT_POST:
        claimed.refusal = VpRefused("not_encrypted", "post the response JWE as response")
        raise claimed.refusal
    return claimed, vp_token


def _state_of(fields: Mapping[str, Any]) -> str:
    state = fields.get("state")
    if not isinstance(state, str) or not 0 < len(state) <= MAX_STATE_CHARS:
        raise VpRefused("malformed", "the response needs a state")
    return state


def parse_response(form: Mapping[str, Any]) -> tuple[str, dict[str, list[str]]]:
    """(state, vp_token) of a ``direct_post`` body, or ``malformed``."""
    state, token = _state_of(form), form.get("vp_token")
    if not isinstance(token, str) or len(token.encode()) > MAX_VP_TOKEN_BYTES:
        raise VpRefused("malformed", "the response needs a vp_token (a JSON object)")
    try:
        value = json.loads(token)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        raise VpRefused("malformed", "vp_token is not JSON") from None
    return state, _vp_token_of(value)


def _vp_token_of(value: Any) -> dict[str, list[str]]:
    """A ``vp_token`` (parsed): an object of arrays of one presentation, or ``malformed``."""
    if not isinstance(value, dict) or not value:
        raise VpRefused("malformed", "vp_token is a JSON object keyed by credential query id")
    for key, items in value.items():
        ok = isinstance(items, list) and len(items) == 1 and isinstance(items[0], str)
        if not ok:
            raise VpRefused("malformed", f"vp_token[{key!r}] must be an array of 1 presentation")
    return value


def _query_ids() -> set[str]:
    return {q["id"] for q in SIGN_IN_QUERY["credentials"]}


def _options() -> list[set[str]]:
    return [set(o) for o in SIGN_IN_QUERY["credential_sets"][0]["options"]]


def _kb_claims(presentation: str) -> dict[str, Any]:
    """The key-binding JWT's claims, unverified: only to name a refusal's reason."""
    try:
        _, _, kb = split(presentation)
        payload = kb.split(".")[1]
        value = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (CredentialError, IndexError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def reason_of(exc: Exception) -> str:
    """The stable reason of a presentation that ``verify`` refused."""
    if isinstance(exc, UntrustedIssuer):
        return "untrusted_issuer"
    if not isinstance(exc, CredentialError):
        return "unavailable"
    detail = str(exc)
    if "failing closed" in detail or "unreachable" in detail:
        return "unavailable"
    for needle, reason in (
        ("revoked", "revoked"),
        ("is suspended", "suspended"),
        ("has expired", "expired_credential"),
        ("another nonce", "wrong_nonce"),
        ("another audience", "wrong_audience"),
        ("key-binding JWT:", "bad_key_binding"),
        ("not referenced", "tampered_disclosure"),
        ("sd_hash", "tampered_disclosure"),
        ("disclosure", "tampered_disclosure"),
    ):
        if needle in detail:
            return reason
    return "bad_presentation"


def check_response(
    request: LoginRequest,
    vp_token: Mapping[str, list[str]],
    *,
    client_id: str,
    verify: Verify,
    permissions: PermissionsOf,
    now_ms: int,
    session_ms: int,
) -> VpGrant:
    """Verify the presentations answering ``request`` (see the module docstring)."""
    answered = set(vp_token)
    if not answered <= _query_ids() or answered not in _options():
        raise VpRefused("not_requested", f"vp_token answers {sorted(answered)}")
    queries = {q["id"]: q for q in SIGN_IN_QUERY["credentials"]}
    verified = [
        _verify_one(queries[query_id], text, request.nonce, client_id, verify)
        for query_id, [text] in sorted(vp_token.items())
    ]
    holder = verified[0].subject
    if holder is None:
        raise VpRefused("not_permitted", "the credential names no subject")
    try:
        granted = permissions(verified, holder)
    except CredentialError as exc:
        raise VpRefused("not_permitted", str(exc)) from None
    if not granted.names():
        raise VpRefused("not_permitted", "the credentials grant nothing")
    expires = now_ms + session_ms
    indexes: set[int] = set()
    for p in verified:
        exp = p.claims.get("exp")
        if isinstance(exp, int | float):
            expires = min(expires, int(exp * 1000))
        entry = (p.claims.get("status") or {}).get("status_list") or {}
        if type(entry.get("idx")) is int:
            indexes.add(entry["idx"])
    return VpGrant(holder, granted, tuple(verified), expires, frozenset(indexes))


def _verify_one(
    query: Mapping[str, Any], text: str, nonce: str, client_id: str, verify: Verify
) -> VerifiedSdJwt:
    """One presentation answering one credential query of :data:`SIGN_IN_QUERY`."""
    kb = _kb_claims(text)  # a clearer reason than a failed signature, before any work
    if kb and kb.get("nonce") != nonce:
        raise VpRefused("wrong_nonce", "the key-binding JWT is over another nonce")
    if kb and kb.get("aud") != client_id:
        raise VpRefused("wrong_audience", f"the key-binding JWT's aud must be {client_id}")
    try:
        presentation = verify(text, nonce, client_id)
    except DidgwError as exc:
        raise VpRefused(reason_of(exc), str(exc)) from None
    if presentation.vct not in query["meta"]["vct_values"]:
        raise VpRefused("not_requested", f"{query['id']} asks for {query['meta']['vct_values']}")
    for claim in query.get("claims", []):
        name = claim["path"][0]
        if name not in presentation.disclosed:
            raise VpRefused("missing_claim", f"{query['id']} needs {name} disclosed")
    return presentation

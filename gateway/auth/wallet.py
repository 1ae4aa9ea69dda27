"""A person's wallet authenticating with a credential presentation, sans-IO.

The same hello → nonce flow as devices (:class:`~gateway.auth.handshake.Handshake`:
single-use nonces bound to the DID, the gateway and the reply token, a cap per DID,
bounded memory), but the answer to the challenge is one or more SD-JWT VC
presentations whose key-binding JWTs carry the challenge's nonce, the gateway's DID
as ``aud`` and the wallet's fresh X25519 ``epk`` (so the broker password is sealed to
a key the holder signed, exactly as for devices).

People are not in the device registry: a hello is answered for any DID that names an
Ed25519 key (``did:key``; any other is ``not_permitted``), and what the person may do
comes only from the verified credentials
(:func:`~gateway.credentials.permissions.permissions_from`). Whose nonce pool a hello
goes in is the core's ``known`` predicate: people the gateway issued a credential to,
so that a flood of fresh ``did:key`` hellos cannot crowd them out. Checks, the first
failure being the answer: ``malformed`` → ``bad_nonce`` (read from the key-binding JWT
before anything is verified, so a forgery cannot spend a real nonce) →
``not_permitted`` / ``bad_presentation`` / ``revoked`` / ``suspended`` / ``unavailable``
(verification, injected as ``verify``, which refuses an issuer other than the gateway
before anything the credential names is fetched) → ``clock_skew`` → ``not_permitted``
(the credentials grant nothing, or are not about this holder).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.broker import check_prefix, person_requests_topic, person_responses_topic
from gateway.auth.handshake import Handshake
from gateway.auth.mqtt_auth import Outgoing, SessionToken, refuse, refuse_unavailable
from gateway.auth.mqtt_messages import (
    EPK_BYTES,
    GRANT_TYP,
    NONCE_BYTES,
    Hello,
    check_reply,
    reply_of,
    reply_topic,
)
from gateway.auth.secret import SecretError, new_password
from gateway.auth.strict import AuthRefused, b64u, b64u_decode, check_did, json_object
from gateway.credentials.permissions import Permissions, permissions_from
from gateway.credentials.sd_jwt import VerifiedSdJwt, split
from gateway.errors import CredentialError
from gateway.identity.signing import sign_jws
from gateway.registry import Status

MAX_PRESENTATIONS = 4
_MEMBERS = frozenset({"type", "did", "reply", "presentations"})

#: ``verify(text, nonce, aud)``: a presentation that passed every check, else
#: :class:`AuthRefused` (``not_permitted`` for an untrusted issuer, ``bad_presentation``,
#: ``revoked``, ``suspended`` or ``unavailable``).
Verify = Callable[[str, str, str], VerifiedSdJwt]


@dataclass(frozen=True)
class PresentationMessage:
    """Wallet → ``<prefix>/auth/wallet``: the presentations answering a challenge."""

    did: str
    reply: str
    presentations: tuple[str, ...]

    @classmethod
    def decode(cls, data: bytes) -> PresentationMessage:
        obj = json_object(data, "presentation")
        reply = reply_of(obj)
        try:
            if obj.get("type") != "presentation" or set(obj) != _MEMBERS:
                raise AuthRefused("malformed", f"a presentation has exactly {sorted(_MEMBERS)}")
            items = obj["presentations"]
            ok = isinstance(items, list) and 0 < len(items) <= MAX_PRESENTATIONS
            if not ok or not all(isinstance(p, str) for p in items):
                raise AuthRefused("malformed", f"presentations: 1 to {MAX_PRESENTATIONS} strings")
            return cls(check_did(obj["did"], "did"), check_reply(obj["reply"]), tuple(items))
        except AuthRefused as exc:
            raise AuthRefused(exc.reason, exc.detail, reply=reply) from None


@dataclass(frozen=True)
class _Binding:
    """What the key-binding JWT says, read before verification (to find the nonce)."""

    nonce: bytes
    device: str
    gateway: str
    ts: int
    reply: str | None
    nonce_text: str
    epk: bytes


def read_binding(presentation: str, did: str, reply: str) -> _Binding:
    """The nonce, audience, time and epk of a presentation's key-binding JWT (unverified)."""
    try:
        _, _, kb = split(presentation)
        parts = kb.split(".")
        if len(parts) != 3:
            raise AuthRefused("malformed", "the key-binding JWT is not a compact JWS")
        claims = json.loads(b64u_decode(parts[1], "key-binding payload", max_size=4096))
    except (CredentialError, ValueError):
        raise AuthRefused("malformed", "not an SD-JWT presentation with key binding") from None
    if not isinstance(claims, dict):
        raise AuthRefused("malformed", "the key-binding payload is not an object")
    nonce_text, aud, iat = claims.get("nonce"), claims.get("aud"), claims.get("iat")
    if not isinstance(nonce_text, str) or not isinstance(aud, str) or type(iat) is not int:
        raise AuthRefused("malformed", "the key-binding JWT needs nonce, aud and an integer iat")
    return _Binding(
        b64u_decode(nonce_text, "nonce", size=NONCE_BYTES),
        did,
        aud,
        iat * 1000,
        reply,
        nonce_text,
        b64u_decode(claims.get("epk"), "key-binding epk", size=EPK_BYTES),
    )


@dataclass(frozen=True)
class PersonGrant:
    """What the transport needs to open the person's broker account before granting."""

    did: str
    password: str = field(repr=False)
    expires_ms: int
    reply_topic: str
    permissions: Permissions
    presentations: tuple[VerifiedSdJwt, ...]
    raw: tuple[str, ...] = field(repr=False)

    @property
    def status_indexes(self) -> frozenset[int]:
        """The revocation bits of the credentials behind this session."""
        found = set()
        for p in self.presentations:
            entry = (p.claims.get("status") or {}).get("status_list") or {}
            if type(entry.get("idx")) is int:
                found.add(entry["idx"])
        return frozenset(found)

    def disclosed(self) -> dict[str, Any]:
        """The personal data the holder chose to show, by credential type."""
        return {p.vct: p.disclosed for p in self.presentations}


def holder_status(did: str) -> Status | None:
    """The registry lookup of a wallet's :class:`Handshake`: people are not registered, and
    any DID that names an Ed25519 key (a ``did:key``) may ask for a challenge."""
    return Status.ACTIVE if did.startswith("did:key:") else None


class WalletAuthenticator:
    """The gateway's side of the wallet protocol (see the module docstring). Its ``core``
    is a :class:`Handshake` made with :func:`holder_status` as its registry lookup."""

    def __init__(
        self,
        core: Handshake,
        verify: Verify,
        *,
        prefix: str = "didgw",
        session_token: SessionToken | None = None,
    ) -> None:
        self.core = core
        self._verify = verify
        self._prefix = check_prefix(prefix)
        self._session_token = session_token  # as the devices' (mqtt_auth.Authenticator)

    def on_request(self, payload: bytes, now_ms: int) -> tuple[Outgoing | None, PersonGrant | None]:
        """Anything from ``<prefix>/auth/wallet``: a hello or a presentation."""
        self.core.last_refusal = None
        if b'"presentation"' not in payload[:4096]:
            return self._hello(payload, now_ms), None
        try:
            message = PresentationMessage.decode(payload)
            bindings = [read_binding(p, message.did, message.reply) for p in message.presentations]
        except AuthRefused as exc:
            return self._refuse(exc.reply or reply_of_safe(payload), exc), None
        first = bindings[0]
        same = (first.nonce, first.gateway, first.epk)
        if any((b.nonce, b.gateway, b.epk) != same for b in bindings):
            refusal = AuthRefused("malformed", "the key-binding JWTs disagree on nonce, aud or epk")
            return self._refuse(message.reply, refusal), None
        verified: list[VerifiedSdJwt] = []

        def verify() -> None:
            for text in message.presentations:
                verified.append(self._verify(text, first.nonce_text, self.core.did))

        try:
            return self.core.answer(
                first, now_ms, verify, lambda: self._grant(message, first, verified, now_ms)
            )
        except AuthRefused as exc:
            return self._refuse(message.reply, exc), None

    def refuse_unavailable(self, grant: PersonGrant) -> Outgoing:
        return refuse_unavailable(self.core, grant.reply_topic)

    def _hello(self, payload: bytes, now_ms: int) -> Outgoing | None:
        try:
            hello = Hello.decode(payload)
            if holder_status(hello.did) is None:
                raise AuthRefused("not_permitted", "people authenticate with a did:key")
            challenge = self.core.challenge(hello.did, hello.reply, now_ms)
        except AuthRefused as exc:
            reply = exc.reply if exc.reply is not None else reply_of_safe(payload)
            return self._refuse(reply, exc)
        return Outgoing(reply_topic(self._prefix, hello.reply), challenge.encode())

    def _grant(
        self,
        message: PresentationMessage,
        binding: _Binding,
        verified: Sequence[VerifiedSdJwt],
        now_ms: int,
    ) -> tuple[Outgoing, PersonGrant]:
        try:
            permissions = permissions_from(
                verified, holder=message.did, trusted_issuers={self.core.did}
            )
        except CredentialError as exc:
            raise AuthRefused("not_permitted", str(exc)) from None
        if not permissions.names():
            raise AuthRefused("not_permitted", "the credentials grant nothing")
        expires = self.core.session_end(now_ms)
        for p in verified:  # the session ends when the first credential does
            exp = p.claims.get("exp")
            if isinstance(exp, int | float):
                expires = min(expires, int(exp * 1000))
        token = None if self._session_token is None else self._session_token(message.did, expires)
        try:
            sealed = new_password(
                binding.epk,
                binding.nonce,
                message.did,
                random_bytes=self.core.random,
                password=token,
            )
        except SecretError as exc:
            raise AuthRefused("malformed", f"key-binding epk: {exc}") from None
        grant = PersonGrant(
            message.did,
            sealed.password,
            expires,
            reply_topic(self._prefix, message.reply),
            permissions,
            tuple(verified),
            message.presentations,
        )
        claims = {
            "type": "grant",
            "person": message.did,
            "username": message.did,
            "expires": expires,
            "epk": b64u(sealed.epk),
            "iv": b64u(sealed.iv),
            "secret": b64u(sealed.secret),
            "requests": person_requests_topic(message.did, self._prefix),
            "responses": person_responses_topic(message.did, self._prefix),
            "permissions": permissions.names(),
        }
        body = json.dumps(claims, separators=(",", ":")).encode()
        token = sign_jws(body, self.core.signer, headers={"typ": GRANT_TYP})
        return Outgoing(grant.reply_topic, token.encode("ascii")), grant

    def _refuse(self, reply: str | None, refusal: AuthRefused) -> Outgoing | None:
        topic = None if reply is None else reply_topic(self._prefix, reply)
        return refuse(self.core, topic, refusal)


def reply_of_safe(payload: bytes) -> str | None:
    """The reply token of a message refused before it was parsed, when it has one."""
    try:
        return reply_of(json_object(payload, "message"))
    except AuthRefused:
        return None

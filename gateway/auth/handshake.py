"""The DID challenge-response, sans-IO: payloads and the time in, what to answer out.

:class:`Handshake` is the part every transport shares: nonces and their transition
table, the checks and their order, the counts. :class:`Authenticator` is MQTT's
(JSON and JWS, reply topics); ``coap_auth.CoapAuthenticator`` is CoAP's (CBOR and
COSE_Sign1, request/response). Below, MQTT's.

The MQTT transport hands in what arrived on ``<prefix>/auth/req`` with the current
time in milliseconds; :class:`Authenticator` answers with an :class:`Outgoing`
(topic and payload) to publish, and after a good response a :class:`Grant`, so the
transport can create the device's broker account *before* it publishes the grant
(or publish :meth:`Authenticator.refuse_unavailable` if that fails). No sockets,
no clock, no randomness of its own: tests drive every path deterministically.

Checks, in this order (the first failure is the answer):

* hello: ``malformed`` → ``unknown_device`` / ``not_active`` → ``rate_limited``
  (more than ``max_pending_per_did`` nonces outstanding for the DID);
* response: ``malformed`` → ``unknown_device`` / ``not_active`` → ``bad_nonce``
  (unknown, used, expired, issued to another device, for another gateway, or for
  another reply token) → ``bad_signature`` / ``unavailable`` (the JWS must be
  signed by a key in the device's ``authentication`` relationship) →
  ``clock_skew`` (``ts`` outside ± ``clock_skew_ms``) → ``malformed`` (an ``epk``
  that is a low-order point).

A nonce's life is the transition table :data:`TRANSITIONS`. A response refused
before its signature verified does not spend the nonce: anyone can publish on the
auth topic, and a forgery must not be able to cancel a device's authentication.
Once the device's signature has verified, the nonce is spent whatever the outcome.

Pending nonces are bounded (``max_pending``, the oldest evicted first), so a flood
of hellos costs bounded memory. A refusal is answered on the reply topic the
message itself names; a message too broken to name one is not answered at all.
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, TypeVar

from gateway.auth.broker import acks_topic, check_prefix, readings_topic
from gateway.auth.messages import (
    AUTH_TYP,
    GRANT_TYP,
    NONCE_BYTES,
    AuthRefused,
    Challenge,
    GrantPayload,
    Hello,
    Refusal,
    RegistryLookup,
    ResponsePayload,
    b64u,
    check_registered,
    check_typ,
    reply_topic,
    split_jws,
    verify_signed,
)
from gateway.auth.secret import RandomBytes, SecretError, seal_secret
from gateway.identity.resolver import Resolver
from gateway.identity.signing import Signer, sign_jws

PASSWORD_BYTES = 32


class Outgoing(NamedTuple):
    """A message to publish: the topic and the payload bytes."""

    topic: str
    payload: bytes


@dataclass(frozen=True)
class Grant:
    """What the transport needs to create the device's broker account before granting."""

    did: str
    username: str
    password: str = field(repr=False)  # b64u of 32 random bytes; never logged
    expires_ms: int
    reply_topic: str
    readings_topic: str
    acks_topic: str


class Phase(enum.Enum):
    CHALLENGED = "challenged"  # the challenge is out; the nonce waits for a response
    SPENT = "spent"  # forgotten: it can never be answered again


class Event(enum.Enum):
    UNVERIFIED = "unverified"  # a response naming it was refused before its signature verified
    REFUSED = "refused"  # the device's signature verified, but the response is refused
    GRANTED = "granted"
    EXPIRED = "expired"
    EVICTED = "evicted"  # the store was full and this was the oldest nonce


#: phase -> {event: next phase}. A hello creates a nonce in CHALLENGED; an event not
#: in the table for the nonce's phase is a bug in this module, never input-driven.
TRANSITIONS: dict[Phase, dict[Event, Phase]] = {
    Phase.CHALLENGED: {
        Event.UNVERIFIED: Phase.CHALLENGED,
        Event.REFUSED: Phase.SPENT,
        Event.GRANTED: Phase.SPENT,
        Event.EXPIRED: Phase.SPENT,
        Event.EVICTED: Phase.SPENT,
    },
    Phase.SPENT: {},
}


@dataclass
class _Pending:
    did: str
    reply: str | None
    expires_ms: int
    phase: Phase = Phase.CHALLENGED


class _Nonces:
    """Outstanding nonces, oldest first, with a count per DID."""

    def __init__(self, max_pending: int) -> None:
        self._items: OrderedDict[bytes, _Pending] = OrderedDict()
        self._per_did: Counter[str] = Counter()
        self._max = max_pending

    def __len__(self) -> int:
        return len(self._items)

    def get(self, nonce: bytes) -> _Pending | None:
        return self._items.get(nonce)

    def outstanding(self, did: str) -> int:
        return self._per_did[did]

    def issue(self, nonce: bytes, pending: _Pending) -> None:
        while len(self._items) >= self._max:
            self.advance(next(iter(self._items)), Event.EVICTED)
        self._items[nonce] = pending
        self._per_did[pending.did] += 1

    def expire(self, now_ms: int) -> None:
        """Forget expired nonces at the old end (all share one lifetime)."""
        while self._items:
            nonce, pending = next(iter(self._items.items()))
            if pending.expires_ms > now_ms:
                break
            self.advance(nonce, Event.EXPIRED)

    def advance(self, nonce: bytes, event: Event) -> None:
        pending = self._items[nonce]
        after = TRANSITIONS[pending.phase].get(event)
        if after is None:
            raise RuntimeError(f"nonce event {event.value} in phase {pending.phase.value}")
        pending.phase = after
        if after is Phase.SPENT:
            del self._items[nonce]
            self._per_did[pending.did] -= 1
            if not self._per_did[pending.did]:
                del self._per_did[pending.did]


class Claim(Protocol):
    """What a device's signed response says, whatever its encoding (JWS over MQTT,
    COSE over CoAP): the nonce it answers, who it is, which gateway, when, and the
    reply token of its hello (None where the transport needs none)."""

    @property
    def nonce(self) -> bytes: ...
    @property
    def device(self) -> str: ...
    @property
    def gateway(self) -> str: ...
    @property
    def ts(self) -> int: ...
    @property
    def reply(self) -> str | None: ...


T = TypeVar("T")


class Handshake:
    """The transport-independent half of the challenge-response: nonces and their
    table, the checks and their order, the counts. Each transport's authenticator
    parses and encodes its own messages and calls :meth:`challenge` for a hello and
    :meth:`answer` for a response; a refusal is an :class:`AuthRefused` it encodes."""

    def __init__(
        self,
        gateway_did: str,
        registry_lookup: RegistryLookup,
        *,
        nonce_ttl_ms: int = 30_000,
        clock_skew_ms: int = 300_000,
        max_pending: int = 4096,
        max_pending_per_did: int = 4,
        random_bytes: RandomBytes,
    ) -> None:
        if min(nonce_ttl_ms, clock_skew_ms, max_pending, max_pending_per_did) < 1:
            raise ValueError("lifetimes and limits must be positive")
        self.did = gateway_did
        self._lookup = registry_lookup
        self._nonce_ttl = nonce_ttl_ms
        self._skew = clock_skew_ms
        self._per_did = max_pending_per_did
        self.random = random_bytes
        self._nonces = _Nonces(max_pending)
        self._outcomes: Counter[str] = Counter()
        self.last_refusal: AuthRefused | None = None

    @property
    def outcomes(self) -> dict[str, int]:
        return dict(self._outcomes)

    @property
    def pending(self) -> int:
        return len(self._nonces)

    def challenge(self, did: str, reply: str | None, now_ms: int) -> Challenge:
        """A new nonce for a registered, active ``did``, or :class:`AuthRefused`."""
        self.last_refusal = None
        check_registered(self._lookup, did)
        self._nonces.expire(now_ms)
        if self._nonces.outstanding(did) >= self._per_did:
            raise AuthRefused("rate_limited", f"{did} has {self._per_did} challenges outstanding")
        nonce = self.random(NONCE_BYTES)
        if len(nonce) != NONCE_BYTES or self._nonces.get(nonce) is not None:
            raise ValueError("random_bytes gave a short or repeated nonce")
        expires = now_ms + self._nonce_ttl
        self._nonces.issue(nonce, _Pending(did, reply, expires))
        self._outcomes["challenge"] += 1
        return Challenge(nonce, self.did, did, expires)

    def answer(
        self, claim: Claim, now_ms: int, verify: Callable[[], None], grant: Callable[[], T]
    ) -> T:
        """Check a response against its nonce, then ``verify()`` its signature (raising
        :class:`AuthRefused`), then its time, then make the grant with ``grant()`` (which
        may refuse too). The nonce moves through :data:`TRANSITIONS` accordingly."""
        self.last_refusal = None
        check_registered(self._lookup, claim.device)
        self._check_nonce(claim, now_ms)
        verified = False
        try:
            verify()
            verified = True
            if abs(claim.ts - now_ms) > self._skew:
                raise AuthRefused("clock_skew", f"ts {claim.ts} is {claim.ts - now_ms} ms off")
            result = grant()
        except AuthRefused:
            self._nonces.advance(claim.nonce, Event.REFUSED if verified else Event.UNVERIFIED)
            raise
        self._nonces.advance(claim.nonce, Event.GRANTED)
        self._outcomes["grant"] += 1
        return result

    def count(self, refusal: AuthRefused) -> None:
        """Count a refusal (by reason) and remember it for the log."""
        self._outcomes[refusal.reason] += 1
        self.last_refusal = refusal

    def _check_nonce(self, claim: Claim, now_ms: int) -> None:
        pending = self._nonces.get(claim.nonce)
        if pending is None:
            raise AuthRefused("bad_nonce", "unknown or already used nonce")
        if pending.expires_ms <= now_ms:
            self._nonces.advance(claim.nonce, Event.EXPIRED)
            raise AuthRefused("bad_nonce", "the nonce has expired")
        if pending.did != claim.device:
            raise AuthRefused("bad_nonce", f"the nonce was issued to {pending.did}")
        if claim.gateway != self.did:
            raise AuthRefused("bad_nonce", f"the response is for gateway {claim.gateway}")
        if claim.reply != pending.reply:
            raise AuthRefused("bad_nonce", "the reply token is not the hello's")


class Authenticator:
    """The gateway's side of the DID challenge-response over MQTT (see the module docstring)."""

    def __init__(
        self,
        gateway_signer: Signer,
        registry_lookup: RegistryLookup,
        resolver: Resolver,
        *,
        prefix: str = "didgw",
        nonce_ttl_ms: int = 30_000,
        clock_skew_ms: int = 300_000,
        session_ms: int = 3_600_000,
        max_pending: int = 4096,
        max_pending_per_did: int = 4,
        random_bytes: RandomBytes,
    ) -> None:
        if session_ms < 1:
            raise ValueError("lifetimes and limits must be positive")
        self._core = Handshake(
            gateway_signer.did,
            registry_lookup,
            nonce_ttl_ms=nonce_ttl_ms,
            clock_skew_ms=clock_skew_ms,
            max_pending=max_pending,
            max_pending_per_did=max_pending_per_did,
            random_bytes=random_bytes,
        )
        self._signer = gateway_signer
        self._resolver = resolver
        self._prefix = check_prefix(prefix)
        self._session = session_ms
        self._random = random_bytes

    @property
    def did(self) -> str:
        """The gateway's DID, to which every nonce is bound."""
        return self._signer.did

    def retime(self, *, session_ms: int, clock_skew_ms: int) -> None:
        """New session length and clock tolerance, for grants from now on (a config reload)."""
        if min(session_ms, clock_skew_ms) < 1:
            raise ValueError("lifetimes must be positive")
        self._session, self._skew = session_ms, clock_skew_ms

    @property
    def last_refusal(self) -> AuthRefused | None:
        """The refusal behind the last answer (its ``detail`` is for the log), else None."""
        return self._core.last_refusal

    @property
    def outcomes(self) -> dict[str, int]:
        """How many challenges, grants and refusals (by reason) so far."""
        return self._core.outcomes

    @property
    def pending(self) -> int:
        """How many nonces are outstanding."""
        return self._core.pending

    def on_request(self, payload: bytes, now_ms: int) -> tuple[Outgoing | None, Grant | None]:
        """Anything from ``<prefix>/auth/req``: a JSON hello or a compact-JWS response."""
        if payload[:16].lstrip()[:1] == b"{":
            return self.on_hello(payload, now_ms), None
        return self.on_response(payload, now_ms)

    def on_hello(self, payload: bytes, now_ms: int) -> Outgoing | None:
        """Answer a hello with a challenge or a refusal (None: no reply token to answer to)."""
        self._core.last_refusal = None
        try:
            hello = Hello.decode(payload)
        except AuthRefused as exc:
            return self._refuse(exc.reply, exc)
        try:
            challenge = self._core.challenge(hello.did, hello.reply, now_ms)
        except AuthRefused as exc:
            return self._refuse(hello.reply, exc)
        return Outgoing(reply_topic(self._prefix, hello.reply), challenge.encode())

    def on_response(self, payload: bytes, now_ms: int) -> tuple[Outgoing | None, Grant | None]:
        """Answer a signed response with a grant (and its :class:`Grant`) or a refusal."""
        self._core.last_refusal = None
        try:
            header, body = split_jws(payload, "response")
            response = ResponsePayload.decode(body)
        except AuthRefused as exc:
            return self._refuse(exc.reply, exc), None
        try:
            check_typ(header, AUTH_TYP, "response")
        except AuthRefused as exc:
            return self._refuse(response.reply, exc), None

        def verify() -> None:
            verify_signed(
                payload,
                header,
                body,
                response.device,
                resolver=self._resolver,
                relationship="authentication",
                now_ms=now_ms,
            )

        try:
            outgoing, grant = self._core.answer(
                response, now_ms, verify, lambda: self._grant(response, now_ms)
            )
        except AuthRefused as exc:
            return self._refuse(response.reply, exc), None
        return outgoing, grant

    def refuse_unavailable(self, grant: Grant) -> Outgoing:
        """What to publish instead of the grant when the broker account could not be made.

        Counted as ``unavailable``; the grant itself was already counted when it was made.
        """
        return self._refuse_to(
            grant.reply_topic, AuthRefused("unavailable", "broker account not created")
        )

    def _grant(self, response: ResponsePayload, now_ms: int) -> tuple[Outgoing, Grant]:
        did = response.device
        password = b64u(self._random(PASSWORD_BYTES))
        try:
            epk, iv, secret = seal_secret(
                password.encode("ascii"),
                response.epk,
                response.nonce,
                did,
                random_bytes=self._random,
            )
        except SecretError as exc:
            raise AuthRefused("malformed", f"response epk: {exc}") from None
        grant = Grant(
            did=did,
            username=did,
            password=password,
            expires_ms=now_ms + self._session,
            reply_topic=reply_topic(self._prefix, response.reply),
            readings_topic=readings_topic(did, self._prefix),
            acks_topic=acks_topic(did, self._prefix),
        )
        claims = GrantPayload(
            did, did, grant.expires_ms, epk, iv, secret, grant.readings_topic, grant.acks_topic
        )
        token = sign_jws(claims.encode(), self._signer, headers={"typ": GRANT_TYP})
        return Outgoing(grant.reply_topic, token.encode("ascii")), grant

    def _refuse(self, reply: str | None, refusal: AuthRefused) -> Outgoing | None:
        if reply is None:
            self._count(refusal)
            return None
        return self._refuse_to(reply_topic(self._prefix, reply), refusal)

    def _refuse_to(self, topic: str, refusal: AuthRefused) -> Outgoing:
        self._count(refusal)
        return Outgoing(topic, Refusal(refusal.reason).encode())

    def _count(self, refusal: AuthRefused) -> None:
        self._core.count(refusal)

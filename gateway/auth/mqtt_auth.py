"""The DID challenge-response over MQTT: the wire half of a :class:`Handshake`.

The MQTT transport hands in what arrived on ``<prefix>/auth/req`` with the current
time in milliseconds; :class:`Authenticator` parses it (JSON hello, compact-JWS
response), lets its :class:`Handshake` decide, and answers with an :class:`Outgoing`
(topic and payload) to publish, and after a good response a :class:`Grant`, so the
transport can create the device's broker account *before* it publishes the grant (or
publish :meth:`Authenticator.refuse_unavailable` if that fails).

A refusal is answered on the reply topic the message itself names; a message too
broken to name one is not answered at all. The wallet protocol (``wallet.py``) answers
the same way, with :func:`refuse`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from gateway.auth.broker import acks_topic, check_prefix, readings_topic
from gateway.auth.handshake import Handshake
from gateway.auth.mqtt_messages import (
    AUTH_TYP,
    GRANT_TYP,
    GrantPayload,
    Hello,
    Refusal,
    ResponsePayload,
    reply_topic,
)
from gateway.auth.secret import SecretError, new_password
from gateway.auth.strict import AuthRefused, check_typ, split_jws, verify_signed
from gateway.identity.resolver import Resolver
from gateway.identity.signing import sign_jws


class Outgoing(NamedTuple):
    """A message to publish: the topic and the payload bytes."""

    topic: str
    payload: bytes


#: ``session_token(did, expires_ms)``: the broker password of a new session.
SessionToken = Callable[[str, int], str]


@dataclass(frozen=True)
class Grant:
    """What the transport needs to create the device's broker account before granting."""

    did: str
    username: str
    password: str = field(repr=False)  # the broker session token; never logged
    expires_ms: int
    reply_topic: str
    readings_topic: str
    acks_topic: str


#: When a device whose broker account could not be made may try again.
UNAVAILABLE_RETRY_MS = 5_000


def refuse_unavailable(core: Handshake, topic: str) -> Outgoing:
    """The answer instead of a grant when the broker account could not be made: counted as
    ``unavailable`` (the grant itself was already counted when it was made)."""
    refusal = AuthRefused(
        "unavailable", "broker account not created", retry_after_ms=UNAVAILABLE_RETRY_MS
    )
    core.count(refusal)
    return Outgoing(topic, Refusal(refusal.reason, refusal.retry_after_ms).encode())


def refuse(core: Handshake, topic: str | None, refusal: AuthRefused) -> Outgoing | None:
    """Count ``refusal`` and address it to ``topic`` (None: nobody to answer)."""
    core.count(refusal)
    if topic is None:
        return None
    return Outgoing(topic, Refusal(refusal.reason, refusal.retry_after_ms).encode())


class Authenticator:
    """The gateway's side of the DID challenge-response over MQTT (see the module docstring)."""

    def __init__(
        self,
        core: Handshake,
        resolver: Resolver,
        *,
        prefix: str = "didgw",
        session_token: SessionToken | None = None,
    ) -> None:
        self.core = core
        self._resolver = resolver
        self._prefix = check_prefix(prefix)
        #: the broker password of a new session: ``session_token(did, expires_ms)``, the
        #: token the broker's plugin checks (``run/broker_sessions.py``); None: random
        self._session_token = session_token

    def on_request(self, payload: bytes, now_ms: int) -> tuple[Outgoing | None, Grant | None]:
        """Anything from ``<prefix>/auth/req``: a JSON hello or a compact-JWS response."""
        if payload[:16].lstrip()[:1] == b"{":
            return self.on_hello(payload, now_ms), None
        return self.on_response(payload, now_ms)

    def on_hello(self, payload: bytes, now_ms: int) -> Outgoing | None:
        """Answer a hello with a challenge or a refusal (None: no reply token to answer to)."""
        self.core.last_refusal = None
        try:
            hello = Hello.decode(payload)
        except AuthRefused as exc:
            return self._refuse(exc.reply, exc)
        try:
            challenge = self.core.challenge(hello.did, hello.reply, now_ms)
        except AuthRefused as exc:
            return self._refuse(hello.reply, exc)
        return Outgoing(reply_topic(self._prefix, hello.reply), challenge.encode())

    def on_response(self, payload: bytes, now_ms: int) -> tuple[Outgoing | None, Grant | None]:
        """Answer a signed response with a grant (and its :class:`Grant`) or a refusal."""
        self.core.last_refusal = None
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
            return self.core.answer(response, now_ms, verify, lambda: self._grant(response, now_ms))
        except AuthRefused as exc:
            return self._refuse(response.reply, exc), None

    def refuse_unavailable(self, grant: Grant) -> Outgoing:
        """What to publish instead of the grant when the broker account could not be made.

        Counted as ``unavailable``; the grant itself was already counted when it was made.
        """
        return refuse_unavailable(self.core, grant.reply_topic)

    def _grant(self, response: ResponsePayload, now_ms: int) -> tuple[Outgoing, Grant]:
        did = response.device
        expires = self.core.session_end(now_ms)
        token = None if self._session_token is None else self._session_token(did, expires)
        try:
            sealed = new_password(
                response.epk, response.nonce, did, random_bytes=self.core.random, password=token
            )
        except SecretError as exc:
            raise AuthRefused("malformed", f"response epk: {exc}") from None
        grant = Grant(
            did=did,
            username=did,
            password=sealed.password,
            expires_ms=expires,
            reply_topic=reply_topic(self._prefix, response.reply),
            readings_topic=readings_topic(did, self._prefix),
            acks_topic=acks_topic(did, self._prefix),
        )
        claims = GrantPayload(
            did,
            did,
            grant.expires_ms,
            sealed.epk,
            sealed.iv,
            sealed.secret,
            grant.readings_topic,
            grant.acks_topic,
        )
        token = sign_jws(claims.encode(), self.core.signer, headers={"typ": GRANT_TYP})
        return Outgoing(grant.reply_topic, token.encode("ascii")), grant

    def _refuse(self, reply: str | None, refusal: AuthRefused) -> Outgoing | None:
        topic = None if reply is None else reply_topic(self._prefix, reply)
        return refuse(self.core, topic, refusal)

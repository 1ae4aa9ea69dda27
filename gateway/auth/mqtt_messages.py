"""The auth messages of the MQTT protocol (devices and wallets), parsed strictly.

Everything on ``<prefix>/auth/req`` and ``<prefix>/auth/wallet`` comes from clients
nobody has authenticated yet; each message here is parsed with the strict toolkit
(``strict.py``) and refused whole at the first thing that is not exactly what
docs/protocol/mqtt.md and docs/protocol/people.md say. What MQTT adds to the toolkit: a reply
token, 16 to 64 characters ``[A-Za-z0-9_-]``, names the topic an answer goes to, and a
refusal carries it when it could be read, so the client hears why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from gateway.auth.strict import (
    AuthRefused,
    b64u,
    b64u_decode,
    check_did,
    check_int,
    check_type,
    exact_members,
    json_object,
    malformed,
)

NONCE_BYTES = 32
EPK_BYTES = 32
IV_BYTES = 12
AUTH_TYP = "didgw-auth+jws"
GRANT_TYP = "didgw-grant+jws"

_REPLY = re.compile(r"[A-Za-z0-9_-]{16,64}")
_REASON = re.compile(r"[a-z_]{1,32}")


# -- reply tokens ---------------------------------------------------------------


def check_reply(value: Any) -> str:
    if not isinstance(value, str) or not _REPLY.fullmatch(value):
        raise malformed("reply must be 16 to 64 characters [A-Za-z0-9_-]")
    return value


def reply_of(obj: Mapping[str, Any]) -> str | None:
    """The message's reply token if it is a valid one: where a refusal can be sent."""
    value = obj.get("reply")
    return value if isinstance(value, str) and _REPLY.fullmatch(value) else None


# -- the messages --------------------------------------------------------------


def _encode(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _parse(
    data: bytes, kind: str, names: frozenset[str], *, optional: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], str | None]:
    """``data`` as a message of ``kind`` with exactly ``names`` (those in ``optional`` may
    be left out)."""
    obj = json_object(data, kind)
    reply = reply_of(obj)
    try:
        check_type(obj, kind, kind)
        exact_members(obj, names - (optional - obj.keys()), kind)
    except AuthRefused as exc:
        raise AuthRefused(exc.reason, exc.detail, reply=reply) from None
    return obj, reply


@dataclass(frozen=True)
class Hello:
    """Device → ``<prefix>/auth/req``: who it is and where to answer."""

    did: str
    reply: str

    MEMBERS = frozenset({"type", "did", "reply"})

    def encode(self) -> bytes:
        return _encode({"type": "hello", "did": self.did, "reply": self.reply})

    @classmethod
    def decode(cls, data: bytes) -> Self:
        obj, reply = _parse(data, "hello", cls.MEMBERS)
        try:
            return cls(check_did(obj["did"], "hello did"), check_reply(obj["reply"]))
        except AuthRefused as exc:
            raise AuthRefused(exc.reason, exc.detail, reply=reply) from None


@dataclass(frozen=True)
class Challenge:
    """Gateway → ``<prefix>/auth/res/<reply>``: a nonce bound to this device and gateway."""

    nonce: bytes
    gateway: str
    device: str
    expires: int

    MEMBERS = frozenset({"type", "nonce", "gateway", "device", "expires"})

    def encode(self) -> bytes:
        return _encode(
            {
                "type": "challenge",
                "nonce": b64u(self.nonce),
                "gateway": self.gateway,
                "device": self.device,
                "expires": self.expires,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Self:
        obj, _ = _parse(data, "challenge", cls.MEMBERS)
        return cls(
            b64u_decode(obj["nonce"], "challenge nonce", size=NONCE_BYTES),
            check_did(obj["gateway"], "challenge gateway"),
            check_did(obj["device"], "challenge device"),
            check_int(obj["expires"], "challenge expires"),
        )


@dataclass(frozen=True)
class ResponsePayload:
    """The payload of the device's signed response (a ``didgw-auth+jws`` compact JWS)."""

    nonce: bytes
    device: str
    gateway: str
    ts: int
    epk: bytes
    reply: str

    MEMBERS = frozenset({"type", "nonce", "device", "gateway", "ts", "epk", "reply"})

    def encode(self) -> bytes:
        return _encode(
            {
                "type": "response",
                "nonce": b64u(self.nonce),
                "device": self.device,
                "gateway": self.gateway,
                "ts": self.ts,
                "epk": b64u(self.epk),
                "reply": self.reply,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Self:
        obj, reply = _parse(data, "response", cls.MEMBERS)
        try:
            return cls(
                b64u_decode(obj["nonce"], "response nonce", size=NONCE_BYTES),
                check_did(obj["device"], "response device"),
                check_did(obj["gateway"], "response gateway"),
                check_int(obj["ts"], "response ts"),
                b64u_decode(obj["epk"], "response epk", size=EPK_BYTES),
                check_reply(obj["reply"]),
            )
        except AuthRefused as exc:
            raise AuthRefused(exc.reason, exc.detail, reply=reply) from None


@dataclass(frozen=True)
class GrantPayload:
    """The payload of the gateway's signed grant (a ``didgw-grant+jws`` compact JWS)."""

    device: str
    username: str
    expires: int
    epk: bytes
    iv: bytes
    secret: bytes
    readings: str
    acks: str

    MEMBERS = frozenset(
        {"type", "device", "username", "expires", "epk", "iv", "secret", "readings", "acks"}
    )

    def encode(self) -> bytes:
        return _encode(
            {
                "type": "grant",
                "device": self.device,
                "username": self.username,
                "expires": self.expires,
                "epk": b64u(self.epk),
                "iv": b64u(self.iv),
                "secret": b64u(self.secret),
                "readings": self.readings,
                "acks": self.acks,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Self:
        obj, _ = _parse(data, "grant", cls.MEMBERS)
        topics = [obj["readings"], obj["acks"]]
        if not all(isinstance(t, str) and 0 < len(t) <= 1024 for t in topics):
            raise malformed("grant topics must be strings")
        return cls(
            check_did(obj["device"], "grant device"),
            check_did(obj["username"], "grant username"),
            check_int(obj["expires"], "grant expires"),
            b64u_decode(obj["epk"], "grant epk", size=EPK_BYTES),
            b64u_decode(obj["iv"], "grant iv", size=IV_BYTES),
            b64u_decode(obj["secret"], "grant secret", max_size=1024),
            obj["readings"],
            obj["acks"],
        )


@dataclass(frozen=True)
class Refusal:
    """Gateway → ``<prefix>/auth/res/<reply>``, instead of a challenge or a grant.

    ``retry_after`` (ms, only for refusals that a later try may pass: ``rate_limited``,
    ``unavailable``) says when to try again; a device adds jitter to it."""

    reason: str
    retry_after: int | None = None

    MEMBERS = frozenset({"type", "reason", "retry_after"})

    def encode(self) -> bytes:
        body: dict[str, object] = {"type": "refused", "reason": self.reason}
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return _encode(body)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Devices accept any well-formed reason: later gateways may add some."""
        obj, _ = _parse(data, "refused", cls.MEMBERS, optional=frozenset({"retry_after"}))
        if not isinstance(obj["reason"], str) or not _REASON.fullmatch(obj["reason"]):
            raise malformed("refused reason must be a lower-case word")
        retry = obj.get("retry_after")
        if retry is not None and (type(retry) is not int or not 0 <= retry <= 3_600_000):
            raise malformed("retry_after must be milliseconds, 0 to an hour")
        return cls(obj["reason"], retry)


# -- topics (the rest of the layout is in gateway.auth.broker) ----------------


def reply_topic(prefix: str, reply: str) -> str:
    """``<prefix>/auth/res/<reply>``: where the gateway answers one authentication."""
    return f"{prefix}/auth/res/{reply}"

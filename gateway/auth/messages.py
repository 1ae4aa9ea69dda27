"""The auth messages of the MQTT protocol, parsed strictly, and the checks they share.

Everything on ``<prefix>/auth/req`` comes from clients nobody has authenticated yet,
so it is parsed before anything else looks at it and refused whole at the first
thing that is not exactly what the README ("Devices over MQTT (protocol)") says:

* at most :data:`MAX_MESSAGE_BYTES`; UTF-8 JSON objects with exactly the documented
  members, no duplicate keys, no ``NaN``/``Infinity``, integers that are integers;
* ``b64u`` is canonical unpadded base64url of the documented length;
* a reply token is 16 to 64 characters ``[A-Za-z0-9_-]``; a DID has DID syntax,
  which keeps ``/``, ``+`` and ``#`` out of the topics built from it.

Every refusal is an :class:`AuthRefused` whose ``reason`` is one of :data:`REASONS`,
the stable code that goes on the wire in a ``refused`` message; ``detail`` is for
the operator's log and never goes on the wire.

The two checks that authentication and readings both make (registered and active;
signed by a key of that DID) live here too, so they give the same reasons.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from gateway.errors import DidgwError, SignatureError
from gateway.identity.cose import CoseError, Sign1, decode_cbor
from gateway.identity.document import check_did_syntax
from gateway.identity.resolver import Resolver, Unreachable
from gateway.identity.signing import JWS_ALGORITHMS, VerifiedJws, verify_detached
from gateway.registry import Status

#: The reasons a ``refused`` message may give, as the README lists them.
REASONS = (
    "malformed",
    "unknown_device",
    "not_active",
    "bad_signature",
    "bad_nonce",
    "clock_skew",
    "rate_limited",
    "unavailable",
    # the wallet protocol (people): gateway/auth/wallet.py
    "bad_presentation",
    "revoked",
    "not_permitted",
)
MAX_MESSAGE_BYTES = 8192
MAX_DID_CHARS = 512
NONCE_BYTES = 32
EPK_BYTES = 32
IV_BYTES = 12
AUTH_TYP = "didgw-auth+jws"
GRANT_TYP = "didgw-grant+jws"

_REPLY = re.compile(r"[A-Za-z0-9_-]{16,64}")
_B64U = re.compile(r"[A-Za-z0-9_-]*")
_REASON = re.compile(r"[a-z_]{1,32}")
_INT_MAX = 2**63 - 1

#: ``registry_lookup(did)``: the device's status, or None when it is not registered.
RegistryLookup = Callable[[str], Status | None]


class AuthRefused(DidgwError):
    """An auth message refused: ``reason`` goes on the wire, ``detail`` only to the log.

    ``reply`` is the reply token of the message when it could be read, i.e. where a
    ``refused`` answer can be sent; None when there is nobody to answer.
    """

    code = "auth_refused"

    def __init__(self, reason: str, detail: str = "", *, reply: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.reply = reply


def malformed(detail: str) -> AuthRefused:
    return AuthRefused("malformed", detail)


# -- primitives ---------------------------------------------------------------


def b64u(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(value: Any, what: str, *, size: int | None = None, max_size: int = 4096) -> bytes:
    """Canonical unpadded base64url of ``size`` bytes (or at most ``max_size``)."""
    if not isinstance(value, str) or not _B64U.fullmatch(value) or len(value) % 4 == 1:
        raise malformed(f"{what} is not unpadded base64url")
    if len(value) > (max_size * 4 + 2) // 3:
        raise malformed(f"{what} is longer than {max_size} bytes")
    data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    if b64u(data) != value:
        raise malformed(f"{what} is not canonical base64url")
    if size is not None and len(data) != size:
        raise malformed(f"{what} must be {size} bytes, got {len(data)}")
    return data


def json_object(data: bytes, what: str, *, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """A UTF-8 JSON object of at most ``max_bytes``, without duplicate keys or NaN."""
    if len(data) > max_bytes:
        raise malformed(f"{what} is {len(data)} bytes; at most {max_bytes} are accepted")
    try:
        value = json.loads(
            data.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise malformed(f"{what} is not UTF-8 JSON: {exc}") from None
    if not isinstance(value, dict):
        raise malformed(f"{what} is not a JSON object")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def exact_members(obj: Mapping[str, Any], names: frozenset[str], what: str) -> None:
    """Refuse a missing or an unknown member."""
    if obj.keys() != names:
        missing = sorted(names - obj.keys())
        unknown = sorted(obj.keys() - names)
        raise malformed(f"{what}: missing {missing}, unknown {unknown}")


def check_type(obj: Mapping[str, Any], expected: str, what: str) -> None:
    kind = obj.get("type")
    if kind != expected:
        raise malformed(f"{what}: message type {kind!r} where {expected!r} is expected")


def check_int(value: Any, what: str, *, minimum: int = 0) -> int:
    """A JSON integer (not a bool, not a float) in ``minimum`` … 2⁶³-1."""
    if type(value) is not int or not minimum <= value <= _INT_MAX:
        raise malformed(f"{what} must be an integer from {minimum} to 2^63-1")
    return value


def check_did(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_DID_CHARS:
        raise malformed(f"{what} must be a DID of at most {MAX_DID_CHARS} characters")
    try:
        check_did_syntax(value)
    except DidgwError as exc:
        raise malformed(f"{what}: {exc}") from None
    return value


def check_reply(value: Any) -> str:
    if not isinstance(value, str) or not _REPLY.fullmatch(value):
        raise malformed("reply must be 16 to 64 characters [A-Za-z0-9_-]")
    return value


def reply_of(obj: Mapping[str, Any]) -> str | None:
    """The message's reply token if it is a valid one: where a refusal can be sent."""
    value = obj.get("reply")
    return value if isinstance(value, str) and _REPLY.fullmatch(value) else None


def split_jws(
    token: bytes, what: str, *, max_bytes: int = MAX_MESSAGE_BYTES
) -> tuple[dict[str, Any], bytes]:
    """The protected header and the payload of a compact JWS, before any verification."""
    if len(token) > max_bytes:
        raise malformed(f"{what} is {len(token)} bytes; at most {max_bytes} are accepted")
    try:
        text = token.decode("ascii")
    except UnicodeDecodeError:
        raise malformed(f"{what} is not a compact JWS (not ASCII)") from None
    parts = text.split(".")
    if len(parts) != 3 or not all(parts):
        raise malformed(f"{what} is not a compact JWS (three non-empty parts)")
    header = json_object(
        b64u_decode(parts[0], f"{what} header", max_size=max_bytes), f"{what} header"
    )
    payload = b64u_decode(parts[1], f"{what} payload", max_size=max_bytes)
    b64u_decode(parts[2], f"{what} signature", size=64)
    return header, payload


def check_typ(header: Mapping[str, Any], typ: str, what: str) -> None:
    if header.get("typ") != typ:
        raise malformed(f"{what}: JWS typ {header.get('typ')!r} where {typ!r} is expected")


# -- checks shared with readings ----------------------------------------------


def check_registered(lookup: RegistryLookup, did: str) -> None:
    """Refuse a DID that is not registered (``unknown_device``) or not active (``not_active``)."""
    status = lookup(did)
    if status is None:
        raise AuthRefused("unknown_device", f"{did} is not registered")
    if status is not Status.ACTIVE:
        raise AuthRefused("not_active", f"{did} is {status.value}")


def verify_signed(
    token: bytes,
    header: Mapping[str, Any],
    payload: bytes,
    did: str,
    *,
    resolver: Resolver,
    relationship: str,
    now_ms: int,
) -> VerifiedJws:
    """Check that ``token`` (already split by :func:`split_jws`) is signed by a key of ``did``
    allowed for ``relationship``.

    A kid of another DID, a key outside the relationship or a bad signature is
    ``bad_signature``; a DID document that cannot be fetched now is ``unavailable``
    (the device should try again later, its key is not at fault).

    This is every reading's check, so the token is not parsed a second time: the
    signature is checked over the JWS signing input (RFC 7515 §5.2: the ASCII of
    header and payload as sent, up to the last dot) by the detached-signature
    recipe, with the same header rules as :func:`~gateway.identity.signing.verify_jws`.
    """
    kid = header.get("kid")
    if not isinstance(kid, str) or kid.partition("#")[0] != did:
        raise AuthRefused("bad_signature", f"JWS kid {kid!r} is not a key of {did}")
    alg = header.get("alg")
    if alg not in JWS_ALGORITHMS:
        raise AuthRefused("bad_signature", f"JWS alg {alg!r} refused; expected EdDSA")
    if "crit" in header:
        raise AuthRefused("bad_signature", "JWS has critical header parameters; refused")
    signing_input, _, encoded = token.rpartition(b".")
    signature = base64.urlsafe_b64decode(encoded + b"=" * (-len(encoded) % 4))
    try:
        key = verify_detached(
            kid,
            signing_input,
            signature,
            resolver=resolver,
            relationship=relationship,
            now=now_ms / 1000,
        )
    except SignatureError as exc:
        raise AuthRefused("bad_signature", str(exc)) from None
    except Unreachable as exc:
        raise AuthRefused("unavailable", f"cannot check the JWS by {kid}: {exc}") from None
    except DidgwError as exc:
        raise AuthRefused("bad_signature", f"cannot check the JWS by {kid}: {exc}") from None
    return VerifiedJws(payload, dict(header), key)


def cbor_object(data: bytes, what: str, *, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """A CBOR map with text keys (the CoAP counterpart of :func:`json_object`)."""
    try:
        value = decode_cbor(data, what, max_bytes=max_bytes)
    except CoseError as exc:
        raise malformed(str(exc)) from None
    if not isinstance(value, dict) or not all(type(k) is str for k in value):
        raise malformed(f"{what} is not a CBOR map with text keys")
    return value


def split_cose(data: bytes, what: str, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Sign1:
    """A COSE_Sign1 split but not verified (the counterpart of :func:`split_jws`)."""
    try:
        return Sign1.decode(data, what, max_bytes=max_bytes)
    except CoseError as exc:
        raise malformed(str(exc)) from None


def check_cose_typ(sign1: Sign1, typ: str, what: str) -> None:
    if sign1.typ != typ:
        raise malformed(f"{what}: COSE typ {sign1.typ!r} where {typ!r} is expected")


def verify_cose_signed(
    sign1: Sign1, did: str, *, resolver: Resolver, relationship: str, now_ms: int
) -> None:
    """:func:`verify_signed` for a COSE_Sign1: the same recipe over its ``Sig_structure``,
    with the same refusals (``bad_signature``, ``unavailable``)."""
    kid = sign1.kid
    if kid.partition("#")[0] != did:
        raise AuthRefused("bad_signature", f"COSE kid {kid!r} is not a key of {did}")
    try:
        verify_detached(
            kid,
            sign1.to_be_signed(),
            sign1.signature,
            resolver=resolver,
            relationship=relationship,
            now=now_ms / 1000,
        )
    except SignatureError as exc:
        raise AuthRefused("bad_signature", str(exc)) from None
    except Unreachable as exc:
        raise AuthRefused("unavailable", f"cannot check the COSE by {kid}: {exc}") from None
    except DidgwError as exc:
        raise AuthRefused("bad_signature", f"cannot check the COSE by {kid}: {exc}") from None


# -- the messages --------------------------------------------------------------


def _encode(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _parse(data: bytes, kind: str, names: frozenset[str]) -> tuple[dict[str, Any], str | None]:
    obj = json_object(data, kind)
    reply = reply_of(obj)
    try:
        check_type(obj, kind, kind)
        exact_members(obj, names, kind)
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
    """Gateway → ``<prefix>/auth/res/<reply>``, instead of a challenge or a grant."""

    reason: str

    MEMBERS = frozenset({"type", "reason"})

    def encode(self) -> bytes:
        return _encode({"type": "refused", "reason": self.reason})

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Devices accept any well-formed reason: later gateways may add some."""
        obj, _ = _parse(data, "refused", cls.MEMBERS)
        if not isinstance(obj["reason"], str) or not _REASON.fullmatch(obj["reason"]):
            raise malformed("refused reason must be a lower-case word")
        return cls(obj["reason"])


# -- topics (the rest of the layout is in gateway.auth.broker) ----------------


def reply_topic(prefix: str, reply: str) -> str:
    """``<prefix>/auth/res/<reply>``: where the gateway answers one authentication."""
    return f"{prefix}/auth/res/{reply}"

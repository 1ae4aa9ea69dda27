"""Strict checking of what unauthenticated clients send: JSON, CBOR, JWS and COSE.

Everything a device or a wallet sends is parsed before anything else looks at it and
refused whole at the first thing that is not exactly what the protocol says. The
transports' message types (``mqtt_messages``, ``coap_auth``, ``wallet``) and the
readings' checks (``readings``) are built from these pieces only, so that MQTT and
CoAP, authentication and readings refuse the same faults with the same reasons:

* at most a given size; UTF-8 JSON objects (or CBOR maps with text keys) with exactly
  the documented members, no duplicate keys, no ``NaN``/``Infinity``, integers that
  are integers;
* ``b64u`` is canonical unpadded base64url of the documented length; a DID has DID
  syntax (which keeps ``/``, ``+`` and ``#`` out of the topics built from it);
* a JWS or a COSE_Sign1 is split before it is verified, its ``typ`` is the one
  expected, and it is signed by a key of the DID it claims (the JWS header rules
  themselves are ``identity.signing.check_jws_header``).

Every refusal is an :class:`AuthRefused` whose ``reason`` is one of :data:`REASONS`,
the stable code that goes on the wire; ``detail`` is for the operator's log and never
goes on the wire.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from gateway.errors import DidgwError, SignatureError
from gateway.identity.cose import CoseError, Sign1, decode_cbor
from gateway.identity.document import check_did_syntax
from gateway.identity.resolver import Resolver, Unreachable
from gateway.identity.signing import VerifiedJws, VerifiedKey, check_jws_header, verify_detached
from gateway.registry import Status

#: The reasons a refusal may give, as docs/protocol/mqtt.md and docs/protocol/people.md list them.
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
    "suspended",
    "not_permitted",
)
MAX_MESSAGE_BYTES = 8192
MAX_DID_CHARS = 512

_B64U = re.compile(r"[A-Za-z0-9_-]*")
_INT_MAX = 2**63 - 1

#: ``registry_lookup(did)``: the device's status, or None when it is not registered.
RegistryLookup = Callable[[str], Status | None]


class AuthRefused(DidgwError):
    """A message refused: ``reason`` goes on the wire, ``detail`` only to the log.

    ``reply`` is the reply token of the message when it could be read, i.e. where a
    ``refused`` answer can be sent over MQTT; None when there is nobody to answer.
    """

    code = "auth_refused"

    def __init__(
        self,
        reason: str,
        detail: str = "",
        *,
        reply: str | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.reply = reply
        #: when a refusal for being busy may be tried again (ms from now); None otherwise
        self.retry_after_ms = retry_after_ms


def malformed(detail: str) -> AuthRefused:
    return AuthRefused("malformed", detail)


# -- values -------------------------------------------------------------------


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


# -- objects: JSON and CBOR -----------------------------------------------------


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


def cbor_object(data: bytes, what: str, *, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """A CBOR map with text keys (the CoAP counterpart of :func:`json_object`)."""
    try:
        value = decode_cbor(data, what, max_bytes=max_bytes)
    except CoseError as exc:
        raise malformed(str(exc)) from None
    if not isinstance(value, dict) or not all(type(k) is str for k in value):
        raise malformed(f"{what} is not a CBOR map with text keys")
    return value


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


# -- signed envelopes: JWS and COSE_Sign1, split before they are verified --------


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


def split_cose(data: bytes, what: str, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Sign1:
    """A COSE_Sign1 split but not verified (the counterpart of :func:`split_jws`)."""
    try:
        return Sign1.decode(data, what, max_bytes=max_bytes)
    except CoseError as exc:
        raise malformed(str(exc)) from None


def check_cose_typ(sign1: Sign1, typ: str, what: str) -> None:
    if sign1.typ != typ:
        raise malformed(f"{what}: COSE typ {sign1.typ!r} where {typ!r} is expected")


# -- who signed: the checks authentication and readings share --------------------


def _check_status(status: Status | None, did: str) -> None:
    """Refuse a DID that is not registered (``unknown_device``) or not active (``not_active``)."""
    if status is None:
        raise AuthRefused("unknown_device", f"{did} is not registered")
    if status is not Status.ACTIVE:
        raise AuthRefused("not_active", f"{did} is {status.value}")


T = TypeVar("T")


def verify_then_check_registered(lookup: RegistryLookup, did: str, verify: Callable[[], T]) -> T:
    """``verify()`` the signature for ``did``, then refuse a DID that is not registered
    (``unknown_device``) or not active (``not_active``). What the registry says of a DID is
    told only to whoever signs for it: an anonymous client that does not hold the key gets
    the same refusal (``bad_signature``) for a registered, an unknown and a suspended DID.
    An unregistered DID that is not a ``did:key`` is refused ``bad_signature`` unverified:
    its key could only be fetched from a host the DID names, and the gateway fetches
    nothing for a DID it does not know."""
    status = lookup(did)
    if status is None and not did.startswith("did:key:"):
        raise AuthRefused(
            "bad_signature", f"{did} is not registered: no document is fetched to check it"
        )
    result = verify()
    _check_status(status, did)
    return result


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

    A header outside the JWS header rules, a kid of another DID, a key outside the
    relationship or a bad signature is ``bad_signature``; a DID document that cannot be
    fetched now is ``unavailable`` (the device should try again later, its key is not at
    fault).

    This is every reading's check, so the token is not parsed a second time: the
    signature is checked over the JWS signing input (RFC 7515 §5.2: the ASCII of
    header and payload as sent, up to the last dot) by the detached-signature
    recipe, under the same header rules as :func:`~gateway.identity.signing.verify_jws`.
    """
    try:
        kid = check_jws_header(header)
    except SignatureError as exc:
        raise AuthRefused("bad_signature", str(exc)) from None
    signing_input, _, encoded = token.rpartition(b".")
    signature = base64.urlsafe_b64decode(encoded + b"=" * (-len(encoded) % 4))
    key = _verify(
        kid,
        did,
        "JWS",
        signing_input,
        signature,
        resolver=resolver,
        relationship=relationship,
        now_ms=now_ms,
    )
    return VerifiedJws(payload, dict(header), key)


def verify_cose_signed(
    sign1: Sign1, did: str, *, resolver: Resolver, relationship: str, now_ms: int
) -> None:
    """:func:`verify_signed` for a COSE_Sign1: the same recipe over its ``Sig_structure``,
    with the same refusals (``bad_signature``, ``unavailable``)."""
    _verify(
        sign1.kid,
        did,
        "COSE",
        sign1.to_be_signed(),
        sign1.signature,
        resolver=resolver,
        relationship=relationship,
        now_ms=now_ms,
    )


def _verify(
    kid: str,
    did: str,
    what: str,
    message: bytes,
    signature: bytes,
    *,
    resolver: Resolver,
    relationship: str,
    now_ms: int,
) -> VerifiedKey:
    """``signature`` over ``message`` by ``kid``, a key of ``did`` allowed for ``relationship``;
    every failure as the refusal a client is told (``what``: JWS or COSE, for the log)."""
    if kid.partition("#")[0] != did:
        raise AuthRefused("bad_signature", f"{what} kid {kid!r} is not a key of {did}")
    try:
        return verify_detached(
            kid, message, signature, resolver=resolver, relationship=relationship, now=now_ms / 1000
        )
    except SignatureError as exc:
        raise AuthRefused("bad_signature", str(exc)) from None
    except Unreachable as exc:
        raise AuthRefused("unavailable", f"cannot check the {what} by {kid}: {exc}") from None
    except DidgwError as exc:
        raise AuthRefused("bad_signature", f"cannot check the {what} by {kid}: {exc}") from None

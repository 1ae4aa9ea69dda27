"""Broker session tokens: the password a device or a person presents to mosquitto.

The gateway seals a short-lived token for each session; mosquitto's didgw plugin
(``broker-plugin/didgw_auth.c``) checks it with the token key it shares with the gateway,
and takes the client's topics from its claims. A first session, a renewal or a revocation
then needs no change in the dynamic-security plugin, whose every change rewrites its whole
file while the broker routes nothing (44-87 ms each).

Format (docs/protocol/mqtt.md, "Session tokens")::

    v2.<base64url(payload)>.<base64url(HMAC-SHA256(key, b"v2." + base64url(payload)))>

The payload is canonical JSON: keys sorted, no whitespace, ASCII, and every string made of
printable ASCII without ``"`` or ``\\``, so that it has exactly one spelling and the plugin
reads it with a strict parser of a fixed layout instead of a JSON library::

    {"exp":<unix s>,"iat":<unix s>,"jti":"<16 random bytes>","kind":"device"|"person",
     "pfx":"<topic prefix>","sub":"<did>"}

The key is 32 random bytes of its own (``keys/broker-token.key``), not the gateway's DID key:
a leaked token key opens broker sessions, nothing else. A MAC and not a signature because
the broker checks every login on its one thread while it routes nothing: an Ed25519
verification cost it 74 us a login (a burst of 300 logins held routing 13-20 ms, against 4
ms for as many anonymous ones), an HMAC about 1 us. The price is that the broker holds a
key that can make tokens, not only check them; whoever can read the broker's files can
also read everything it routes (docs/security.md, "Broker session tokens").

Sans-IO: time and randomness are passed in; :func:`verify` is the same check as the
plugin's, for the tests and the gateway's own checks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass

from gateway.auth.broker import check_prefix
from gateway.errors import DidgwError
from gateway.identity.document import check_did_syntax

VERSION = "v2"
#: The token key's length: 32 random bytes (HMAC-SHA256's block is 64; 32 is its strength).
KEY_BYTES = 32
TAG_BYTES = 32
KINDS = ("device", "person")
#: The longest token either side accepts (the plugin refuses longer passwords unread).
MAX_TOKEN_CHARS = 2048
JTI_BYTES = 16
#: What a string claim may hold: printable ASCII without '"' and '\' (one JSON spelling).
_PLAIN = re.compile(r"[\x20-\x7e]*")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class TokenError(DidgwError):
    """A token that is not valid: the message says why."""

    code = "bad_broker_token"


@dataclass(frozen=True)
class Claims:
    sub: str
    kind: str
    pfx: str
    iat: int
    exp: int
    jti: str


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise TokenError("not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError("not base64url") from exc
    if b64url(raw) != text:  # non-zero padding bits: a second spelling of the same bytes
        raise TokenError("not canonical base64url")
    return raw


def _plain(name: str, value: str) -> str:
    if not _PLAIN.fullmatch(value) or '"' in value or "\\" in value:
        raise TokenError(f"{name} must be printable ASCII without quotes or backslashes")
    return value


def canonical_payload(claims: Claims) -> bytes:
    """The one spelling of ``claims`` that the tag covers (keys sorted, no whitespace)."""
    for name in ("sub", "kind", "pfx", "jti"):
        _plain(name, getattr(claims, name))
    body = {
        "exp": claims.exp,
        "iat": claims.iat,
        "jti": claims.jti,
        "kind": claims.kind,
        "pfx": claims.pfx,
        "sub": claims.sub,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def check_key(key: bytes) -> bytes:
    """``key`` if it can be a token key (exactly :data:`KEY_BYTES`, not all one byte)."""
    if len(key) != KEY_BYTES or len(set(key)) == 1:
        raise TokenError(f"a token key is {KEY_BYTES} random bytes")
    return key


def tag(key: bytes, signed: str) -> bytes:
    """The token's MAC over its first two parts."""
    return hmac.new(check_key(key), signed.encode("ascii"), hashlib.sha256).digest()


def mint(
    key: bytes,
    *,
    sub: str,
    kind: str,
    prefix: str,
    now: int,
    lifetime: int,
    random_bytes: bytes,
) -> str:
    """A token for ``sub`` (a DID) of ``kind`` under topic ``prefix``, valid ``lifetime`` s."""
    check_did_syntax(sub)
    check_prefix(prefix)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if lifetime <= 0:
        raise ValueError("a token's lifetime must be positive")
    if len(random_bytes) != JTI_BYTES:
        raise ValueError(f"a token's id takes {JTI_BYTES} random bytes")
    claims = Claims(sub, kind, prefix, now, now + lifetime, b64url(random_bytes))
    signed = f"{VERSION}.{b64url(canonical_payload(claims))}"
    token = f"{signed}.{b64url(tag(key, signed))}"
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"the token would be longer than {MAX_TOKEN_CHARS} characters")
    return token


def verify(token: str, key: bytes, now: int) -> Claims:
    """The claims of a valid, unexpired token; :class:`TokenError` says why one is not."""
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError("token too long")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise TokenError(f"not a {VERSION} token")
    payload, given = b64url_decode(parts[1]), b64url_decode(parts[2])
    if len(given) != TAG_BYTES or not hmac.compare_digest(
        given, tag(key, f"{parts[0]}.{parts[1]}")
    ):
        raise TokenError("bad tag")
    claims = _parse(payload)
    if now >= claims.exp:
        raise TokenError("token expired")
    return claims


def _parse(payload: bytes) -> Claims:
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise TokenError("payload is not JSON") from exc
    keys = {"exp", "iat", "jti", "kind", "pfx", "sub"}
    if not isinstance(body, dict) or set(body) != keys:
        raise TokenError(f"payload must hold exactly {sorted(keys)}")
    ints, strs = ("exp", "iat"), ("jti", "kind", "pfx", "sub")
    if any(type(body[k]) is not int or body[k] < 0 for k in ints):
        raise TokenError("iat and exp must be non-negative integers")
    if any(not isinstance(body[k], str) for k in strs):
        raise TokenError("sub, kind, pfx and jti must be strings")
    claims = Claims(**body)
    if canonical_payload(claims) != payload:
        raise TokenError("payload is not canonical")
    if claims.kind not in KINDS:
        raise TokenError(f"unknown kind {claims.kind!r}")
    if claims.exp <= claims.iat:
        raise TokenError("token expires before it is issued")
    try:
        check_did_syntax(claims.sub)
        check_prefix(claims.pfx)
    except DidgwError as exc:
        raise TokenError(f"bad claim: {exc}") from exc
    return claims


def deny_file_text(entries: dict[str, int]) -> str:
    """The plugin's deny file: one ``<did> <unix s>`` line per DID whose tokens issued at
    or before that second are void (revoked, suspended or re-keyed then)."""
    for did, second in entries.items():
        check_did_syntax(did)
        _plain("did", did)
        if " " in did or second < 0:
            raise ValueError(f"cannot list {did!r} at {second}")
    return "".join(f"{did} {second}\n" for did, second in sorted(entries.items()))

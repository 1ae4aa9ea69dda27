"""The DID challenge-response for constrained devices over CoAP, sans-IO.

The wire half of a :class:`~gateway.auth.handshake.Handshake` (the core MQTT and
wallets hold too: nonces, checks and their order, the clock window, the session
length), with CBOR messages and COSE_Sign1 signatures instead of JSON and JWS, and
request/response instead of reply topics:

* ``POST /auth`` with a CBOR hello ``{"type": "hello", "did": DID}`` → 2.05 with a
  CBOR challenge ``{"type": "challenge", "nonce": bstr(32), "gateway": DID,
  "device": DID, "expires": ms}``;
* ``POST /auth`` with a COSE_Sign1 (``typ`` ``didgw-auth+cose``, signed by a key in
  the device's ``authentication`` relationship) whose payload is ``{"type":
  "response", "nonce", "device", "gateway", "ts"}`` → 2.04 with the grant.

**The CoAP grant.** A CoAP device gets no broker account and no secret: its
readings are signed one by one, so a bearer secret would prove nothing more. The
grant is a *session the gateway keeps*: the gateway remembers that this DID proved
possession of its authentication key until ``expires``, and accepts readings
signed by that device only while the session lasts (otherwise 4.01). The device
receives a COSE_Sign1 by the gateway (``typ`` ``didgw-grant+cose``) of ``{"type":
"grant", "device", "gateway", "nonce", "expires", "readings"}``: bound to its nonce,
so it knows the answer is fresh and from this gateway, and telling it when to
authenticate again and where to send readings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from gateway.auth.handshake import Handshake
from gateway.auth.mqtt_messages import NONCE_BYTES
from gateway.auth.strict import (
    AuthRefused,
    cbor_object,
    check_cose_typ,
    check_did,
    check_int,
    check_type,
    exact_members,
    malformed,
    split_cose,
    verify_cose_signed,
)
from gateway.identity.cose import sign1
from gateway.identity.resolver import Resolver

AUTH_COSE_TYP = "didgw-auth+cose"
GRANT_COSE_TYP = "didgw-grant+cose"
MAX_AUTH_BYTES = 2048
_HELLO = frozenset({"type", "did"})
_RESPONSE = frozenset({"type", "nonce", "device", "gateway", "ts"})


@dataclass(frozen=True)
class CoapClaim:
    """The payload of a device's signed response over CoAP."""

    nonce: bytes
    device: str
    gateway: str
    ts: int
    reply: str | None = None  # CoAP answers the request itself: no reply token

    def encode(self) -> bytes:
        return cbor2.dumps(
            {
                "type": "response",
                "nonce": self.nonce,
                "device": self.device,
                "gateway": self.gateway,
                "ts": self.ts,
            }
        )


@dataclass(frozen=True)
class CoapSession:
    """What the gateway keeps for a CoAP device that authenticated: its grant."""

    did: str
    expires_ms: int


@dataclass(frozen=True)
class CoapAnswer:
    """The 2.xx answer to an auth request, and the session it opens (for a response)."""

    payload: bytes
    session: CoapSession | None = None


def _object(data: bytes, kind: str, names: frozenset[str]) -> Mapping[str, Any]:
    obj = cbor_object(data, kind, max_bytes=MAX_AUTH_BYTES)
    check_type(obj, kind, kind)
    exact_members(obj, names, kind)
    return obj


def _nonce(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != NONCE_BYTES:
        raise malformed(f"nonce must be a {NONCE_BYTES}-byte string")
    return value


class CoapAuthenticator:
    """The gateway's side of the challenge-response over CoAP (see the module docstring)."""

    def __init__(self, core: Handshake, resolver: Resolver, *, readings_path: str = "/r") -> None:
        self.core = core
        self._resolver = resolver
        self._readings = readings_path

    def on_request(self, payload: bytes, now_ms: int) -> CoapAnswer:
        """A hello (a CBOR map) or a response (a COSE_Sign1); refusals raise (counted)."""
        try:
            if payload[:1] and 0xA0 <= payload[0] <= 0xBF:  # CBOR major type 5: a map
                return self._hello(payload, now_ms)
            return self._response(payload, now_ms)
        except AuthRefused as exc:
            self.core.count(exc)
            raise

    def _hello(self, payload: bytes, now_ms: int) -> CoapAnswer:
        obj = _object(payload, "hello", _HELLO)
        did = check_did(obj["did"], "hello did")
        challenge = self.core.challenge(did, None, now_ms)
        return CoapAnswer(
            cbor2.dumps(
                {
                    "type": "challenge",
                    "nonce": challenge.nonce,
                    "gateway": challenge.gateway,
                    "device": challenge.device,
                    "expires": challenge.expires,
                }
            )
        )

    def _response(self, payload: bytes, now_ms: int) -> CoapAnswer:
        signed = split_cose(payload, "response", max_bytes=MAX_AUTH_BYTES)
        obj = _object(signed.payload, "response", _RESPONSE)
        claim = CoapClaim(
            _nonce(obj["nonce"]),
            check_did(obj["device"], "response device"),
            check_did(obj["gateway"], "response gateway"),
            check_int(obj["ts"], "response ts"),
        )
        check_cose_typ(signed, AUTH_COSE_TYP, "response")

        def verify() -> None:
            verify_cose_signed(
                signed,
                claim.device,
                resolver=self._resolver,
                relationship="authentication",
                now_ms=now_ms,
            )

        def grant() -> CoapAnswer:
            session = CoapSession(claim.device, self.core.session_end(now_ms))
            body = cbor2.dumps(
                {
                    "type": "grant",
                    "device": claim.device,
                    "gateway": self.core.did,
                    "nonce": claim.nonce,
                    "expires": session.expires_ms,
                    "readings": self._readings,
                }
            )
            return CoapAnswer(sign1(body, self.core.signer, typ=GRANT_COSE_TYP), session)

        return self.core.answer(claim, now_ms, verify, grant)


class CoapSessions:
    """The sessions of CoAP devices, by DID: at most one per device, the latest grant."""

    def __init__(self) -> None:
        self._expires: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._expires)

    def open(self, session: CoapSession) -> None:
        self._expires[session.did] = session.expires_ms

    def live(self, did: str, now_ms: int) -> bool:
        expires = self._expires.get(did)
        return expires is not None and expires > now_ms

    def close(self, did: str) -> None:
        self._expires.pop(did, None)

    def sweep(self, now_ms: int) -> int:
        """Forget expired sessions; returns how many."""
        gone = [did for did, expires in self._expires.items() if expires <= now_ms]
        for did in gone:
            del self._expires[did]
        return len(gone)

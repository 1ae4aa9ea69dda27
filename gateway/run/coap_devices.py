"""Devices over CoAP: authentication, sessions, readings, and what each refusal is called.

Glue between the CoAP edge (``transports/coap.py``), the sans-IO handshake and
reading checks (``auth/``) and the reading pipeline (``ingest.py``), on the
event loop; the recorder's thread settles each reading's answer.

Resources (listed by ``/.well-known/core``):

* ``/auth`` (rt ``didgw.auth``): the challenge-response (``auth/coap_auth.py``);
* ``/r`` (rt ``didgw.readings``): a COSE_Sign1 reading; 2.04 Changed with the CBOR
  ack ``{"seq": n, "entry": chain seq}`` once the reading is durably recorded;
* ``/status-list`` (rt ``didgw.status-list``, with ``[credentials] enabled``): the signed
  revocation list, the same bytes until it changes (:class:`SignedStatusList`), so that
  a device can fetch it block by block (the transport cuts every GET answer into small
  blocks: no anonymous request makes the gateway an amplifier).

A refusal is a CoAP error code with a diagnostic payload (RFC 7252 §5.5.2): the
stable reason word, never the detail (which is for the log):

=====  ==============================================================
4.00   ``malformed`` (not CBOR/COSE of the documented form)
4.01   ``bad_signature``, ``bad_nonce``, ``unauthenticated`` (a reading from a
       device without a live session: authenticate first)
4.03   ``unknown_device``, ``not_active``, ``replay``, ``clock_skew``
4.05   ``method_not_allowed``
4.08   ``incomplete`` (a block that continues no block-wise request the gateway holds)
4.13   ``too_large`` (with Size1)
4.29   ``rate_limited`` (this peer, or too many challenges for the DID), Max-Age
5.03   ``unavailable`` (a DID document cannot be fetched, the record cannot be
       written) and ``overloaded`` (too many readings in flight, or too many
       block-wise requests being received), Max-Age
=====  ==============================================================

``replay`` includes the same bytes sent again in a new request: over CoAP a
retransmission is recognised by its message ID (aiocoap answers it with the stored
response, and nothing is recorded twice), so a new request carrying a reading that
is already on the record is a replay — for the device that sent it, the sign that
the gateway has it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import cbor2

from gateway.auth.coap_auth import CoapAuthenticator, CoapSessions
from gateway.auth.limits import PeerLimiter
from gateway.auth.readings import Reading, ReadingChecker, ReadingRefused
from gateway.auth.strict import AuthRefused
from gateway.run.ingest import Ack, ReadingPipeline
from gateway.transports.coap import CBOR, COSE_SIGN1, CoapRequest, CoapResponse, Route

log = logging.getLogger(__name__)

AUTH_PATH = ("auth",)
READINGS_PATH = ("r",)
STATUS_LIST_PATH = ("status-list",)
JSON = 50  # CoAP content format application/json

_CODES: dict[str, tuple[int, int]] = {
    "malformed": (4, 0),
    "bad_signature": (4, 1),
    "bad_nonce": (4, 1),
    "unauthenticated": (4, 1),
    "unknown_device": (4, 3),
    "not_active": (4, 3),
    "replay": (4, 3),
    "clock_skew": (4, 3),
    "method_not_allowed": (4, 5),
    "incomplete": (4, 8),
    "too_large": (4, 13),
    "rate_limited": (4, 29),
    "unavailable": (5, 3),
    "overloaded": (5, 3),
    "storage_full": (5, 3),
}
_RETRY_LATER = frozenset({"rate_limited", "unavailable", "overloaded", "storage_full"})


def code_of(reason: str) -> tuple[int, int]:
    """The CoAP response code of a refusal reason."""
    return _CODES[reason]


class CoapDevices:
    """Serve ``/auth`` and ``/r`` (see the module docstring)."""

    def __init__(
        self,
        *,
        authenticator: CoapAuthenticator,
        checker: ReadingChecker,
        pipeline: ReadingPipeline,
        peer_rate: float = 50.0,
        peer_burst: int = 100,
        max_in_flight: int = 2000,
        retry_after_seconds: int = 2,
        status_list: Callable[[], bytes] | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._status_list = status_list
        self._auth = authenticator
        self._checker = checker
        self._pipeline = pipeline
        self.sessions = CoapSessions()
        self._limiter = PeerLimiter(peer_rate, peer_burst)
        self._max_in_flight = max_in_flight
        self._retry_after = retry_after_seconds
        self._clock_ms = clock_ms
        self._monotonic = monotonic
        self.in_flight = 0
        self.closing = False  # set when stopping: readings get 5.03 and come back later

    def routes(self) -> list[Route]:
        routes = [
            Route(AUTH_PATH, self.on_auth, "didgw.auth", CBOR),
            Route(READINGS_PATH, self.on_reading, "didgw.readings", COSE_SIGN1),
        ]
        if self._status_list is not None:
            routes.append(Route(STATUS_LIST_PATH, self.on_status_list, "didgw.status-list", JSON))
        return routes

    async def on_status_list(self, request: CoapRequest) -> CoapResponse:
        """GET: the gateway's signed revocation list (the credential of the W3C Bitstring
        Status List, JSON), as on the MQTT status-list topic; the transport sends it in
        blocks."""
        if request.method != "GET" or self._status_list is None:
            return self.refusal("method_not_allowed")
        return CoapResponse((2, 5), self._status_list(), content_format=JSON)

    def admit(self, peer: str) -> CoapResponse | None:
        """Per-peer rate limit, for every datagram (each block of a block-wise request too)."""
        if self._limiter.allow(peer, self._monotonic()):
            return None
        return self.refusal("rate_limited")

    def refusal(self, reason: str) -> CoapResponse:
        max_age = self._retry_after if reason in _RETRY_LATER else None
        return CoapResponse(code_of(reason), reason.encode("ascii"), max_age=max_age)

    async def on_auth(self, request: CoapRequest) -> CoapResponse:
        if request.method != "POST":
            return self.refusal("method_not_allowed")
        try:
            answer = self._auth.on_request(request.payload, self._clock_ms())
        except AuthRefused as exc:
            log.debug("CoAP authentication refused: %s", exc)
            return self.refusal(exc.reason)
        if answer.session is None:
            return CoapResponse((2, 5), answer.payload, content_format=CBOR)
        self.sessions.open(answer.session)
        return CoapResponse((2, 4), answer.payload, content_format=COSE_SIGN1)

    async def on_reading(self, request: CoapRequest) -> CoapResponse:
        if request.method != "POST":
            return self.refusal("method_not_allowed")
        if self.closing or self.in_flight + self._pipeline.backlog >= self._max_in_flight:
            return self.refusal("overloaded")
        now = self._clock_ms()
        try:
            reading = self._checker.check_cose(request.payload, now, None)
        except ReadingRefused as refusal:
            self._pipeline.refused(refusal)
            return self.refusal(refusal.reason)
        if not self.sessions.live(reading.did, now):
            return self.refusal("unauthenticated")
        self.in_flight += 1
        try:
            ack = await self._record(reading)
        finally:
            self.in_flight -= 1
        if not ack.accepted or ack.duplicate:
            return self.refusal("replay" if ack.accepted else ack.reason or "unavailable")
        return CoapResponse(
            (2, 4), cbor2.dumps({"seq": ack.seq, "entry": ack.entry}), content_format=CBOR
        )

    async def _record(self, reading: Reading) -> Ack:
        """The pipeline's answer, once the reading is committed (or refused)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Ack] = loop.create_future()

        def reply(ack: Ack) -> None:
            loop.call_soon_threadsafe(_settle, answer, ack)

        self._pipeline.record(reading, reply)
        return await answer

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until the readings in progress are answered (clean shutdown)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # their responses go out on the next turns of the loop

    async def sweep(self, interval: float = 60.0) -> None:
        """Forget expired sessions now and then."""
        while True:
            await asyncio.sleep(interval)
            self.sessions.sweep(self._clock_ms())


class SignedStatusList:
    """The signed revocation list as bytes, signed again only when the list changed or half
    its validity has passed: every block of one fetch is cut from the same bytes (and an
    anonymous GET costs no signature)."""

    def __init__(
        self,
        sign: Callable[[float], bytes],
        revision: Callable[[], int],
        valid_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sign, self._revision, self._clock = sign, revision, clock
        self._renew_after = valid_seconds / 2
        self._signed: tuple[int, float, bytes] | None = None

    def __call__(self) -> bytes:
        revision, now = self._revision(), self._clock()
        if self._signed is not None:
            seen, signed_at, body = self._signed
            if seen == revision and now - signed_at < self._renew_after:
                return body
        body = self._sign(now)
        self._signed = (revision, now, body)
        return body


def _settle(future: asyncio.Future[Ack], ack: Ack) -> None:
    if not future.done():
        future.set_result(ack)

"""Many simulated devices in one asyncio event loop: the load generator of the benchmarks.

:class:`device.Fleet` gives every device a paho client with its own network thread, which
caps a process at 150 devices (paho's ``select()``) and spends the machine's cycles on
thread switches: a thousand devices ate the cores the gateway needed. Here every device is a
few coroutines over one MQTT connection in one event loop (epoll), so ten thousand fit in
one process and an idle device costs nothing.

The MQTT part is a minimal MQTT 3.1.1 client, an asyncio protocol (:class:`Connection`:
CONNECT/CONNACK, PUBLISH QoS 0 and 1, PUBACK, SUBSCRIBE/SUBACK, PINGREQ/PINGRESP), not paho
driven through its socket callbacks: what a device needs is that small, and without paho's
per-client locks, wake-up socket pair and callback layers a delivery is one parse and one
call. Everything the protocol signs, checks or decrypts is the device simulator's own code
(``device.py``: hello, challenge check, response, grant check and decryption, readings).

A device (:class:`FleetDevice`) authenticates anonymously on the authentication listener,
connects with its account on the accounts listener, and sends readings, timing their acks.
It never gives up: after a failure it waits (:class:`Backoff`: exponential, with jitter, and
at least as long as a ``rate_limited`` refusal asks, when it says) and tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import secrets
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import device as dev
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

KEEPALIVE = 120  # seconds; the broker closes a connection silent for 1.5 times this
#: Refusals of a hello that end an attempt at once (docs/protocol/mqtt.md, "Refusals that
#: are not yours"); any other refusal before our response answers someone else's.
HELLO_REFUSALS = dev.HELLO_REFUSALS
REGISTRY_REFUSALS = dev.REGISTRY_REFUSALS


class MqttError(Exception):
    """The connection failed or was closed; the message says why."""


class MqttRefused(MqttError):
    """The broker answered CONNECT with a non-zero return code."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"the broker refused the connection (CONNACK return code {code})")


# --------------------------------------------------------------------------- MQTT 3.1.1


def _length(n: int) -> bytes:
    """MQTT's variable-length "remaining length"."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _text(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _length(len(body)) + body


def _fixed_header(buffer: bytearray, start: int) -> tuple[int, int] | None:
    """Where the body of the packet at ``start`` begins and its size (the "remaining
    length", 1 to 4 bytes after the packet's first byte); None until all of it is here."""
    size = 0
    for i in range(4):
        at = start + 1 + i
        if at >= len(buffer):
            return None
        digit = buffer[at]
        size |= (digit & 0x7F) << (7 * i)
        if not digit & 0x80:
            return at + 1, size
    raise MqttError("a remaining length longer than 4 bytes")


class Connection(asyncio.Protocol):
    """One MQTT 3.1.1 connection (clean session), an asyncio protocol.

    ``on_message(topic, payload)`` is called for every PUBLISH; a QoS 1 one is acknowledged
    after it returns. :meth:`publish` returns a future that the PUBACK resolves (QoS 1).
    :attr:`closed` is set when the connection ends, for whatever reason (:attr:`why`), and
    ``on_close(connection)`` is called then. Packets are parsed in :meth:`data_received` as bytes
    arrive, and the keep-alive is a timer: a connection costs no task of its own (with
    asyncio's streams and a reading task per connection, the load process of a 10,000-device
    storm took two thirds of a core).
    """

    def __init__(
        self,
        on_message: Callable[[str, bytes], None] | None,
        on_close: Callable[[Connection], None] | None = None,
    ) -> None:
        self.on_message = on_message
        self.on_close = on_close
        self.closed = asyncio.Event()
        self.why = ""
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._connack: asyncio.Future[int] = self._loop.create_future()
        self._gone: asyncio.Future[None] = self._loop.create_future()  # the socket is closed
        self._writable: asyncio.Future[None] | None = None  # set while the kernel is full
        self._ping: asyncio.TimerHandle | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        client_id: str,
        username: str | None = None,
        password: bytes | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
        on_close: Callable[[Connection], None] | None = None,
        keepalive: int = KEEPALIVE,
        timeout: float = 10.0,
    ) -> Connection:
        """Connect and wait for the CONNACK; :class:`MqttRefused` if the broker says no."""
        link = cls(on_message, on_close)
        loop = link._loop
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: link, host, port)
        except (OSError, TimeoutError) as exc:
            link._end(f"cannot connect ({exc or 'timed out'})")
            raise MqttError(f"cannot connect to {host}:{port}: {exc or 'timed out'}") from None
        flags = 0x02  # clean session
        payload = _text(client_id.encode())
        if username is not None:
            flags |= 0x80
            payload += _text(username.encode())
            if password is not None:
                flags |= 0x40
                payload += _text(password)
        header = _text(b"MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
        link._send(_packet(0x10, header + payload))
        link._ping = loop.call_later(keepalive / 2, link._keep_alive, keepalive)
        try:
            async with asyncio.timeout(timeout):
                code = await asyncio.shield(link._connack)
        except (TimeoutError, MqttError) as exc:
            await link.close()
            raise MqttError(f"no CONNACK from {host}:{port}: {exc or 'timed out'}") from None
        if code != 0:
            await link.close()
            raise MqttRefused(code)
        return link

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a TCP connection's
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        try:
            while (header := _fixed_header(buffer, start)) is not None:
                at, size = header
                if len(buffer) - at < size:
                    break  # the rest of the packet is still on its way
                first, body, start = buffer[start], bytes(buffer[at : at + size]), at + size
                self._handle(first, body)
        except Exception as exc:  # a protocol error: end this connection, not the fleet
            self._end(f"protocol error: {exc}")
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(f"closed by the broker ({type(exc).__name__})" if exc else "closed")
        if not self._gone.done():
            self._gone.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # -- MQTT --------------------------------------------------------------------

    def _packet_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._waiting:
                return self._next_id
        raise MqttError("65,535 messages await their acknowledgement")

    def _send(self, data: bytes) -> None:
        if self.closed.is_set() or self._transport is None:
            raise MqttError(f"the connection is closed ({self.why})")
        self._transport.write(data)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> asyncio.Future[Any]:
        """Send a PUBLISH; the future is done when the broker has it (PUBACK for QoS 1)."""
        future: asyncio.Future[Any] = self._loop.create_future()
        if qos == 0:
            self._send(_packet(0x30, _text(topic.encode()) + payload))
            future.set_result(None)
            return future
        mid = self._packet_id()
        self._waiting[mid] = future
        self._send(_packet(0x32, _text(topic.encode()) + struct.pack("!H", mid) + payload))
        return future

    async def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> int:
        """Subscribe and return the QoS granted; :class:`MqttError` if refused (0x80)."""
        mid = self._packet_id()
        future: asyncio.Future[Any] = self._loop.create_future()
        self._waiting[mid] = future
        self._send(_packet(0x82, struct.pack("!H", mid) + _text(topic.encode()) + bytes([qos])))
        async with asyncio.timeout(timeout):
            granted = int(await future)
        if granted == 0x80:
            raise MqttError(f"the broker refused the subscription to {topic}")
        return granted

    async def drain(self) -> None:
        """Wait until the socket's send buffer has room (back-pressure for a fast sender)."""
        if self._writable is not None:
            await asyncio.shield(self._writable)

    def _handle(self, first: int, body: bytes) -> None:
        kind = first & 0xF0
        if kind == 0x30:  # PUBLISH
            qos = (first >> 1) & 0x03
            (length,) = struct.unpack_from("!H", body)
            topic = body[2 : 2 + length].decode()
            rest = 2 + length
            mid = 0
            if qos:
                (mid,) = struct.unpack_from("!H", body, rest)
                rest += 2
            if self.on_message is not None:
                self.on_message(topic, body[rest:])
            if qos == 1:
                self._send(b"\x40\x02" + struct.pack("!H", mid))
        elif kind in (0x40, 0x90):  # PUBACK, SUBACK
            (mid,) = struct.unpack_from("!H", body)
            future = self._waiting.pop(mid, None)
            if future is not None and not future.done():
                future.set_result(body[2] if kind == 0x90 else None)
        elif kind == 0x20 and not self._connack.done():  # CONNACK
            self._connack.set_result(body[1])
        # PINGRESP (0xD0) needs nothing: any traffic shows the broker is there.

    def _keep_alive(self, keepalive: int) -> None:
        if self.closed.is_set() or self._transport is None:
            return
        self._transport.write(b"\xc0\x00")
        self._ping = self._loop.call_later(keepalive / 2, self._keep_alive, keepalive)

    def _end(self, why: str) -> None:
        if self.closed.is_set():
            return
        self.why = why
        self.closed.set()
        error = MqttError(f"the connection ended: {why}")
        if not self._connack.done():
            self._connack.set_exception(error)
            self._connack.exception()  # retrieved: nobody else may wait for it
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
                future.exception()
        self._waiting.clear()
        if self._ping is not None:
            self._ping.cancel()
        self.resume_writing()
        if self._transport is not None:
            self._transport.close()
        elif not self._gone.done():
            self._gone.set_result(None)  # never connected: nothing to wait for
        if self.on_close is not None:
            self.on_close(self)

    async def close(self) -> None:
        """DISCONNECT and close the socket."""
        if not self.closed.is_set():
            with contextlib.suppress(OSError, MqttError, RuntimeError):
                self._send(b"\xe0\x00")
            self._end("closed by us")
        with contextlib.suppress(OSError, MqttError, RuntimeError):
            await self._gone


# --------------------------------------------------------------------------- backoff


@dataclass
class Backoff:
    """How long to wait before the next attempt: exponential, with jitter, never forever.

    The k-th consecutive failure waits a random time between half of and the whole of
    ``min(cap, base · 2^k)`` ("equal jitter"): devices that failed together do not come back
    together. A refusal that says when to come back (``retry_after``, ms) is obeyed, plus up
    to a tenth more (the gateway gives each refused device its own place in a line already).
    :meth:`reset` after a success.
    """

    base: float = 1.0
    cap: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next(self, retry_after: float | None = None) -> float:
        ceiling = min(self.cap, self.base * 2**self.failures)
        self.failures += 1
        if retry_after is not None:
            return retry_after * (1 + self.rng.random() / 10)
        return ceiling / 2 + self.rng.random() * ceiling / 2

    def reset(self) -> None:
        self.failures = 0


#: When a refusal says to come back (``retry_after``, ms: docs/protocol/mqtt.md): the
#: device simulator's reading of it, so both simulators obey the gateway alike.
retry_after_of = dev.retry_after_of


# --------------------------------------------------------------------------- device


class Refused(dev.AuthRefused):
    """The gateway refused; :attr:`retry_after` is when it said to come back (or None)."""

    def __init__(self, reason: str, did: str, retry_after: float | None) -> None:
        super().__init__(reason, did)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Broker:
    """Where the fleet's devices go: the authentication listener and the accounts listener."""

    host: str
    port: int
    accounts_port: int
    prefix: str = "didgw"


class FleetDevice:
    """One simulated device on the fleet's event loop (see the module docstring)."""

    def __init__(
        self,
        identity: dev.Identity,
        broker: Broker,
        *,
        gateway_did: str | None = None,
        auth_timeout: float = 30.0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.did = identity.did
        self.broker = broker
        self.gateway_did = gateway_did
        self.auth_timeout = auth_timeout
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.grant: dev.Grant | None = None
        self.link: Connection | None = None
        self.seq = 0
        self.sent_at: dict[int, float] = {}  # seq -> time.monotonic() when sent
        self.tokens: dict[int, bytes] = {}  # seq -> the reading, until acknowledged
        self.acked: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.latencies: list[float] = []  # publish -> ack, seconds
        self.latency_sent: list[float] = []  # when each of those was sent (time.monotonic())
        self.statuses: Counter[str] = Counter()  # acks by status (refused: by reason)
        self.refusals: Counter[str] = Counter()  # authentication refusals by reason
        self.failures: Counter[str] = Counter()  # failed attempts by kind
        self.waits: list[float] = []  # the backoff waits taken, in order
        self.attempts = 0  # authentications started
        self.authenticated_at: float | None = None  # time.monotonic() of the first grant
        self.lost_at: float | None = None  # time.time() when the account connection ended

    # ---------------------------------------------------------------- authentication

    async def authenticate(self) -> dev.Grant:
        """One DID challenge-response on an anonymous connection; keeps the grant.

        :class:`Refused` for a refusal, :class:`device.AuthError` or :class:`MqttError`
        when there is no (good) answer in time.
        """
        self.attempts += 1
        reply = secrets.token_urlsafe(24)
        inbox: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: the connection ended
        request = f"{self.broker.prefix}/auth/req"
        link = await Connection.open(
            self.broker.host,
            self.broker.port,
            client_id=f"{dev.CLIENT_ID_PREFIX}auth-{secrets.token_hex(16)}",
            on_message=lambda _topic, payload: inbox.put_nowait(payload),
            on_close=lambda _link: inbox.put_nowait(None),
            timeout=self.auth_timeout,
        )
        try:
            async with asyncio.timeout(self.auth_timeout):
                await link.subscribe(f"{self.broker.prefix}/auth/res/{reply}")
                link.publish(request, dev.make_hello(self.did, reply))
                challenge = await self._expect(inbox, link, "challenge")
                gateway, nonce = dev.check_challenge(
                    challenge, did=self.did, gateway_did=self.gateway_did
                )
                epk = X25519PrivateKey.generate()
                link.publish(
                    request,
                    dev.make_auth_response(
                        self.identity,
                        nonce=challenge["nonce"],
                        gateway=gateway,
                        epk=dev._raw_public(epk),
                        reply=reply,
                        ts_ms=int(self.clock() * 1000),
                    ).encode(),
                )
                token = await self._expect(inbox, link, "grant")
        except TimeoutError:
            raise dev.AuthError("no answer from the gateway in time") from None
        finally:
            await link.close()
        grant = dev.open_grant(
            token,
            gateway_did=gateway,
            did=self.did,
            nonce=nonce,
            device_epk=epk,
            prefix=self.broker.prefix,
        )
        self.grant = grant
        if self.authenticated_at is None:
            self.authenticated_at = time.monotonic()
        return grant

    async def _expect(self, inbox: asyncio.Queue[bytes | None], link: Connection, what: str) -> Any:
        """The next answer that is ours (the rules of docs/protocol/mqtt.md)."""
        refusal: dict[str, Any] | None = None
        while True:
            try:
                async with asyncio.timeout(dev.REFUSAL_GRACE if refusal is not None else None):
                    payload = await inbox.get()
            except TimeoutError:  # only the grace after a refusal has a time-out
                raise self._refused(refusal or {}) from None
            if payload is None:
                if refusal is not None:
                    raise self._refused(refusal)
                raise dev.AuthError(f"the broker closed the connection ({link.why})")
            message = dev._json_object(payload)
            kind = message.get("type") if message is not None else None
            if kind == "refused" and message is not None:
                reason = str(message.get("reason"))
                if reason in (REGISTRY_REFUSALS if what == "grant" else HELLO_REFUSALS):
                    raise self._refused(message)
                if what == "grant":
                    refusal = message  # final only if no grant follows within the grace
                continue
            if what == "challenge" and kind == "challenge":
                return message
            if what == "grant" and message is None and payload.count(b".") == 2:
                return payload
            if kind == "challenge":
                continue  # someone else's hello with our reply token
            raise dev.AuthError(f"expected a {what}, got {payload[:80]!r}")

    def _refused(self, message: dict[str, Any]) -> Refused:
        reason = str(message.get("reason"))
        self.refusals[reason] += 1
        return Refused(reason, self.did, retry_after_of(message))

    # ---------------------------------------------------------------- account connection

    async def connect(self) -> None:
        """Connect with the grant's account and subscribe to the acks."""
        grant = self.grant
        if grant is None:
            raise dev.DeviceError("not authenticated")
        link = await Connection.open(
            self.broker.host,
            self.broker.accounts_port,
            client_id=f"{dev.CLIENT_ID_PREFIX}dev-{secrets.token_hex(16)}",
            username=grant.username,
            password=grant.password,
            on_message=self._ack,
            on_close=self._lost,
            timeout=self.auth_timeout,
        )
        try:
            await link.subscribe(grant.acks)
        except (MqttError, TimeoutError):
            await link.close()
            raise
        old, self.link = self.link, link
        self.lost_at = None
        if old is not None:
            await old.close()

    def _lost(self, link: Connection) -> None:
        if link is self.link:
            self.lost_at = time.time()

    @property
    def connected(self) -> bool:
        return self.link is not None and not self.link.closed.is_set()

    async def bring_up(self, *, until: float = math.inf) -> bool:
        """Authenticate and connect, retrying with backoff until ``until`` (time.monotonic()).

        True when connected. A device never gives up on its own: only ``until`` ends it.
        """
        while time.monotonic() < until:
            retry_after = None
            try:
                await self.authenticate()
                await self.connect()
                self.backoff.reset()
                return True
            except Refused as exc:
                self.failures[f"refused {exc.reason}"] += 1
                retry_after = exc.retry_after
            except dev.DeviceError as exc:
                self.failures[type(exc).__name__] += 1
            except MqttError as exc:
                self.failures[type(exc).__name__] += 1
            except (OSError, TimeoutError) as exc:
                self.failures[type(exc).__name__] += 1
            wait = self.backoff.next(retry_after)
            self.waits.append(wait)
            await asyncio.sleep(min(wait, max(0.0, until - time.monotonic())))
        return False

    async def renew(self) -> None:
        """Authenticate again while connected (the account gets a new password)."""
        await self.authenticate()

    # ---------------------------------------------------------------- readings

    def send_reading(self, values: dict[str, Any], reading_type: str = "energy") -> int:
        """Sign the next reading and send it; its seq (the ack resolves :meth:`ack_of`).

        Without a connection the reading is kept, unsent, until :meth:`resend`.
        """
        if self.grant is None:
            raise dev.DeviceError("not authenticated")
        self.seq += 1
        seq = self.seq
        token = dev.make_reading(
            self.identity,
            seq=seq,
            ts_ms=int(self.clock() * 1000),
            reading_type=reading_type,
            values=values,
        )
        self.acked[seq] = asyncio.get_running_loop().create_future()
        self.tokens[seq] = token.encode()
        self.sent_at[seq] = time.monotonic()
        link = self.link
        if link is not None and not link.closed.is_set():
            link.publish(self.grant.readings, self.tokens[seq])
        return seq

    def ack_of(self, seq: int) -> asyncio.Future[dict[str, Any]]:
        return self.acked[seq]

    async def send_until_acked(
        self, values: dict[str, Any], *, resend_after: float = 10.0, until: float = math.inf
    ) -> dict[str, Any] | None:
        """Send one reading and wait for its ack, resending it (same seq, after reconnecting
        if need be) when none comes; the ack, or None at ``until``."""
        seq = self.send_reading(values)
        acked = self.acked[seq]
        while time.monotonic() < until:
            try:
                return await asyncio.wait_for(
                    asyncio.shield(acked), min(resend_after, until - time.monotonic())
                )
            except TimeoutError:
                if not self.connected and not await self.bring_up(until=until):
                    return None
                if acked.done():  # the ack came while the device connected again
                    return acked.result()
                self.resend(seq)
        return None

    def resend(self, seq: int) -> None:
        """Send reading ``seq`` again, the same bytes (a lost ack is then acked again, not
        refused as a replay)."""
        if self.link is None or self.grant is None:
            raise dev.DeviceError("not connected")
        self.sent_at[seq] = time.monotonic()
        self.link.publish(self.grant.readings, self.tokens[seq])

    def _ack(self, _topic: str, payload: bytes) -> None:
        now = time.monotonic()
        ack = dev._json_object(payload)
        if ack is None:
            self.statuses["unparsable ack"] += 1
            return
        seq, status = ack.get("seq"), ack.get("status")
        self.statuses[str(status if status == "accepted" else ack.get("reason"))] += 1
        if isinstance(seq, int):
            sent = self.sent_at.pop(seq, None)
            if sent is not None:
                self.latencies.append(now - sent)
                self.latency_sent.append(sent)
            self.tokens.pop(seq, None)
            future = self.acked.pop(seq, None)
            if future is not None and not future.done():
                future.set_result(ack)

    async def close(self) -> None:
        if self.link is not None:
            link, self.link = self.link, None
            await link.close()

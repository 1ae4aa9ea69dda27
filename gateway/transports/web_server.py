"""The front door's HTTP/1.1 server: h11 parses the bytes, this module holds the
connections, bounds what comes in and answers with :mod:`gateway.transports.web`'s routes.

It replaced aiohttp, whose import alone cost ``didgw run`` about 12 MiB of a 60 MB budget
and about 110 ms on this machine, for a server that needs little of it: no client, no
websockets, no compression.

What a stranger on the LAN can send is bounded here, before any handler runs:

* **connections**: :data:`MAX_CONNECTIONS` in all and :data:`MAX_PER_SOURCE` from one
  address; one more is closed at once;
* **a request's head** (request line and headers): :data:`MAX_HEAD_BYTES` and
  :data:`MAX_HEADERS` fields (431), and it must arrive whole within :data:`HEAD_SECONDS`
  of the connection's being ready for it (an idle keep-alive connection is closed after
  the same time);
* **a body**: the route's cap (413, refused unread when ``Content-Length`` says so) and
  :data:`BODY_SECONDS` to arrive; one that a handler did not read closes the connection;
* **an answer**: a reader that takes more than :data:`WRITE_SECONDS` to drain it is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterable
from typing import Any

import h11

from gateway.transports.web import (
    REASONS,
    Handler,
    Headers,
    HTTPBadRequest,
    HTTPException,
    HTTPRequestEntityTooLarge,
    HTTPRequestTimeout,
    Middleware,
    Request,
    Response,
    RouteDef,
    Router,
    StreamResponse,
)

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 512
MAX_PER_SOURCE = 64
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
HEAD_SECONDS = 15.0
BODY_SECONDS = 30.0
WRITE_SECONDS = 30.0
READ_CHUNK = 64 * 1024


class _Closed(Exception):
    """The peer went away, broke the protocol, or was too slow: close the connection."""


class _Exchange:
    """One connection's h11 state, and the reads and writes of the request in hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.body_read: bytes | None = None
        self.head_request: h11.Request | None = None
        self.sent_head = False
        self.keep_alive = True

    async def event(self, deadline: float) -> Any:
        loop = asyncio.get_running_loop()
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError
            data = await asyncio.wait_for(self.reader.read(READ_CHUNK), left)
            self.conn.receive_data(data)

    async def body(self, limit: int) -> bytes:
        head = self.head_request
        declared = dict(head.headers).get(b"content-length", b"") if head else b""
        if declared.isdigit() and int(declared) > limit:  # refused unread
            self.keep_alive = False
            raise HTTPRequestEntityTooLarge(limit, int(declared))
        if self.body_read is not None:
            if len(self.body_read) > limit:
                raise HTTPRequestEntityTooLarge(limit, len(self.body_read))
            return self.body_read
        if self.conn.they_are_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        deadline = asyncio.get_running_loop().time() + BODY_SECONDS
        parts: list[bytes] = []
        size = 0
        try:
            while True:
                event = await self.event(deadline)
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > limit:
                        self.keep_alive = False
                        raise HTTPRequestEntityTooLarge(limit, size)
                    parts.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:  # ConnectionClosed
                    raise _Closed
        except TimeoutError:
            self.keep_alive = False
            raise HTTPRequestTimeout(text="the request's body came too slowly\n") from None
        except h11.RemoteProtocolError as exc:
            self.keep_alive = False
            raise HTTPBadRequest(text=f"malformed body: {exc}\n") from None
        self.body_read = b"".join(parts)
        return self.body_read

    async def start(self, response: StreamResponse, *, length: int | None) -> None:
        fields = response._fields(length)
        if self.conn.their_state is h11.SEND_BODY:  # a body of 0 bytes is already whole
            with contextlib.suppress(h11.RemoteProtocolError):
                self.conn.next_event()
        if self.conn.their_state is not h11.DONE:
            self.keep_alive = False  # an unread body: never parse it as the next request
        if not self.keep_alive:
            fields.append(("Connection", "close"))
        await self._send(
            h11.Response(
                status_code=response.status,
                headers=fields,
                reason=REASONS.get(response.status, "").encode(),
            )
        )
        self.sent_head = True

    async def reply(self, response: StreamResponse) -> None:
        """Send ``response`` whole, or end it if a handler already streamed its start."""
        if isinstance(response, Response) or not self.sent_head:
            body = response.body if isinstance(response, Response) else b""
            bodiless = response.status in (204, 304)
            await self.start(response, length=None if bodiless else len(body))
            if not bodiless:
                await self.send_data(body)
        await self._send(h11.EndOfMessage())

    async def send_data(self, data: bytes) -> None:
        if data and not self._head_only:
            await self._send(h11.Data(data=data))

    @property
    def _head_only(self) -> bool:
        return self.head_request is not None and self.head_request.method == b"HEAD"

    async def _send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            if self.writer.is_closing():
                raise ConnectionResetError("the peer closed the connection")
            self.writer.write(data)
            try:
                await asyncio.wait_for(self.writer.drain(), WRITE_SECONDS)
            except TimeoutError:
                raise ConnectionResetError("the peer did not read the answer") from None


class Server:
    """Routes, middlewares, and the listening socket."""

    def __init__(self, *, client_max_size: int, middlewares: Iterable[Middleware]) -> None:
        self.client_max_size = client_max_size
        self.middlewares = list(middlewares)
        self.router = Router()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._per_source: dict[str, int] = {}

    def add_routes(self, routes: Iterable[RouteDef]) -> None:
        for route in routes:
            self.router.add(route)

    async def start(
        self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._server = await asyncio.start_server(
            self._connection,
            host,
            port,
            ssl=ssl_context,
            backlog=512,
            ssl_handshake_timeout=HEAD_SECONDS if ssl_context else None,
            limit=READ_CHUNK,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else "?"
        task = asyncio.current_task()
        if (
            len(self._tasks) >= MAX_CONNECTIONS
            or self._per_source.get(source, 0) >= MAX_PER_SOURCE
            or task is None
        ):
            writer.close()
            return
        self._tasks.add(task)
        self._per_source[source] = self._per_source.get(source, 0) + 1
        try:
            await self._exchanges(reader, writer, source)
        except (_Closed, ConnectionError, TimeoutError, ssl.SSLError, h11.ProtocolError):
            pass  # the peer went away, was too slow, or broke the protocol mid-answer
        finally:
            self._tasks.discard(task)
            left = self._per_source.pop(source, 1) - 1
            if left:
                self._per_source[source] = left
            writer.close()

    async def _exchanges(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str
    ) -> None:
        exchange = _Exchange(reader, writer)
        loop = asyncio.get_running_loop()
        while True:
            try:
                head = await exchange.event(loop.time() + HEAD_SECONDS)
            except h11.RemoteProtocolError as exc:
                await self._refuse_head(exchange, exc)
                return
            if not isinstance(head, h11.Request):
                return  # closed, or timed out waiting (raised)
            exchange.head_request = head
            request = Request(
                exchange,
                method=head.method.decode("ascii"),
                target=head.target.decode("ascii", "replace"),
                headers=Headers(
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers
                ),
                remote=source,
                client_max_size=self.client_max_size,
            )
            names = {name for name, _ in head.headers}
            if _head_size(head) > MAX_HEAD_BYTES or len(head.headers) > MAX_HEADERS:
                exchange.keep_alive = False  # h11 bounds a head only while it is incomplete
                response: StreamResponse = HTTPException.of(431)
            elif b"content-length" in names and b"transfer-encoding" in names:
                exchange.keep_alive = False  # two framings: RFC 9112 lets a server refuse
                response = HTTPException.of(400)
            else:
                response = await self._answer(request)
            await exchange.reply(response)
            if not exchange.keep_alive or exchange.conn.our_state is not h11.DONE:
                return
            try:
                exchange.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
            exchange.body_read, exchange.head_request, exchange.sent_head = None, None, False

    async def _answer(self, request: Request) -> StreamResponse:
        handler = self.router.resolve(request)
        for mw in reversed(self.middlewares):
            handler = _bind(mw, handler)
        try:
            return await handler(request)
        except HTTPException as exc:
            return exc
        except (_Closed, ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("front door: %s %s failed", request.method, request.path)
            if request._exchange.sent_head:
                raise _Closed from None
            return Response(status=500, text="internal error\n")

    async def _refuse_head(self, exchange: _Exchange, exc: h11.RemoteProtocolError) -> None:
        """A malformed or oversized head: say so (h11 still lets a server answer), and close."""
        status = exc.error_status_hint if exc.error_status_hint in (400, 431) else 400
        if exchange.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            exchange.keep_alive = False
            await exchange.reply(HTTPException.of(status))


def _head_size(head: h11.Request) -> int:
    return len(head.target) + sum(len(k) + len(v) + 4 for k, v in head.headers)


def _bind(mw: Middleware, handler: Handler) -> Handler:
    async def bound(request: Request) -> StreamResponse:
        return await mw(request, handler)

    return bound

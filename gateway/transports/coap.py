"""The CoAP edge: an aiocoap server context with the gateway's resources, nothing more.

Resources are plain async handlers (:data:`Handler`) taking a :class:`CoapRequest`
and returning a :class:`CoapResponse`, so the glue (``coap_devices.py``) never sees
aiocoap's types. aiocoap does the protocol: confirmable and non-confirmable
messages, message-ID deduplication (a retransmitted CON within EXCHANGE_LIFETIME
gets the stored response again; the handler is not called twice), piggybacked or
separate responses. What this module adds, for every resource (``/.well-known/core``
included):

* an admission hook called for every datagram (each block of a block-wise transfer
  too), where the glue applies per-peer rate limits;
* block-wise transfers (RFC 7959) done by ``coap_blocks.py`` instead of aiocoap's
  bookkeeping: request bodies reassembled in order, bounded per peer and in total,
  dropped when idle, refused 4.13 with Size1 as soon as Size1 or the blocks go past
  ``max_request_bytes``; GET answers cut into blocks of at most
  :data:`GET_BLOCK_BYTES`, so that no request, authenticated or not, makes the gateway
  send more than about three times what it received (an amplifier for nobody);
* port exclusivity: aiocoap's server socket sets ``SO_REUSEPORT``, so a second
  process on the same port would silently get part of the traffic. Before binding,
  a socket *without* ``SO_REUSEPORT`` is bound to the same address; if the kernel
  refuses it (someone holds the port), the server refuses to start;
* a large kernel receive buffer on the server socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from gateway.errors import DidgwError
from gateway.transports.coap_blocks import Block, PartialUploads, etag, response_block

log = logging.getLogger(__name__)

CBOR = 60  # application/cbor
COSE_SIGN1 = 18  # application/cose; cose-type="cose-sign1"
LINK_FORMAT = 40

#: The largest block of a GET answer: with the smallest request that names a resource
#: (16 bytes), a 32-byte block makes a 46-byte answer, under three times the request.
GET_BLOCK_BYTES = 32


class CoapBindError(DidgwError):
    """The CoAP server cannot listen where the configuration says."""

    code = "cannot_listen"


@dataclass(frozen=True)
class CoapRequest:
    method: str  # "GET", "POST", …
    payload: bytes
    peer: str  # the peer's address (host only): what rate limits are keyed by
    content_format: int | None = None


@dataclass(frozen=True)
class CoapResponse:
    code: tuple[int, int]  # (class, detail): (2, 4) is 2.04 Changed
    payload: bytes = b""
    content_format: int | None = None
    max_age: int | None = None
    size1: int | None = None


Handler = Callable[[CoapRequest], Awaitable[CoapResponse]]
Admit = Callable[[str], CoapResponse | None]
Refuse = Callable[[str], CoapResponse]  # a refusal reason's response (code, Max-Age)
Render = Callable[[Any, bytes], Awaitable[Any]]  # (aiocoap request, its whole body) -> Message


@dataclass(frozen=True)
class Route:
    path: tuple[str, ...]
    handler: Handler
    rt: str
    ct: int | None = None


def _peer_host(remote: Any) -> str:
    try:
        host = remote.sockaddr[0]
    except (AttributeError, IndexError, TypeError):
        return str(getattr(remote, "hostinfo", remote))
    return str(host).removeprefix("::ffff:")


def _message(response: CoapResponse) -> Any:
    from aiocoap import Code, Message

    message = Message(
        code=Code((response.code[0] << 5) | response.code[1]), payload=response.payload
    )
    if response.content_format is not None:
        message.opt.content_format = response.content_format
    if response.max_age is not None:
        message.opt.max_age = response.max_age
    if response.size1 is not None:
        message.opt.size1 = response.size1
    return message


def _block(option: Any) -> Block | None:
    return None if option is None else Block(option.block_number, option.more, option.size_exponent)


def _peer_key(remote: Any) -> Hashable:
    """The peer's address and port: what the blocks of one request come from."""
    try:
        return tuple(remote.sockaddr[:2])
    except (AttributeError, TypeError):
        return str(getattr(remote, "hostinfo", remote))


class _Gate:
    """What every request goes through before and after its resource renders it: the
    admission hook, block-wise reassembly and size limits, GET answers cut into blocks."""

    def __init__(self, admit: Admit, refuse: Refuse, uploads: PartialUploads, clock: Any) -> None:
        self._admit, self._refuse, self.uploads, self._clock = admit, refuse, uploads, clock

    async def answer(self, request: Any, render: Render) -> Any:
        from aiocoap import GET, Message

        peer = _peer_host(request.remote)
        early = self._admit(peer)
        if early is not None:
            return _message(early)
        block1, block2 = _block(request.opt.block1), _block(request.opt.block2)
        body = self._body(request, peer, block1)
        if isinstance(body, Message):
            return body
        if block2 is not None and block2.number > 0 and request.code != GET:
            return self._refusal("incomplete")  # no answer is kept for later blocks
        response = await render(request, body)
        if block1 is not None:
            response.opt.block1 = (block1.number, False, block1.szx)
        if request.code == GET and response.code.is_successful():
            return self._cut(request, response, block2)
        return response

    def _body(self, request: Any, peer: str, block1: Block | None) -> Any:
        """The whole request body; or, while blocks are still to come or when the body is
        refused, the answer to this datagram (an aiocoap Message)."""
        from aiocoap import CONTINUE, Message

        payload = bytes(request.payload)
        if block1 is None:
            if max(request.opt.size1 or 0, len(payload)) > self.uploads.max_bytes:
                return self._refusal("too_large")
            return payload
        key = (_peer_key(request.remote), str(request.code), tuple(request.opt.uri_path))
        fed = self.uploads.feed(
            key, peer, block1, payload, size1=request.opt.size1, now=self._clock()
        )
        if fed.word == "continue":
            return Message(code=CONTINUE, block1=(block1.number, True, block1.szx))
        return fed.body if fed.word == "done" else self._refusal(fed.word)

    def _refusal(self, word: str) -> Any:
        """A request refused for its size or its blocks."""
        refusal = self._refuse(word)
        if word == "too_large":
            refusal = dataclasses.replace(refusal, size1=self.uploads.max_bytes)
        return _message(refusal)

    def _cut(self, request: Any, response: Any, asked: Block | None) -> Any:
        body = bytes(response.payload)
        if asked is None and len(body) <= GET_BLOCK_BYTES:
            return response
        cut = response_block(body, asked, GET_BLOCK_BYTES)
        if cut is None:
            return self._refusal("malformed")
        block, chunk = cut
        response.payload = chunk
        response.opt.block2 = tuple(block)
        response.opt.etag = etag(body)
        if request.opt.size2 is not None:  # asked for (RFC 7959 §4): the whole size
            response.opt.size2 = len(body)
        return response


def _endpoint_class() -> type[Any]:
    from aiocoap import resource

    class Endpoint(resource.Resource):  # type: ignore[misc]
        """A resource whose every request goes through the :class:`_Gate` (so aiocoap's
        block-wise bookkeeping is never used)."""

        def __init__(self, render: Render, gate: _Gate, rt: str | None, ct: Any) -> None:
            super().__init__()
            self._render, self._gate = render, gate
            if rt is not None:
                self.rt = rt
            if ct is not None:
                self.ct = ct

        async def render_to_pipe(self, pipe: Any) -> None:
            pipe.add_response(await self._gate.answer(pipe.request, self._render), is_last=True)

    return Endpoint


def _route_renderer(route: Route) -> Render:
    async def render(request: Any, payload: bytes) -> Any:
        response = await route.handler(
            CoapRequest(
                str(request.code), payload, _peer_host(request.remote), request.opt.content_format
            )
        )
        message = _message(response)
        message.opt.no_response = request.opt.no_response  # RFC 7967, as aiocoap does
        return message

    return render


def _site_class() -> type[Any]:
    from aiocoap import resource

    class FastSite(resource.Site):  # type: ignore[misc]
        """aiocoap's Site, with our few fixed paths found by a dictionary look-up instead of
        its general dispatch (which copies every request to strip its path)."""

        def __init__(self) -> None:
            super().__init__()
            self._exact: dict[tuple[str, ...], Any] = {}

        def add_endpoint(self, path: tuple[str, ...], endpoint: Any) -> None:
            self.add_resource(list(path), endpoint)
            self._exact[path] = endpoint

        async def render_to_pipe(self, pipe: Any) -> None:
            options = pipe.request.opt
            if getattr(options, "uri_path_abbrev", None) is None:
                endpoint = self._exact.get(tuple(options.uri_path))
                if endpoint is not None:
                    await endpoint.render_to_pipe(pipe)
                    return
            await super().render_to_pipe(pipe)

    return FastSite


class CoapServer:
    """An aiocoap server context serving ``routes`` (and ``/.well-known/core``)."""

    def __init__(
        self,
        host: str,
        port: int,
        routes: list[Route],
        *,
        admit: Admit,
        refuse: Refuse,
        max_request_bytes: int,
        max_partial_uploads: int = 64,
        partial_uploads_per_peer: int = 4,
        partial_upload_seconds: float = 60.0,
        receive_buffer_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.host, self.port = host, port
        self._routes = routes
        self._uploads = PartialUploads(
            max_request_bytes,
            per_peer=partial_uploads_per_peer,
            total=max_partial_uploads,
            idle_seconds=partial_upload_seconds,
        )
        self._gate = _Gate(admit, refuse, self._uploads, time.monotonic)
        self._rcvbuf = receive_buffer_bytes
        self._context: Any = None
        self._expiry: asyncio.Task[None] | None = None
        self.receive_buffer = 0  # what the kernel granted

    @property
    def partial_uploads(self) -> int:
        """Block-wise request bodies being received now (a gauge)."""
        return len(self._uploads)

    async def start(self) -> None:
        import aiocoap
        from aiocoap import resource

        check_port_free(self.host, self.port)
        endpoint = _endpoint_class()
        site = _site_class()()
        links = resource.WKCResource(site.get_resources_as_linkheader, impl_info=None)

        async def render_links(request: Any, payload: bytes) -> Any:
            return await links.render(request)

        site.add_endpoint(
            (".well-known", "core"), endpoint(render_links, self._gate, None, links.ct)
        )
        for route in self._routes:
            site.add_endpoint(
                route.path, endpoint(_route_renderer(route), self._gate, route.rt, route.ct)
            )
        try:
            self._context = await aiocoap.Context.create_server_context(
                site, bind=(self.host, self.port), transports=["udp6"]
            )
        except OSError as exc:
            raise CoapBindError(f"cannot listen on {self.host} port {self.port}: {exc}") from None
        sock = self._socket()
        if sock is not None:
            self.receive_buffer = set_receive_buffer(sock, self._rcvbuf)
        self._expiry = asyncio.ensure_future(self._expire())

    async def _expire(self) -> None:
        """Drop idle partial uploads even when no request comes to do it."""
        interval = min(5.0, self._uploads.idle_seconds / 4)
        while True:
            await asyncio.sleep(interval)
            self._uploads.expire(time.monotonic())

    def _socket(self) -> socket.socket | None:
        """The server's UDP socket, found through aiocoap's layers (None if they changed)."""
        for interface in getattr(self._context, "request_interfaces", []):
            manager = getattr(interface, "token_interface", None)
            message_interface = getattr(manager, "message_interface", None)
            transport = getattr(message_interface, "transport", None)
            if transport is not None:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    return sock  # type: ignore[no-any-return]
        return None

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if self._context is not None:
            await self._context.shutdown()
            self._context = None


def _sockaddr(host: str, port: int) -> tuple[Any, ...]:
    try:
        infos = socket.getaddrinfo(
            host, port, socket.AF_INET6, socket.SOCK_DGRAM, 0, socket.AI_V4MAPPED
        )
    except socket.gaierror as exc:
        raise CoapBindError(f"cannot listen on {host}: {exc}") from None
    return infos[0][4]


def check_port_free(host: str, port: int) -> None:
    """Refuse to start when another socket holds ``host``:``port`` (see the module docstring)."""
    probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind(_sockaddr(host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CoapBindError(
                f"UDP port {port} on {host} is already in use (another gateway?); "
                "refusing to share it"
            ) from None
        raise CoapBindError(f"cannot listen on {host} port {port}: {exc.strerror}") from None
    finally:
        probe.close()


def set_receive_buffer(sock: Any, size: int) -> int:
    """Ask for ``size`` bytes of receive buffer (past rmem_max when allowed); return the grant."""
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    if force is not None:
        with contextlib.suppress(OSError):  # needs CAP_NET_ADMIN
            sock.setsockopt(socket.SOL_SOCKET, force, size)
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < size:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    granted: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if granted < size:  # Linux reports twice what it was asked, capped at twice rmem_max
        log.warning(
            "CoAP receive buffer is %d bytes, not %d: raise net.core.rmem_max", granted, size
        )
    return granted

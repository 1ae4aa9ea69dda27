"""The CoAP edge: an aiocoap server context with the gateway's resources, nothing more.

Resources are plain async handlers (:data:`Handler`) taking a :class:`CoapRequest`
and returning a :class:`CoapResponse`, so the glue (``coap_devices.py``) never sees
aiocoap's types. aiocoap does the protocol: confirmable and non-confirmable
messages, message-ID deduplication (a retransmitted CON within EXCHANGE_LIFETIME
gets the stored response again; the handler is not called twice), piggybacked or
separate responses, and block-wise reassembly (RFC 7959). What this module adds:

* a size limit applied *while* blocks arrive (aiocoap's reassembly has none): a
  request whose Size1 or blocks go past ``max_request_bytes`` is answered 4.13 with
  Size1 at once, before it is kept in memory;
* an admission hook called once per request (on the first block only), where the
  glue applies per-peer rate limits;
* port exclusivity: aiocoap's server socket sets ``SO_REUSEPORT``, so a second
  process on the same port would silently get part of the traffic. Before binding,
  a socket *without* ``SO_REUSEPORT`` is bound to the same address; if the kernel
  refuses it (someone holds the port), the server refuses to start;
* a large kernel receive buffer on the server socket.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.errors import DidgwError

log = logging.getLogger(__name__)

CBOR = 60  # application/cbor
COSE_SIGN1 = 18  # application/cose; cose-type="cose-sign1"
LINK_FORMAT = 40


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


def _endpoint_class() -> type[Any]:
    from aiocoap import resource

    class Endpoint(resource.Resource):  # type: ignore[misc]
        def __init__(self, route: Route, admit: Admit, max_bytes: int) -> None:
            super().__init__()
            self._route, self._admit, self._max = route, admit, max_bytes
            self.rt = route.rt
            if route.ct is not None:
                self.ct = route.ct

        async def render_to_pipe(self, pipe: Any) -> None:
            request = pipe.request
            block1 = request.opt.block1
            early: CoapResponse | None = None
            if block1 is None or block1.block_number == 0:
                early = self._admit(_peer_host(request.remote))
            if early is None:
                declared = request.opt.size1 or 0
                received = len(request.payload)
                if block1 is not None:
                    received += block1.block_number * block1.size
                if max(declared, received) > self._max:
                    early = CoapResponse((4, 13), b"too_large", size1=self._max)
            if early is not None:
                pipe.add_response(_message(early), is_last=True)
            elif block1 is None and request.opt.block2 is None:
                # One datagram each way (every answer of ours fits): no block-wise
                # bookkeeping, which costs aiocoap a cache key per request.
                pipe.add_response(await self.render(request), is_last=True)
            else:
                await super().render_to_pipe(pipe)

        async def render(self, request: Any) -> Any:
            method = str(request.code)
            response = await self._route.handler(
                CoapRequest(
                    method,
                    bytes(request.payload),
                    _peer_host(request.remote),
                    request.opt.content_format,
                )
            )
            message = _message(response)
            message.opt.no_response = request.opt.no_response  # RFC 7967, as aiocoap does
            return message

    return Endpoint


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
        max_request_bytes: int,
        receive_buffer_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.host, self.port = host, port
        self._routes = routes
        self._admit = admit
        self._max = max_request_bytes
        self._rcvbuf = receive_buffer_bytes
        self._context: Any = None
        self.receive_buffer = 0  # what the kernel granted

    async def start(self) -> None:
        import aiocoap
        from aiocoap import resource

        check_port_free(self.host, self.port)
        endpoint = _endpoint_class()
        site = _site_class()()
        site.add_resource(
            [".well-known", "core"],
            resource.WKCResource(site.get_resources_as_linkheader, impl_info=None),
        )
        for route in self._routes:
            site.add_endpoint(route.path, endpoint(route, self._admit, self._max))
        try:
            self._context = await aiocoap.Context.create_server_context(
                site, bind=(self.host, self.port), transports=["udp6"]
            )
        except OSError as exc:
            raise CoapBindError(f"cannot listen on {self.host} port {self.port}: {exc}") from None
        sock = self._socket()
        if sock is not None:
            self.receive_buffer = set_receive_buffer(sock, self._rcvbuf)

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

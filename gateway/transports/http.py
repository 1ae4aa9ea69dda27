"""HTTP(S) GET for DID resolution and status lists (did:web documents, universal resolver
answers, other issuers' revocation lists).

Standard library only (``urllib``): one GET with a deadline and a size cap is all
resolution needs. It maps failures onto the resolver's two outcomes: the source
said no (:class:`NotFound`) or could not be asked (:class:`Unreachable`).

The deadline is for the whole fetch. urllib's ``timeout`` applies to each socket
operation, so a server that sends its answer a byte at a time, each within the
timeout, would hold the caller for as long as it likes. So each fetch runs on a
thread of its own and the caller waits for it at most ``timeout`` seconds; past that
the connection is shut down (which ends the thread at once, unless it is still in the
system's name lookup, which ends by its own timeouts) and the caller gets
:class:`Unreachable`.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, TypeVar

from gateway.errors import ResolutionError
from gateway.identity.did_web import LOCAL_HOSTS
from gateway.identity.resolver import Fetch, NotFound, Unreachable

S = TypeVar("S", bound=socket.socket)

ACCEPT = (
    "application/did+json, application/did+ld+json, application/ld+json;"
    'profile="https://w3id.org/did-resolution";q=0.9, application/json;q=0.8'
)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are refused: a did:web document must be at its own URL."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class _Attempt:
    """One fetch on its own thread; :meth:`abandon` shuts its connection from another."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._abandoned = False
        self.done = threading.Event()
        self.body: bytes | None = None
        self.error: BaseException | None = None

    def track(self, sock: S) -> S:
        with self._lock:
            if self._abandoned:
                sock.close()
                raise TimeoutError("the fetch was abandoned at its deadline")
            self._sockets.append(sock)
        return sock

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            sockets = list(self._sockets)
        for sock in sockets:  # socket.socket's shutdown even for TLS: SSLSocket.shutdown
            with contextlib.suppress(OSError):  # would drop the TLS state under the reader
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _TrackedHttp(http.client.HTTPConnection):
    """A connection whose socket its :class:`_Attempt` can shut down from the start."""

    def __init__(self, *args: Any, attempt: _Attempt, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._attempt = attempt

        def create(*a: Any, **k: Any) -> socket.socket:
            return attempt.track(socket.create_connection(*a, **k))

        self._create_connection = create


class _TrackedHttps(_TrackedHttp, http.client.HTTPSConnection):
    """:class:`_TrackedHttp` with TLS: the TLS socket is tracked before its handshake."""

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)  # TCP (and a proxy's tunnel)
        hostname = self._tunnel_host or self.host  # type: ignore[attr-defined]
        tls = self._context.wrap_socket(  # type: ignore[attr-defined]
            self.sock, server_hostname=hostname, do_handshake_on_connect=False
        )
        self.sock = self._attempt.track(tls)
        tls.do_handshake()


class _HttpsHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext, attempt: _Attempt) -> None:
        super().__init__(context=context)
        self._attempt = attempt
        self._tls = context

    def https_open(self, req: urllib.request.Request) -> Any:
        connection = functools.partial(_TrackedHttps, attempt=self._attempt)
        return self.do_open(connection, req, context=self._tls)


class _HttpHandler(urllib.request.HTTPHandler):
    def __init__(self, attempt: _Attempt) -> None:
        super().__init__()
        self._attempt = attempt

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(functools.partial(_TrackedHttp, attempt=self._attempt), req)


_contexts: dict[str, ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """The verifying TLS context for ``ca_file`` (and the system's trust store), made on
    the first HTTPS fetch and shared by every fetcher of the process.

    A context holds the whole trust store, parsed: about 1.4 MiB and 40-90 ms on a small
    machine. The resolver, the status lists and each part of ``didgw run`` that resolves
    DIDs have a fetcher, and did:key devices never need one, so none is made until a
    did:web document or a status list is fetched over HTTPS. A ``ca_file`` that cannot be
    loaded then refuses the fetch (fails closed) and says why."""
    with _contexts_lock:
        context = _contexts.get(ca_file)
        if context is None:
            try:
                context = ssl.create_default_context(cafile=ca_file or None)
            except (OSError, ssl.SSLError) as exc:
                where = f"[resolver] ca_file {ca_file}" if ca_file else "the system's trust store"
                raise ResolutionError(f"{where}: cannot load it: {exc}") from None
            _contexts[ca_file] = context
        return context


def make_fetch(*, timeout: float, max_bytes: int, ca_file: str = "") -> Fetch:
    """A :data:`Fetch` that does HTTPS (HTTP only to a loopback host) with limits:
    ``timeout`` seconds for the whole of it, at most ``max_bytes`` of body."""

    def fetch(url: str) -> bytes:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" and not (parts.scheme == "http" and _host(parts) in LOCAL_HOSTS):
            raise ResolutionError(f"refusing {url}: only https (or http to loopback) is allowed")
        context = tls_context(ca_file) if parts.scheme == "https" else None
        attempt = _Attempt()
        worker = threading.Thread(
            target=_run, args=(attempt, url, context, timeout, max_bytes), daemon=True
        )
        worker.name = "didgw-fetch"
        worker.start()
        if not attempt.done.wait(timeout):
            attempt.abandon()
            raise Unreachable(f"{url}: no complete answer within {timeout:g} s")
        if attempt.error is not None:
            error, attempt.error = attempt.error, None
            raise error
        return attempt.body or b""

    return fetch


def _run(
    attempt: _Attempt, url: str, context: ssl.SSLContext | None, timeout: float, max_bytes: int
) -> None:
    """The fetch itself, on the attempt's thread: its body or its error, then ``done``."""
    try:
        attempt.body = _get(attempt, url, context, timeout, max_bytes)
    except Exception as exc:  # handed to the caller, who raises it
        attempt.error = exc
    finally:
        attempt.done.set()


def _get(
    attempt: _Attempt, url: str, context: ssl.SSLContext | None, timeout: float, max_bytes: int
) -> bytes:
    handlers: list[urllib.request.BaseHandler] = [_HttpHandler(attempt), _NoRedirect()]
    if context is not None:
        handlers.insert(0, _HttpsHandler(context, attempt))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers={"Accept": ACCEPT})  # noqa: S310
    try:
        with opener.open(request, timeout=timeout) as response:
            body: bytes = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        exc.close()  # the error holds the response: release the connection now
        if exc.code in (404, 410):
            raise NotFound(f"{url} answered {exc.code} {exc.reason}") from None
        if exc.code >= 500 or exc.code == 429:
            raise Unreachable(f"{url} answered {exc.code} {exc.reason}") from None
        raise ResolutionError(f"{url} answered {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        # A certificate that does not verify is a refusal, not an outage: serving
        # a cached copy would hide an impersonation attempt.
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            reason = exc.reason.verify_message
            raise ResolutionError(f"{url}: TLS certificate not trusted: {reason}") from None
        raise Unreachable(f"{url} is unreachable: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, cut-off answers
        raise Unreachable(f"{url} is unreachable: {exc}") from None
    if len(body) > max_bytes:
        raise ResolutionError(f"{url}: document larger than {max_bytes} bytes")
    return body


def _host(parts: urllib.parse.SplitResult) -> str:
    host = parts.hostname or ""
    return f"[{host}]" if ":" in host else host

"""The HTTP edge: one HTTP server inside ``didgw run`` (:mod:`gateway.transports.web_server`), and
what every request passes.

Every request, in this order (the middlewares):

1. **Security headers** on every answer, errors included: a CSP with no inline script
   (``script-src 'self'``), ``frame-ancestors 'none'``, ``Referrer-Policy: no-referrer``,
   ``nosniff``, HSTS over HTTPS, and ``Cache-Control: no-store`` (the static files:
   ``no-cache`` with an ETag).
2. **Who is asking**: the session cookie (a :class:`~gateway.auth.web_sessions.WebSession`)
   or an ``Authorization: Bearer`` API token (``token_auth``, set by the API module),
   looked up on the desk thread. The answer is ``request["principal"]`` or None.
3. **A rate limit per source address** on everything asked without a valid session or
   token: 429 with ``Retry-After``. The static files (stylesheets, scripts) are neither
   looked up (2.) nor counted: a signed-out page view costs one request of the limit, not
   one per file, and each file is sent from memory, or 304 when the browser has it.
4. **CSRF**: a change (POST, PUT, PATCH, DELETE) made with the session cookie needs the
   session's anti-CSRF token (``X-CSRF-Token`` header or ``csrf_token`` form field) and,
   when the browser sends one (other than ``null``), an ``Origin`` equal to
   ``public_url``'s.

Bodies are capped at :data:`MAX_BODY_BYTES` (413), except on the few routes a part
raises it for (:meth:`HttpEdge.allow_body`: a file of 10,000 devices is a few MiB), and
then only for a signed-in person or a valid token: a stranger's body is capped as
everywhere. The handlers of each part of the front
door live in their own module of this package and are added by :meth:`HttpEdge.add`;
they are thin: they parse, call the same core the CLI and MQTT use, and answer.

Database work runs on one thread of its own with its own connection (:meth:`desk`), never
on the event loop, which also serves devices.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.auth.limits import PeerLimiter
from gateway.auth.refusals import RefusalBook
from gateway.auth.web_sessions import WebSession, WebSessions
from gateway.config import Config
from gateway.credentials.permissions import Permissions
from gateway.db import DB_NAME, connect
from gateway.ops.logs import LogBudget
from gateway.run.http import i18n
from gateway.service import Gateway
from gateway.transports import web, web_server

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODY_BYTES = 64 * 1024
SESSION_COOKIE = "didgw_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/static/"
#: Under this path every refusal is JSON ``{"error": code, "detail": text}`` (the API's).
API_PREFIX = "/api/"
_ERROR_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    429: "too_many_requests",
}


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: a signed-in person (``session``) or an API token."""

    name: str  # the person's DID, or "token:<name>"
    permissions: Permissions
    session: WebSession | None = None
    scope: str = ""  # an API token's role; "" for people


#: ``token_auth(bearer_token, now_ms)`` on the desk thread: the token's principal or None.
TokenAuth = Callable[[str, int], Principal | None]


def language(request: web.Request) -> str:
    """The reader's language (:func:`i18n.choose`)."""
    return i18n.choose(
        request.cookies.get(i18n.LANG_COOKIE), request.headers.get("Accept-Language")
    )


def words(request: web.Request) -> i18n.Translate:
    """``_`` in the reader's language, for what a handler says itself (a refusal's fixed
    English text with its values, a plain-text error): handlers write
    ``_ = words(request)`` then ``_("text", name=value)``, which the catalogue test finds."""
    return i18n.translator(language(request))


class HttpEdge:
    """The server, its desk thread, its sessions; the parts of the front door add routes."""

    def __init__(
        self,
        config: Config,
        state_dir: Path,
        env: Mapping[str, str],
        gateway: Gateway,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config, self.state_dir, self.env, self.gateway = config, state_dir, env, gateway
        #: the last refusal each device earned, kept by ``didgw run`` (None: not known here)
        self.device_refusals: RefusalBook | None = None
        #: the running gateway's live counts (:func:`gateway.ops.health.live_counts` of its
        #: health), a read-only view set by ``didgw run`` (None: not known here)
        self.live_counts: Callable[[], dict[str, dict[str, int]]] | None = None
        #: ``didgw run``'s market (``run/energy.py`` MarketSide; None: the market is off)
        self.market: Any = None
        http = config.http
        self.base_url = http.base_url()
        self.tls = http.tls()
        self.clock = clock
        self.token_auth: TokenAuth | None = None
        #: path → the larger body cap of that route (:meth:`allow_body`)
        self.body_limits: dict[str, int] = {}
        #: each vouched meter's serial link (DID → is it up?), set by ``didgw run`` when it
        #: reads meters; a meter not in it is not read by this process.
        self.meter_links: dict[str, Callable[[], bool]] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="didgw-http")
        self.db = connect(state_dir / DB_NAME)  # used on the desk thread only
        self.sessions = WebSessions(
            self.db,
            idle_ms=http.session_idle_minutes * 60_000,
            max_ms=http.session_hours * 3_600_000,
            random_bytes=secrets.token_bytes,
        )
        self.limiter = PeerLimiter(http.source_rate, http.source_burst)
        #: what strangers get refused is logged within a budget (a flood is counted, not
        #: written line by line): ask ``refusals.take(now_ms, reason)`` before logging one.
        self.refusals = LogBudget("front door refusals", logger=log)
        self.app = web_server.Server(
            client_max_size=MAX_BODY_BYTES,
            middlewares=[self._headers, self._who, self._limit, self._csrf],
        )
        self.app.router.add_static(STATIC_PREFIX, STATIC_DIR)
        self._sweeper: asyncio.Task[None] | None = None
        self.stopping = asyncio.Event()

    # -- for the parts of the front door -------------------------------------------

    def add(self, routes: list[web.RouteDef]) -> None:
        self.app.add_routes(routes)

    def allow_body(self, path: str, limit: int) -> None:
        """Let requests to exactly ``path`` from a known principal carry up to ``limit``
        bytes instead of :data:`MAX_BODY_BYTES` (an upload). Strangers stay capped."""
        self.body_limits[path] = limit

    async def desk(self, work: Callable[..., T], *args: Any) -> T:
        """Run ``work(*args)`` on the desk thread (the one that uses :attr:`db`)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(work, *args)
        )

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    @staticmethod
    def principal(request: web.Request) -> Principal | None:
        found: Principal | None = request.get("principal")
        return found

    async def sign_in(
        self,
        response: web.StreamResponse,
        did: str,
        method: str,
        permissions: Permissions,
        **details: Any,
    ) -> WebSession:
        """Open a session (``details``: :meth:`WebSessions.open`'s) and set its cookie on
        ``response``."""
        token, session = await self.desk(
            functools.partial(
                self.sessions.open, did, method, permissions, now_ms=self.now_ms(), **details
            )
        )
        max_age = max(1, (session.expires_ms - session.created_ms) // 1000)
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=max_age,
            path="/",
            secure=True,
            httponly=True,
            samesite="Strict",
        )
        return session

    async def sign_out(self, request: web.Request, response: web.StreamResponse) -> None:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            await self.desk(self.sessions.close, token)
        response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")

    # -- the middlewares (see the module docstring) --------------------------------

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
            if exc.status >= 400 and request.path.startswith(API_PREFIX):
                response = _json_refusal(exc)
        _secure_headers(response.headers, tls=self.tls)
        if isinstance(response, web.HTTPException) and response.status >= 400:
            raise response
        return response

    @web.middleware
    async def _who(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request["principal"] = principal = None
        if _static(request):  # nobody's business who fetches a stylesheet: no lookup
            return await handler(request)
        large = self.body_limits.get(request.path)
        if (request.content_length or 0) > max(large or 0, MAX_BODY_BYTES):
            raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, request.content_length or 0)
        token = request.cookies.get(SESSION_COOKIE)
        bearer = request.headers.get("Authorization", "")
        now = self.now_ms()
        if bearer.startswith("Bearer ") and self.token_auth is not None:
            principal = await self.desk(self.token_auth, bearer[7:].strip(), now)
        elif token:
            session = await self.desk(functools.partial(self.sessions.find, token, now_ms=now))
            if session is not None:
                principal = Principal(session.did, session.permissions, session)
        if large is not None and principal is not None:
            request = request.clone(client_max_size=large)  # a chunked one: when read
        elif (request.content_length or 0) > MAX_BODY_BYTES:
            raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, request.content_length or 0)
        request["principal"] = principal
        return await handler(request)

    @web.middleware
    async def _limit(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request["principal"] is None and not _static(request):
            source = request.remote or "?"
            if not self.limiter.allow(source, time.monotonic()):
                wait = max(1, round(self.limiter.retry_after(source) + 0.5))
                _ = words(request)
                raise web.HTTPTooManyRequests(
                    text=_("too many requests from this address; try again later") + "\n",
                    headers={"Retry-After": str(wait)},
                )
        return await handler(request)

    @web.middleware
    async def _csrf(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        principal: Principal | None = request["principal"]
        if request.method in UNSAFE and principal is not None and principal.session is not None:
            origin = request.headers.get("Origin")
            # A form posted under ``Referrer-Policy: no-referrer`` carries ``Origin: null``
            # (Chromium), even from our own page: that says nothing, the token decides.
            if origin not in (None, "null") and origin != _origin_of(self.base_url):
                _ = words(request)
                raise web.HTTPForbidden(
                    text=_("refused: a change from another site ({origin})", origin=origin) + "\n"
                )
            sent = request.headers.get(CSRF_HEADER)
            if sent is None and request.content_type in (
                "application/x-www-form-urlencoded",
                "multipart/form-data",
            ):
                form = await request.post()
                value = form.get(CSRF_FIELD)
                sent = value if isinstance(value, str) else None
            if not principal.session.csrf_ok(sent):
                _ = words(request)
                raise web.HTTPForbidden(
                    text=_("refused: the anti-CSRF token is missing or wrong; reload the page")
                    + "\n"
                )
        return await handler(request)

    # -- running ----------------------------------------------------------------------

    async def start(self, ssl_context: ssl.SSLContext | None) -> None:
        http = self.config.http
        await self.app.start(http.host, http.port, ssl_context=ssl_context)
        self._sweeper = asyncio.ensure_future(self._sweep())
        log.info(
            "people's front door on %s (listening on %s port %d)",
            self.base_url,
            http.host,
            http.port,
        )

    async def _sweep(self, interval: float = 0.5, housekeeping: float = 60.0) -> None:
        """End the sessions behind a revoked or suspended credential (looked for twice a
        second), and delete those past their time (once a minute: a lookup refuses them
        before that)."""
        last = 0.0
        while True:
            try:
                await self.desk(self.sessions.close_revoked)
                if time.monotonic() - last >= housekeeping:
                    last = time.monotonic()
                    await self.desk(functools.partial(self.sessions.sweep, now_ms=self.now_ms()))
                self.refusals.flush(self.now_ms())
            except Exception as exc:  # the next round tries again
                log.error("http sessions: %s", exc)
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        self.stopping.set()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.app.stop()
        self._pool.shutdown(wait=True)
        self.db.close()


def _secure_headers(headers: Any, *, tls: bool) -> None:
    headers.setdefault("Content-Security-Policy", CSP)
    headers["Server"] = "didgw"  # not the framework's name and version
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Frame-Options"] = "DENY"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    headers.setdefault("Cache-Control", "no-store")
    if tls:
        headers["Strict-Transport-Security"] = "max-age=31536000"


def _json_refusal(exc: web.HTTPException) -> web.Response:
    """The edge's own refusal (rate limit, CSRF, body cap, no such route) as the API's JSON."""
    body = {"error": _ERROR_CODES.get(exc.status, "error"), "detail": (exc.text or "").strip()}
    headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type",
               "content-length")}  # fmt: skip
    return web.json_response(body, status=exc.status, headers=headers)


def _static(request: web.Request) -> bool:
    """A fetch of the front door's own static files: the same few files for everyone, kept
    in memory and revalidated by ETag, so each costs no more than a refusal would."""
    return request.method in ("GET", "HEAD") and request.raw_path.startswith(STATIC_PREFIX)


def _origin_of(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"

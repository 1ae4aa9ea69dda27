"""Signing in with a wallet: OpenID4VP 1.0, the gateway as verifier (docs/protocol/openid4vp.md).

Thin over :mod:`gateway.credentials.oid4vp` and the people's desk
(:mod:`gateway.run.people`, the same one MQTT uses):

* ``GET /login`` makes a request and shows its same-device link and its QR code. A
  short-lived ``HttpOnly`` ``SameSite=Strict`` login cookie binds the request to this
  browser: only the browser that started a sign-in can finish it.
* ``GET /oid4vp/requests/<id>``: the signed request object.
* ``POST /oid4vp/response`` (``direct_post.jwt``: a JWE in ``response``, encrypted to the
  request's own key; or ``direct_post``, as ``[http] response_mode`` says): verified, put
  on the record (a disclosure entry and a person-session entry), the request marked
  answered; the answer is a JSON ``redirect_uri`` to ``/login/done`` (the same-device
  flow returns the browser there).
* ``GET /login/status?id=`` tells the page's script (``static/login.js``, polling once
  every 1.5 s) whether the wallet answered; then ``POST /login/finish`` (or ``GET
  /login/done``) opens the session and goes to ``/``, or shows why it was refused.

The pending requests live in memory on the event loop (a restart forgets them: the person
scans again); the record and the sessions are on the desk thread.
"""

from __future__ import annotations

import logging
import secrets

from gateway.credentials import oid4vp
from gateway.credentials.oid4vp import LoginRequest, PendingLogins, PoolFull, VpGrant, VpRefused
from gateway.run.http.pages import render, words
from gateway.run.http.server import HttpEdge
from gateway.run.people import PeopleDesk
from gateway.transports import web

log = logging.getLogger(__name__)

LOGIN_COOKIE = "didgw_login"
REQUEST_JWT = "application/oauth-authz-req+jwt"


def add_routes(edge: HttpEdge) -> None:
    """Sign-in with OpenID4VP (see the module docstring)."""
    door = LoginDoor(edge)
    edge.add(
        [
            web.get("/login", door.login),
            web.get("/oid4vp/requests/{id}", door.request_object),
            web.post("/oid4vp/response", door.response),
            web.get("/login/status", door.status),
            web.post("/login/finish", door.finish),
            web.get("/login/done", door.finish),
        ]
    )


class LoginDoor:
    """The handlers, the pending sign-ins and the people's desk of one edge."""

    def __init__(self, edge: HttpEdge) -> None:
        self.edge = edge
        http = edge.config.http
        self.pending = PendingLogins(http.max_pending_logins, random_bytes=secrets.token_bytes)
        self.desk = PeopleDesk(edge.config, edge.db, edge.gateway.did)  # desk thread only
        self.signer = edge.gateway.signer(edge.env)
        self.client_id = oid4vp.client_id_of(edge.gateway.did)
        self.session_ms = http.session_hours * 3_600_000
        self.response_mode = http.response_mode

    def mine(self, request: web.Request) -> LoginRequest | None:
        """The live sign-in of ``id`` if this browser started it."""
        token = request.cookies.get(LOGIN_COOKIE, "")
        found = self.pending.get(request.query.get("id", ""), self.edge.now_ms())
        if found is None or not token or found.browser != oid4vp.browser_hash(token):
            return None
        return found

    async def login(self, request: web.Request) -> web.StreamResponse:
        edge = self.edge
        if edge.principal(request) is not None:
            raise web.HTTPSeeOther("/")
        token = secrets.token_urlsafe(32)
        try:
            made = self.pending.new(oid4vp.browser_hash(token), edge.now_ms(), self.response_mode)
        except PoolFull as exc:
            return render(request, "login.html", title="Sign in", status=503, busy=str(exc))
        link = oid4vp.authorization_url(made, gateway_did=edge.gateway.did, base_url=edge.base_url)
        response = render(request, "login.html", title="Sign in", busy=None, link=link, id=made.id)
        response.set_cookie(
            LOGIN_COOKIE,
            token,
            max_age=oid4vp.REQUEST_LIFETIME_MS // 1000,
            path="/login",
            secure=True,
            httponly=True,
            samesite="Strict",
        )
        return response

    async def request_object(self, request: web.Request) -> web.Response:
        edge = self.edge
        found = self.pending.get(request.match_info["id"], edge.now_ms())
        if found is None or found.answered:
            _ = words(request)
            raise web.HTTPNotFound(text=_("no such sign-in request (expired or answered)") + "\n")
        jwt = oid4vp.request_object(
            found, signer=self.signer, base_url=edge.base_url, now_ms=edge.now_ms()
        )
        return web.Response(text=jwt, content_type=REQUEST_JWT)

    async def response(self, request: web.Request) -> web.Response:
        form = await request.post()
        claimed: LoginRequest | None = None
        try:
            claimed, vp_token = oid4vp.take_response(form, self.pending, self.edge.now_ms())
            grant = await self.edge.desk(self.check, claimed, vp_token)
        except VpRefused as refusal:
            if self.edge.refusals.take(self.edge.now_ms(), refusal.reason):
                log.info("sign-in refused: %s", refusal)
            if claimed is not None:
                claimed.refusal = refusal
            invalid = refusal.reason in oid4vp.INVALID_REQUEST
            error = "invalid_request" if invalid else "access_denied"
            return web.json_response(
                {
                    "error": error,
                    "error_description": f"{refusal.reason}: {oid4vp.REASONS[refusal.reason]}",
                    "reason": refusal.reason,
                },
                status=400,
            )
        claimed.grant = grant
        log.info("%s signed in with a presentation: %s", grant.did, grant.permissions.names())
        done = f"{self.edge.base_url}/login/done?id={claimed.id}"
        return web.json_response({"redirect_uri": done})

    def check(self, claimed: LoginRequest, vp_token: dict[str, list[str]]) -> VpGrant:
        """On the desk thread: verify, then record (not on the record: no session)."""
        grant = oid4vp.check_response(
            claimed,
            vp_token,
            client_id=self.client_id,
            verify=self.desk.check,
            permissions=self.desk.permissions,
            now_ms=self.edge.now_ms(),
            session_ms=self.session_ms,
        )
        try:
            claimed.disclosure, _ = self.desk.record_session(grant, self.edge.now_ms())
        except Exception as exc:
            log.error("cannot record the sign-in of %s: %s", grant.did, exc)
            raise VpRefused("unavailable", "the sign-in could not be recorded") from None
        return grant

    async def status(self, request: web.Request) -> web.Response:
        found = self.mine(request)
        if found is None:
            return web.json_response({"status": "expired"})
        if found.refusal is not None:
            return web.json_response({"status": "refused", "reason": found.refusal.reason})
        return web.json_response({"status": "done" if found.grant else "waiting"})

    async def finish(self, request: web.Request) -> web.StreamResponse:
        """The browser that started a sign-in: its session, or why there is none."""
        edge = self.edge
        if request.method == "POST":
            wanted = (await request.post()).get("id")
            request_id = wanted if isinstance(wanted, str) else ""
        else:
            request_id = request.query.get("id", "")
        token = request.cookies.get(LOGIN_COOKIE, "")
        found = None
        if token:
            found = self.pending.finish(request_id, oid4vp.browser_hash(token), edge.now_ms())
        if found is None or found.grant is None:
            refusal = found.refusal if found is not None else None
            return render(
                request,
                "login_done.html",
                title="Sign in",
                status=400 if refusal is not None else 200,
                reason=refusal.reason if refusal is not None else None,
                explained=oid4vp.REASONS[refusal.reason] if refusal is not None else "",
            )
        grant = found.grant
        answer = web.HTTPSeeOther("/")
        await edge.sign_in(
            answer,
            grant.did,
            "presentation",
            grant.permissions,
            expires_ms=grant.expires_ms,
            status_indexes=grant.status_indexes,
            presentations=grant.digests,
            disclosure=found.disclosure,
        )
        answer.del_cookie(LOGIN_COOKIE, path="/login")
        return answer

"""One-time sign-in links, for ``didgw demo`` (``[http] demo_links = true``; the routes do
not exist otherwise): the demo signs its people in with a wallet, then turns each session
into a link a new user opens in a browser (:mod:`gateway.auth.handoffs`).

* ``POST /demo/links`` (a signed-in person, with her anti-CSRF token): a link that hands
  this very session over, as JSON ``{"link": …, "expires_in": seconds}``.
* ``GET /demo/link/<secret>``: the first browser gets a fresh session of that person (the
  one the link was made from ends: the demo no longer holds a way in) and lands on her
  page (``/console/devices`` for a facility manager, ``/energy`` for a household member);
  a link used, expired or never made gets a page that says so (404) and signs no one in.
"""

from __future__ import annotations

import functools
import secrets

from gateway.auth.handoffs import LINK_LIFETIME_MS, Handoffs, TooManyLinks
from gateway.credentials.permissions import Permissions
from gateway.run.http.pages import render, words
from gateway.run.http.server import SESSION_COOKIE, HttpEdge
from gateway.transports import web


def landing(permissions: Permissions) -> str:
    """Where a person's link lands: her first page."""
    if permissions.facility_manager:
        return "/console/devices"
    return "/energy" if permissions.households else "/"


def add_routes(edge: HttpEdge) -> None:
    """The two routes, only when ``[http] demo_links`` is on."""
    if not edge.config.http.demo_links:
        return
    links = Handoffs(secrets.token_bytes)

    async def make(request: web.Request) -> web.Response:
        principal = edge.principal(request)
        token = request.cookies.get(SESSION_COOKIE, "")
        if principal is None or principal.session is None or not token:
            raise web.HTTPUnauthorized(
                text=words(request)("sign in first: a link hands over your session") + "\n"
            )
        try:
            secret = links.make(principal.session, token, edge.now_ms())
        except TooManyLinks as exc:
            raise web.HTTPServiceUnavailable(text=f"{exc}; try again later\n") from None
        return web.json_response(
            {"link": f"{edge.base_url}/demo/link/{secret}", "expires_in": LINK_LIFETIME_MS // 1000}
        )

    async def take(request: web.Request) -> web.StreamResponse:
        found = links.take(request.match_info["secret"], edge.now_ms())
        if found is None:
            return render(request, "demo_link.html", title="Sign in", status=404)
        session = found.session
        if (
            await edge.desk(
                functools.partial(edge.sessions.find, found.token, now_ms=edge.now_ms())
            )
            is None
        ):
            # signed out, revoked or past its time since the link was made: nothing to hand
            return render(request, "demo_link.html", title="Sign in", status=404)
        answer = web.HTTPSeeOther(landing(session.permissions))
        await edge.sign_in(
            answer,
            session.did,
            session.method,
            session.permissions,
            expires_ms=session.expires_ms,
            status_indexes=session.status_indexes,
            presentations=session.presentations,
            disclosure=session.disclosure,
        )
        await edge.desk(edge.sessions.close, found.token)
        return answer

    edge.add([web.post("/demo/links", make), web.get("/demo/link/{secret}", take)])

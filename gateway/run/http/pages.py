"""Server-rendered pages: one Jinja2 environment over ``templates/``, autoescaped.

Pages are phone-first, plain HTML with one stylesheet and, where a page must react
(sign-in waiting for a wallet, a passkey ceremony), a small script of its own under
``static/``: never inline (the CSP forbids it), never fetched from another site.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from gateway.run.http.server import CSRF_FIELD, HttpEdge

TEMPLATES = Path(__file__).parent / "templates"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(
    request: web.Request, template: str, *, status: int = 200, **context: Any
) -> web.Response:
    """``template`` with ``context``, the signed-in person (``person``) and her anti-CSRF
    token (``csrf_token``, for the forms' hidden ``csrf_token`` field)."""
    principal = HttpEdge.principal(request)
    session = principal.session if principal is not None else None
    body = _env.get_template(template).render(
        person=session.did if session is not None else None,
        csrf_field=CSRF_FIELD,
        csrf_token=session.csrf if session is not None else "",
        **context,
    )
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def add_routes(edge: HttpEdge) -> None:
    """The home page and signing out."""

    async def home(request: web.Request) -> web.Response:
        return render(request, "home.html", title="didgw")

    async def logout(request: web.Request) -> web.Response:
        response = web.HTTPSeeOther("/")
        await edge.sign_out(request, response)
        return response

    edge.add([web.get("/", home), web.post("/logout", logout)])

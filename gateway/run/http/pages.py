"""Server-rendered pages: one Jinja2 environment over ``templates/``, autoescaped, in the
reader's language (``i18n.py``: English and Korean).

Pages are phone-first, plain HTML with one stylesheet and, where a page must react
(sign-in waiting for a wallet, a passkey ceremony), a small script of its own under
``static/``: never inline (the CSP forbids it), never fetched from another site.

Jinja2 is imported, and the environment made, when the first page is rendered: the API,
the wallets' endpoints and the metrics never need it, and a gateway nobody browses to does
not carry it (about 20 ms of import and 2-4 MiB in ``didgw run``). Templates are compiled on
first use either way (the environment caches them).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.run.http import i18n
from gateway.run.http.server import CSRF_FIELD, HttpEdge, language, words
from gateway.transports import web

__all__ = ["language", "local_path", "render", "words"]

if TYPE_CHECKING:
    import jinja2

TEMPLATES = Path(__file__).parent / "templates"


@functools.cache
def _environment() -> jinja2.Environment:
    """The one environment: autoescaped, undefined names an error, made on first use."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(
    request: web.Request, template: str, *, status: int = 200, **context: Any
) -> web.Response:
    """``template`` with ``context``, in the reader's language (``_`` translates, ``lang``
    names it), the signed-in person (``person``; ``manager`` and ``household`` say what her
    credentials make her, for the navigation) and her anti-CSRF token (``csrf_token``, for
    the forms' hidden ``csrf_token`` field)."""
    principal = HttpEdge.principal(request)
    session = principal.session if principal is not None else None
    lang = language(request)
    translate = i18n.translator(lang)
    permissions = principal.permissions if principal is not None and session else None
    body = (
        _environment()
        .get_template(template)
        .render(
            person=session.did if session is not None else None,
            manager=bool(permissions and permissions.facility_manager),
            household=bool(permissions and permissions.households),
            csrf_field=CSRF_FIELD,
            csrf_token=session.csrf if session is not None else "",
            _=translate,
            lang=lang,
            languages=list(i18n.LANGUAGE_NAMES.items()),
            here=request.path,
            **{
                "title": translate(context.pop("title")) if "title" in context else "didgw",
                **context,
            },
        )
    )
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def local_path(value: object) -> str:
    """``value`` if it is a path of this site (``/…``, not ``//host``), else ``/``: where a
    form may send the reader back to, never another site."""
    local = isinstance(value, str) and value.startswith("/") and not value.startswith("//")
    if local and "\\" not in str(value) and len(str(value)) <= 512:
        return str(value)
    return "/"


def add_routes(edge: HttpEdge) -> None:
    """The home page, signing out, choosing the language."""

    async def home(request: web.Request) -> web.Response:
        return render(request, "home.html")

    async def logout(request: web.Request) -> web.Response:
        response = web.HTTPSeeOther("/")
        await edge.sign_out(request, response)
        return response

    async def choose_language(request: web.Request) -> web.Response:
        form = await request.post()
        response = web.HTTPSeeOther(local_path(form.get("next")))
        chosen = form.get("lang")
        if chosen in i18n.LANGUAGES:
            response.set_cookie(
                i18n.LANG_COOKIE,
                str(chosen),
                max_age=365 * 86400,
                path="/",
                secure=True,
                httponly=True,
                samesite="Strict",
            )
        return response

    edge.add([web.get("/", home), web.post("/logout", logout), web.post("/lang", choose_language)])

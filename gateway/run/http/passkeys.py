"""Passkeys at the front door: bind one after a presentation sign-in, sign in with it.

Thin over ``gateway/auth/passkeys.py`` (the ceremonies, their pending challenges) and
``gateway/auth/passkey_store.py`` (the table, the record, the credentials' re-check):

* ``GET /passkeys``: the signed-in person's passkeys; add one, remove one.
* ``POST /passkeys/register/options`` and ``POST /passkeys/register``: bind a passkey;
  only for a session opened by a presentation (a passkey cannot vouch for another).
* ``POST /passkeys/remove`` (form): forget one, on the record.
* ``GET /login/passkey``, ``POST /passkeys/login/options``, ``POST /passkeys/login``: sign
  in with a passkey alone; the credentials behind it are re-checked (revoked, suspended or
  expired: refused, with the reason).

JSON endpoints answer ``{"error": <key>, "message": <for the person>}`` when refusing:
``error`` is the stable key, ``message`` in the reader's language (the refusal's fixed text
through the catalogue, with its values), which ``static/passkeys.js`` shows.
Changes made with the session cookie pass the edge's CSRF check (header ``X-CSRF-Token``,
which ``static/passkeys.js`` reads from the page's ``csrf-token`` meta tag).
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import UTC, datetime
from typing import Any

from gateway.auth.passkey_store import Passkey, PasskeyStore
from gateway.auth.passkeys import Ceremonies, PasskeyRefused, RelyingParty
from gateway.auth.web_sessions import WebSession
from gateway.run.http.pages import render, words
from gateway.run.http.server import HttpEdge
from gateway.transports import web

log = logging.getLogger(__name__)

_STATUS = {"malformed": 400, "busy": 503, "not_signed_in": 401}


def _refusal(request: web.Request, exc: PasskeyRefused) -> web.Response:
    message = words(request)(exc.text, **exc.values)
    return web.json_response(
        {"error": exc.reason, "message": message}, status=_STATUS.get(exc.reason, 403)
    )


async def _json_body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise PasskeyRefused("malformed", "send application/json")
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError):  # Recursion: deep nesting
        raise PasskeyRefused("malformed", "the body is not JSON") from None


def _session(request: web.Request) -> WebSession:
    principal = HttpEdge.principal(request)
    if principal is None or principal.session is None:
        raise PasskeyRefused("not_signed_in", "sign in first")
    return principal.session


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _view(p: Passkey) -> dict[str, str]:
    return {
        "label": p.label,
        "credential_id": p.credential_id,
        "added": _when(p.created_ms),
        "used": _when(p.last_used_ms),
    }


def add_routes(edge: HttpEdge) -> None:
    """The passkey pages and endpoints (off, with a page saying why, for an IP address)."""
    door = _Passkeys(edge)
    edge.add(
        [
            web.get("/passkeys", door.page),
            web.post("/passkeys/register/options", door.register_options),
            web.post("/passkeys/register", door.register),
            web.post("/passkeys/remove", door.remove),
            web.get("/login/passkey", door.login_page),
            web.post("/passkeys/login/options", door.login_options),
            web.post("/passkeys/login", door.login),
        ]
    )


class _Passkeys:
    """The handlers, the ceremonies' pending challenges, the store (used on the desk)."""

    def __init__(self, edge: HttpEdge) -> None:
        self.edge = edge
        self.why_off = ""
        self.ceremonies: Ceremonies | None = None
        try:
            rp = RelyingParty.from_url(edge.base_url)
        except ValueError as exc:
            log.warning("passkeys are off: %s", exc)
            self.why_off = str(exc)
        else:
            self.ceremonies = Ceremonies(
                rp,
                max_pending_logins=edge.config.http.max_pending_logins,
                random_bytes=secrets.token_bytes,
            )
        self._store: PasskeyStore | None = None

    def store(self) -> PasskeyStore:
        """On the desk thread only (made there, on first use)."""
        if self._store is None:
            self._store = PasskeyStore(self.edge.db)
        return self._store

    def on(self) -> Ceremonies:
        if self.ceremonies is None:
            raise PasskeyRefused("unavailable", "passkeys are off here: {why}", why=self.why_off)
        return self.ceremonies

    @staticmethod
    def session_key(session: WebSession) -> str:
        return session.csrf  # ties a registration to the session that asked for it

    async def page(self, request: web.Request) -> web.StreamResponse:
        principal = HttpEdge.principal(request)
        if principal is None or principal.session is None:
            raise web.HTTPSeeOther("/login/passkey")
        session = principal.session
        mine: list[Passkey] = await self.edge.desk(lambda: self.store().of(session.did))
        return render(
            request,
            "passkeys.html",
            title="Passkeys",
            passkeys=[_view(p) for p in mine],
            may_bind=session.method == "presentation",
            why_off=self.why_off,
            removed=request.query.get("removed") == "1",
        )

    async def register_options(self, request: web.Request) -> web.Response:
        try:
            session = _session(request)
            if session.method != "presentation":
                raise PasskeyRefused(
                    "presentation_needed",
                    "to bind a passkey, sign in with your credential (not with a passkey)",
                )
            mine = await self.edge.desk(lambda: self.store().of(session.did))
            options = self.on().registration_options(
                session.did,
                self.session_key(session),
                [p.credential_id for p in mine],
                now_ms=self.edge.now_ms(),
            )
        except PasskeyRefused as exc:
            return _refusal(request, exc)
        return web.json_response(options)

    async def register(self, request: web.Request) -> web.Response:
        try:
            session = _session(request)
            body = await _json_body(request)
            new = self.on().verify_registration(
                body, session.did, self.session_key(session), now_ms=self.edge.now_ms()
            )
            name = body.get("name", "")
            bound = await self.edge.desk(
                lambda: self.store().bind(
                    new,
                    did=session.did,
                    name=name if isinstance(name, str) else "",
                    permissions=session.permissions,
                    status_indexes=session.status_indexes,
                    presentations=list(session.presentations),
                    disclosure=session.disclosure,
                    now_ms=self.edge.now_ms(),
                )
            )
        except PasskeyRefused as exc:
            return _refusal(request, exc)
        log.info("%s bound a passkey", session.did)
        return web.json_response({"ok": True, "passkey": bound.label})

    async def remove(self, request: web.Request) -> web.StreamResponse:
        principal = HttpEdge.principal(request)
        if principal is None or principal.session is None:
            raise web.HTTPSeeOther("/login/passkey")
        form = await request.post()
        credential_id = form.get("credential_id")
        if not isinstance(credential_id, str) or not 0 < len(credential_id) <= 1400:
            raise web.HTTPBadRequest(
                text=words(request)("refused: which passkey? (credential_id)") + "\n"
            )
        did, now = principal.session.did, self.edge.now_ms()
        gone = await self.edge.desk(
            lambda: self.store().remove(
                did, credential_id, reason="removed by its owner", now_ms=now
            )
        )
        if not gone:
            raise web.HTTPNotFound(text=words(request)("refused: you have no such passkey") + "\n")
        raise web.HTTPSeeOther("/passkeys?removed=1")

    async def login_page(self, request: web.Request) -> web.Response:
        return render(request, "passkey_login_page.html", title="Sign in with a passkey")

    async def login_options(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self.on().authentication_options(now_ms=self.edge.now_ms()))
        except PasskeyRefused as exc:
            return _refusal(request, exc)

    async def login(self, request: web.Request) -> web.Response:
        now = self.edge.now_ms()
        try:
            body = await _json_body(request)
            checks = self.on()
            challenge, credential, credential_id = checks.login_challenge(body, now_ms=now)

            def check() -> Passkey:
                store = self.store()
                passkey = store.find(credential_id)
                if passkey is None:
                    raise PasskeyRefused(
                        "unknown_passkey",
                        "this passkey is not bound here (it may have been removed)",
                    )
                count = checks.verify_login(
                    challenge,
                    credential,
                    public_key=passkey.public_key,
                    sign_count=passkey.sign_count,
                    handle=passkey.user_handle,
                )
                store.credentials_expiry(passkey.status_indexes, now_ms=now)
                store.signed_in(passkey, count, now_ms=now)
                return passkey

            passkey = await self.edge.desk(check)
        except PasskeyRefused as exc:
            if self.edge.refusals.take(self.edge.now_ms(), f"passkey {exc.reason}"):
                log.info("passkey sign-in refused: %s", exc)
            return _refusal(request, exc)
        response = web.json_response({"ok": True, "next": "/passkeys"})
        await self.edge.sign_in(
            response,
            passkey.did,
            "passkey",
            passkey.permissions,
            expires_ms=passkey.expires_ms,
            status_indexes=passkey.status_indexes,
            presentations=passkey.presentations,
            disclosure=passkey.disclosure,
        )
        log.info("%s signed in with a passkey", passkey.did)
        return response

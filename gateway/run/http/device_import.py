"""Bulk registration at the front door: the facility manager's upload page and
``POST /api/devices/import``, over :mod:`gateway.registry.bulk` (what ``didgw device
import`` runs).

The page: upload a file (multipart, the form's anti-CSRF token), see every problem by
line or a preview, then "Register all": the checked file is kept here, in memory, for
:data:`PENDING_MINUTES` minutes, one per session and :data:`MAX_PENDING` in all (a file
is at most 4 MiB, so at most 16 MiB are held), and checked again whole when it is
registered: the registry may have changed in between. All or none, in one transaction;
each device on the record with a ``person-action`` entry of the manager who did it.

The edge's 64 KiB body cap is raised for these two routes only, to the file cap plus
room for the multipart envelope, and only for a signed-in person or a token
(:meth:`HttpEdge.allow_body`): 10,000 devices are about 1 MiB of CSV.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.auth.api_access import Caller, may
from gateway.auth.web_sessions import WebSession
from gateway.chain.store import ChainStore, NewEntry
from gateway.errors import DidgwError
from gateway.registry import Device, Registry
from gateway.registry.bulk import MAX_FILE_BYTES, ImportRefused, Parsed, register_file
from gateway.run.http.api import error_response
from gateway.run.http.api_desk import person_action
from gateway.run.http.pages import render, words
from gateway.run.http.server import HttpEdge, Principal
from gateway.service import build_resolver
from gateway.transports import web

PAGE = "/console/devices/import"
CONFIRM = PAGE + "/register"
API = "/api/devices/import"
MAX_UPLOAD = MAX_FILE_BYTES + 64 * 1024  # the file and its multipart envelope
MAX_PENDING = 4
PENDING_MINUTES = 10
PREVIEW_ROWS = 10
CONTENT_TYPES = ("text/csv", "application/json", "text/plain", "application/octet-stream")


@dataclass(frozen=True)
class Pending:
    """A checked file waiting for "Register all"."""

    id: str
    session: str  # the session that uploaded it (its anti-CSRF token, never shown to others)
    data: bytes
    devices: int
    expires_ms: int


class PendingImports:
    """Checked files, bounded: one per session, :data:`MAX_PENDING` in all, minutes each."""

    def __init__(self, limit: int = MAX_PENDING, ttl_ms: int = PENDING_MINUTES * 60_000) -> None:
        self.limit, self.ttl_ms = limit, ttl_ms
        self._items: dict[str, Pending] = {}

    def put(self, session: str, data: bytes, devices: int, now_ms: int) -> Pending | None:
        """Keep ``data`` for ``session`` (replacing what it kept); None when full."""
        self._items = {
            k: p for k, p in self._items.items() if p.expires_ms > now_ms and p.session != session
        }
        if len(self._items) >= self.limit:
            return None
        made = Pending(secrets.token_urlsafe(16), session, data, devices, now_ms + self.ttl_ms)
        self._items[made.id] = made
        return made

    def take(self, pending_id: str, session: str, now_ms: int) -> Pending | None:
        """The file ``session`` kept under ``pending_id``, removed; None if not (or expired)."""
        found = self._items.get(pending_id)
        if found is None or found.session != session:
            return None
        del self._items[pending_id]
        return found if found.expires_ms > now_ms else None


class DeviceImport:
    """The page's and the API's handlers; the registry work on the desk thread."""

    def __init__(self, edge: HttpEdge) -> None:
        self.edge = edge
        self.pending = PendingImports()
        chain = ChainStore(edge.db)
        self.registry = Registry(  # desk thread only
            edge.db, build_resolver(edge.config), chain=chain, gateway_did=edge.gateway.did
        )

    def run(self, principal: Principal, data: bytes, dry_run: bool) -> tuple[Parsed, int]:
        """On the desk thread: check, and unless ``dry_run`` register, as ``principal``;
        :class:`ImportRefused` with every problem."""
        parsed, devices = register_file(
            self.registry,
            data,
            actor=principal.name,
            now=time.time(),
            dry_run=dry_run,
            also=functools.partial(_person_action, principal, hashlib.sha256(data).hexdigest()),
        )
        return parsed, len(devices)

    def page_routes(self) -> list[web.RouteDef]:
        return [
            web.get(PAGE, self.page),
            web.post(PAGE, self.upload),
            web.post(CONFIRM, self.confirm),
        ]

    def api_routes(self) -> list[web.RouteDef]:
        """Under ``/api/``: described in ``openapi.json`` with the JSON API's."""
        return [web.post(API, self.api)]

    # -- the page ----------------------------------------------------------------------

    def _manager(self, request: web.Request) -> tuple[Principal, WebSession]:
        """The signed-in facility manager; anyone else is sent to sign in or refused."""
        principal = HttpEdge.principal(request)
        if principal is None or principal.session is None:
            raise web.HTTPSeeOther("/login")
        if not principal.permissions.may_manage_devices():
            raise web.HTTPForbidden(
                text=words(request)("only a facility manager registers devices") + "\n"
            )
        return principal, principal.session

    async def page(self, request: web.Request) -> web.StreamResponse:
        self._manager(request)
        return self._show(request)

    def _show(self, request: web.Request, status: int = 200, **context: Any) -> web.Response:
        values: dict[str, Any] = {
            "problems": None, "problem_count": 0, "preview": None, "pending": None,
            "registered": None, "error": None, "detail": "", "filename": "",
            "max_mib": MAX_FILE_BYTES >> 20,
        }  # fmt: skip
        return render(
            request,
            "device_import.html",
            title="Register devices from a file",
            status=status,
            **{**values, **context},
        )

    async def upload(self, request: web.Request) -> web.StreamResponse:
        principal, session = self._manager(request)
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return self._show(request, 400, error="no_file")
        data = upload.file.read(MAX_FILE_BYTES + 1)
        name = upload.filename[:120]
        try:
            parsed, _ = await self.edge.desk(self.run, principal, data, True)
        except ImportRefused as refused:
            found = refused.parsed
            return self._show(
                request, 422, filename=name, problems=found.problems,
                problem_count=found.problem_count,
            )  # fmt: skip
        kept = self.pending.put(session.csrf, data, len(parsed.rows), self.edge.now_ms())
        if kept is None:
            return self._show(request, 503, error="busy")
        return self._show(
            request, filename=name, preview=parsed.rows[:PREVIEW_ROWS], pending=kept,
            minutes=PENDING_MINUTES,
        )  # fmt: skip

    async def confirm(self, request: web.Request) -> web.StreamResponse:
        principal, session = self._manager(request)
        form = await request.post()
        kept = self.pending.take(str(form.get("import", "")), session.csrf, self.edge.now_ms())
        if kept is None:
            return self._show(request, 409, error="gone")
        try:
            _, count = await self.edge.desk(self.run, principal, kept.data, False)
        except ImportRefused as refused:
            found = refused.parsed
            return self._show(
                request, 422, problems=found.problems, problem_count=found.problem_count
            )
        except DidgwError as exc:
            return self._show(request, 409, error="refused", detail=str(exc))
        return self._show(request, registered=count)

    # -- the API -------------------------------------------------------------------------

    async def api(self, request: web.Request) -> web.StreamResponse:
        principal = HttpEdge.principal(request)
        refused = _api_refusal(request, principal)
        if refused is not None or principal is None:
            return refused or error_response(401, "unauthenticated", "sign in")
        data = await request.read()
        dry_run = request.query.get("dry_run", "false") in ("true", "1")
        try:
            parsed, count = await self.edge.desk(self.run, principal, data, dry_run)
        except ImportRefused as exc:
            body = {"error": exc.code, "detail": str(exc), **exc.parsed.to_json()}
            return web.json_response(body, status=422)
        except DidgwError as exc:
            return error_response(409, "conflict", str(exc))
        answer = {**parsed.to_json(), "dry_run": dry_run, "registered": count}
        return web.json_response(answer, status=200 if dry_run else 201)


def _api_refusal(request: web.Request, principal: Principal | None) -> web.Response | None:
    """Why ``POST /api/devices/import`` is refused before the file is read, or None."""
    if principal is None:
        return error_response(
            401, "unauthenticated", "send an API token (Authorization: Bearer didgw_...) "
            "or sign in", **{"WWW-Authenticate": 'Bearer realm="didgw"'},
        )  # fmt: skip
    caller = Caller(principal.name, principal.permissions, principal.scope)
    decision = may(caller, "devices", change=True)
    if not decision:
        return error_response(
            403, "forbidden", f"{principal.name} may not do this: {decision.reason}"
        )
    if request.query.get("dry_run", "false") not in ("true", "false", "1", "0"):
        return error_response(400, "bad_parameter", "dry_run must be true or false")
    if request.content_type not in CONTENT_TYPES:
        return error_response(
            400, "bad_body", "send the file itself as text/csv or application/json"
        )
    return None


def _person_action(principal: Principal, digest: str, device: Device) -> Sequence[NewEntry]:
    """The ``person-action`` entry of each device a signed-in person imports (none for a
    token), as a single registration at the API has, with the SHA-256 of the file."""
    return person_action(principal, "register", device.did, **{"import": digest})


def add_routes(edge: HttpEdge) -> None:
    """The upload page, its "Register all", and the API route; their larger body cap."""
    part = DeviceImport(edge)
    for path in (PAGE, API):
        edge.allow_body(path, MAX_UPLOAD)
    edge.add(part.page_routes() + part.api_routes())

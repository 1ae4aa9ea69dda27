"""The JSON API under ``/api/``: what ``didgw device``, ``cred``, ``market``, ``chain``,
``anchor status`` and ``status`` do, for integrators (docs/api.md; the OpenAPI document
``openapi.json`` beside this module is served at ``/api/openapi.json``).

Callers are API tokens (``Authorization: Bearer didgw_…``) or signed-in people (the
session cookie; changes need the anti-CSRF token, which the edge checks). What each may
do is decided by :mod:`gateway.auth.api_access`; the work is done by
:class:`~gateway.run.http.api_desk.ApiDesk` on the desk thread. Errors are JSON
``{"error": code, "detail": text}`` (the edge turns its own refusals under ``/api/``
into the same shape).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from gateway.auth.api_access import Caller, market_scope, may, sees
from gateway.chain.store import ChainError
from gateway.errors import CredentialError, DidError, DidgwError, RegistryError
from gateway.registry import KINDS, Status
from gateway.registry.table import MAX_QUERY, SORTS, Cursor, DeviceFilter, metadata_filter
from gateway.run.http.api_desk import ApiDesk, iso
from gateway.run.http.server import HttpEdge, Principal
from gateway.transports import web

log = logging.getLogger(__name__)

OPENAPI = Path(__file__).parent / "openapi.json"
MAX_PAGE = 500
DEFAULT_PAGE = 100
MAX_LIST = 32  # topics, capabilities, metadata members of one device
MAX_TEXT = 512
MAX_KIND = 64  # a record entry kind
DEVICE_ACTIONS = ("suspend", "resume", "revoke", "rotate")
CREDENTIAL_ACTIONS = ("suspend", "resume", "revoke")

Work = Callable[["JsonApi", web.Request, Principal], Awaitable[web.StreamResponse]]
Handler = Callable[["JsonApi", web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An answer other than success: ``status``, a stable ``code``, words for people."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def error_response(status: int, code: str, detail: str, **headers: str) -> web.Response:
    body = json.dumps({"error": code, "detail": detail})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def _ok(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=functools.partial(json.dumps))


def _refusal(exc: DidgwError) -> ApiError:
    """A core refusal as an answer: unknown → 404, a state that forbids it → 409, else 400."""
    text = str(exc)
    if isinstance(exc, RegistryError | CredentialError) and text.startswith("no "):
        return ApiError(404, "not_found", text)
    if isinstance(exc, ChainError) and text.startswith("no entry"):
        return ApiError(404, "not_found", text)
    if isinstance(exc, RegistryError | CredentialError) and (
        "already" in text or "revoked, which is permanent" in text
    ):
        return ApiError(409, "conflict", text)
    if isinstance(exc, DidError):
        return ApiError(400, "invalid_did", text)
    return ApiError(400, exc.code, text)


# -- parsing what callers send -------------------------------------------------------------


MAX_ANCHORS = 500


def _int(query: Mapping[str, str], name: str, *, low: int, high: int | None = None) -> int | None:
    text = query.get(name)
    if text is None or text == "":
        return None
    if not re.fullmatch(r"-?[0-9]{1,19}", text):
        raise ApiError(400, "bad_parameter", f"{name} must be an integer, got {text[:40]!r}")
    value = int(text)
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ApiError(400, "bad_parameter", f"{name} must be {bounds}, got {value}")
    return value


async def _body(request: web.Request, members: Mapping[str, bool]) -> dict[str, Any]:
    """A JSON object with only ``members`` (name → required), strings checked for size."""
    if request.content_type != "application/json":
        raise ApiError(400, "bad_body", "send the body as application/json")
    try:
        value = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError):  # Recursion: deep nesting
        raise ApiError(400, "bad_body", "the body is not JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "bad_body", "the body must be a JSON object")
    unknown = sorted(set(value) - set(members))
    if unknown:
        raise ApiError(400, "bad_body", f"unknown members {unknown}; allowed: {sorted(members)}")
    missing = sorted(k for k, required in members.items() if required and k not in value)
    if missing:
        raise ApiError(400, "bad_body", f"missing members {missing}")
    return value


def _text(body: Mapping[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
        raise ApiError(400, "bad_body", f"{name} must be a non-empty string of at most {MAX_TEXT}")
    return value


def _texts(body: Mapping[str, Any], name: str) -> list[str]:
    value = body.get(name, [])
    if (
        not isinstance(value, list)
        or len(value) > MAX_LIST
        or not all(isinstance(v, str) and len(v) <= MAX_TEXT for v in value)
    ):
        raise ApiError(400, "bad_body", f"{name} must be a list of at most {MAX_LIST} strings")
    return value


def _metadata(body: Mapping[str, Any]) -> dict[str, str]:
    value = body.get("metadata", {})
    if (
        not isinstance(value, dict)
        or len(value) > MAX_LIST
        or not all(
            isinstance(v, str) and len(k) <= 64 and len(v) <= MAX_TEXT for k, v in value.items()
        )
    ):
        raise ApiError(
            400, "bad_body", f"metadata must be an object of at most {MAX_LIST} string values"
        )
    return value


def device_query(q: Mapping[str, str]) -> tuple[str, Cursor | None, DeviceFilter]:
    """The devices' sort, position and filter from ``q`` (``q``, ``status``, ``kind``,
    ``meta`` as key=value, ``sort``, ``after``): the API's and the console's."""
    sort = q.get("sort") or "registered"
    if sort not in SORTS:
        raise ApiError(400, "bad_parameter", f"sort must be one of {', '.join(SORTS)}")
    status_text = q.get("status")
    if status_text and status_text not in {s.value for s in Status}:
        raise ApiError(400, "bad_parameter", "status must be active, suspended or revoked")
    kind = q.get("kind") or None
    if kind is not None and kind not in KINDS:
        raise ApiError(400, "bad_parameter", f"kind must be one of {', '.join(KINDS)}")
    meta = None
    if q.get("meta"):
        try:
            meta = metadata_filter(q["meta"])
        except RegistryError as exc:
            raise ApiError(400, "bad_parameter", str(exc)) from None
    text = q.get("q", "")
    if len(text) > MAX_QUERY:
        raise ApiError(400, "bad_parameter", f"q must be at most {MAX_QUERY} characters")
    after = None
    if q.get("after"):
        try:
            after = Cursor.decode(q["after"], sort)
        except ValueError:
            raise ApiError(
                400, "bad_parameter", "after must be the 'next' cursor of a previous page"
            ) from None
    status = Status(status_text) if status_text else None
    return sort, after, DeviceFilter(query=text, status=status, kind=kind, metadata=meta)


# -- the routes --------------------------------------------------------------------------


def guarded(area: str, *, change: bool) -> Callable[[Work], Handler]:
    """Authenticated (401), allowed (403), then the work; every refusal as JSON."""

    def wrap(work: Work) -> Handler:
        @functools.wraps(work)
        async def handler(api: JsonApi, request: web.Request) -> web.StreamResponse:
            principal = HttpEdge.principal(request)
            if principal is None:
                return error_response(
                    401,
                    "unauthenticated",
                    "send an API token (Authorization: Bearer didgw_...) or sign in",
                    **{"WWW-Authenticate": 'Bearer realm="didgw"'},
                )
            decision = may(_caller(principal), area, change=change)
            if not decision:
                return error_response(
                    403, "forbidden", f"{principal.name} may not do this: {decision.reason}"
                )
            try:
                return await work(api, request, principal)
            except ApiError as exc:
                return error_response(exc.status, exc.code, exc.detail)
            except DidgwError as exc:
                refused = _refusal(exc)
                return error_response(refused.status, refused.code, refused.detail)
            except web.HTTPException:
                raise
            except Exception:
                log.exception("API %s %s failed", request.method, request.path)
                return error_response(500, "internal", "the gateway could not do this")

        return handler

    return wrap


class JsonApi:
    """The handlers: parse, call one :class:`ApiDesk` method on the desk thread, answer."""

    def __init__(self, edge: HttpEdge) -> None:
        self.edge = edge
        self.desk = ApiDesk(edge.config, edge.db, edge.gateway.did)
        self.document = OPENAPI.read_bytes()

    def routes(self) -> list[web.RouteDef]:
        def bound(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
            return functools.partial(handler, self)

        return [
            web.get("/api/openapi.json", self.openapi),
            web.get("/api/devices", bound(JsonApi.list_devices)),
            web.post("/api/devices", bound(JsonApi.register_device)),
            web.get("/api/devices/{did}", bound(JsonApi.show_device)),
            *[
                web.post(f"/api/devices/{{did}}/{action}", bound(_transition(action)))
                for action in DEVICE_ACTIONS
            ],
            web.get("/api/credentials", bound(JsonApi.list_credentials)),
            *[
                web.post(f"/api/credentials/{{id}}/{action}", bound(_credential_change(action)))
                for action in CREDENTIAL_ACTIONS
            ],
            web.get("/api/market/orders", bound(JsonApi.market_orders)),
            web.get("/api/market/trades", bound(JsonApi.market_trades)),
            web.get("/api/market/statements", bound(JsonApi.market_statements)),
            web.get("/api/chain/entries", bound(JsonApi.chain_entries)),
            web.get("/api/chain/entries/{seq}", bound(JsonApi.chain_entry)),
            web.get("/api/chain/entries/{seq}/proof", bound(JsonApi.chain_proof)),
            web.get("/api/chain/consistency", bound(JsonApi.chain_consistency)),
            web.get("/api/anchors", bound(JsonApi.anchors)),
            web.get("/api/anchors/status", bound(JsonApi.anchor_status)),
            web.get("/api/status", bound(JsonApi.status)),
        ]

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.document, content_type="application/json")

    # -- devices

    @guarded("devices", change=False)
    async def list_devices(self, request: web.Request, _: Principal) -> web.StreamResponse:
        q = request.query
        limit = _int(q, "limit", low=1, high=MAX_PAGE) or DEFAULT_PAGE
        sort, after, where = device_query(q)
        now = self.edge.now_ms()
        rows, cursor = await self.edge.desk(self.desk.devices, limit, sort, after, where, now)
        return _ok({"devices": [with_refusal(self.edge, r) for r in rows], "next": cursor})

    @guarded("devices", change=False)
    async def show_device(self, request: web.Request, _: Principal) -> web.StreamResponse:
        did, now = request.match_info["did"], self.edge.now_ms()
        return _ok(with_refusal(self.edge, await self.edge.desk(self.desk.device, did, now)))

    @guarded("devices", change=True)
    async def register_device(self, request: web.Request, who: Principal) -> web.StreamResponse:
        members = dict.fromkeys(("did", "name", "kind"), True) | dict.fromkeys(
            ("owner", "topics", "capabilities", "metadata", "reason"), False
        )
        body = await _body(request, members)
        fields = {
            "name": _text(body, "name"),
            "kind": _text(body, "kind"),
            "owner": _text(body, "owner", optional=True),
            "topics": _texts(body, "topics"),
            "capabilities": _texts(body, "capabilities"),
            "metadata": _metadata(body),
            "reason": _text(body, "reason", optional=True),
        }
        did = str(_text(body, "did"))
        device = await self.edge.desk(self.desk.change_device, who, "register", did, fields)
        return _ok(device.to_json(), 201)

    async def change_device(
        self, request: web.Request, who: Principal, action: str
    ) -> web.StreamResponse:
        members = {"reason": True} | ({"new_did": True} if action == "rotate" else {})
        body = await _body(request, members)
        fields = {k: _text(body, k) for k in members}
        did = request.match_info["did"]
        device = await self.edge.desk(self.desk.change_device, who, action, did, fields)
        return _ok(device.to_json())

    # -- credentials

    @guarded("credentials", change=False)
    async def list_credentials(self, request: web.Request, _: Principal) -> web.StreamResponse:
        return _ok({"credentials": await self.edge.desk(self.desk.credentials)})

    async def change_credential(
        self, request: web.Request, who: Principal, action: str
    ) -> web.StreamResponse:
        body = await _body(request, {"reason": True})
        reason = str(_text(body, "reason"))
        cred_id = request.match_info["id"]
        record = await self.edge.desk(
            self.desk.change_credential, action, cred_id, who.name, reason
        )
        return _ok(record.to_json())

    # -- the market

    async def _interval(self, request: web.Request, *, default_next: bool) -> int | None:
        text = request.query.get("interval")
        if text in (None, "") and not default_next:
            return None
        if text in (None, "", "next"):
            return await self.edge.desk(self.desk.next_interval, self.edge.now_ms())
        return _int(request.query, "interval", low=0)

    @guarded("market", change=False)
    async def market_orders(self, request: web.Request, who: Principal) -> web.StreamResponse:
        interval = int(await self._interval(request, default_next=True) or 0)
        scope = market_scope(_caller(who))
        orders = await self.edge.desk(self.desk.orders, interval)
        shown = [o for o in orders if sees(scope, [o["household"]])]
        return _ok({"interval": interval, "orders": shown})

    @guarded("market", change=False)
    async def market_trades(self, request: web.Request, who: Principal) -> web.StreamResponse:
        interval = await self._interval(request, default_next=False)
        scope = market_scope(_caller(who))
        trades = await self.edge.desk(self.desk.trades, interval)
        shown = [t for t in trades if sees(scope, [t["seller"], t["buyer"]])]
        return _ok({"trades": shown})

    @guarded("market", change=False)
    async def market_statements(self, request: web.Request, who: Principal) -> web.StreamResponse:
        household = request.query.get("household", "")
        if not household or len(household) > MAX_TEXT:
            raise ApiError(400, "bad_parameter", "give the household's DID as ?household=")
        if not sees(market_scope(_caller(who)), [household]):
            raise ApiError(403, "forbidden", f"{who.name} is not a member of {household}")
        interval = await self._interval(request, default_next=False)
        found = await self.edge.desk(self.desk.statements, household, interval)
        return _ok({"statements": found})

    # -- the record

    @guarded("chain", change=False)
    async def chain_entries(self, request: web.Request, _: Principal) -> web.StreamResponse:
        after = _int(request.query, "after", low=-1)
        limit = _int(request.query, "limit", low=1, high=MAX_PAGE) or DEFAULT_PAGE
        kind = request.query.get("kind", "")
        before = _int(request.query, "before", low=0)
        if kind or before is not None:  # newest first, as /console/record shows them
            if len(kind) > MAX_KIND or not (kind.replace("-", "").isalnum() or kind == ""):
                raise ApiError(400, "bad_parameter", "kind: letters, digits and '-' (64 at most)")
            if after is not None:
                raise ApiError(400, "bad_parameter", "give ?after= or ?kind=/?before=, not both")
            found, _kinds = await self.edge.desk(self.desk.newest, kind, before, limit)
            size = await self.edge.desk(self.desk.record_size)
            more = len(found) == limit and found[-1]["seq"] > 0
            return _ok({"entries": found, "size": size, "next": None,
                        "next_before": found[-1]["seq"] if more else None})  # fmt: skip
        entries, size = await self.edge.desk(self.desk.entries, after, limit)
        last = entries[-1]["seq"] if entries else None
        more = last is not None and last + 1 < size
        return _ok(
            {"entries": entries, "size": size, "next": last if more else None, "next_before": None}
        )

    @guarded("chain", change=False)
    async def chain_entry(self, request: web.Request, _: Principal) -> web.StreamResponse:
        return _ok(await self.edge.desk(self.desk.entry, _seq(request)))

    @guarded("chain", change=False)
    async def chain_proof(self, request: web.Request, _: Principal) -> web.StreamResponse:
        size = _int(request.query, "size", low=1)
        return _ok(await self.edge.desk(self.desk.inclusion, _seq(request), size))

    @guarded("chain", change=False)
    async def chain_consistency(self, request: web.Request, _: Principal) -> web.StreamResponse:
        first = _int(request.query, "first", low=1)
        second = _int(request.query, "second", low=1)
        if first is None or second is None:
            raise ApiError(400, "bad_parameter", "give ?first= and ?second= (tree sizes)")
        return _ok(await self.edge.desk(self.desk.consistency, first, second))

    # -- anchors and health

    @guarded("anchors", change=False)
    async def anchors(self, request: web.Request, _: Principal) -> web.StreamResponse:
        limit = _int(request.query, "limit", low=1, high=MAX_ANCHORS) or 20
        return _ok({"anchors": await self.edge.desk(self.desk.anchors, limit)})

    @guarded("anchors", change=False)
    async def anchor_status(self, request: web.Request, _: Principal) -> web.StreamResponse:
        return _ok(await self.edge.desk(self.desk.anchor_status))

    @guarded("status", change=False)
    async def status(self, request: web.Request, _: Principal) -> web.StreamResponse:
        status = await self.edge.desk(self.desk.status)
        if self.edge.live_counts is not None:
            status["live"] = self.edge.live_counts()
        return _ok(status)


def with_refusal(edge: HttpEdge, device: dict[str, Any]) -> dict[str, Any]:
    """``device`` with ``last_refusal``: the last refusal it earned since ``didgw run``
    started (``{"reason", "time"}``; kept in memory, ``auth/refusals.py``), else None."""
    book = edge.device_refusals
    refusal = book.last(device["did"]) if book is not None else None
    shown = (
        None if refusal is None else {"reason": refusal.reason, "time": iso(refusal.ts_ms / 1000)}
    )
    return {**device, "last_refusal": shown}


def _transition(action: str) -> Handler:
    @guarded("devices", change=True)
    async def change(api: JsonApi, request: web.Request, who: Principal) -> web.StreamResponse:
        return await api.change_device(request, who, action)

    return change


def _credential_change(action: str) -> Handler:
    @guarded("credentials", change=True)
    async def change(api: JsonApi, request: web.Request, who: Principal) -> web.StreamResponse:
        return await api.change_credential(request, who, action)

    return change


def _seq(request: web.Request) -> int:
    return int(_int({"seq": request.match_info["seq"]}, "seq", low=0) or 0)


def _caller(principal: Principal) -> Caller:
    return Caller(principal.name, principal.permissions, principal.scope)


def add_routes(edge: HttpEdge) -> None:
    """The API's routes, and API tokens as a way in (``edge.token_auth``)."""
    api = JsonApi(edge)
    edge.token_auth = api.desk.token_auth
    edge.add(api.routes())

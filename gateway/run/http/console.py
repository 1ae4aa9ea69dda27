"""The facility manager's console: the table of devices and each device's page.

Server-rendered and without script: the table is a GET form (search, filters, sort) and
plain links (the next page is a cursor, :class:`~gateway.registry.table.Cursor`); each
change (suspend, resume, revoke, rotate) is a confirmation page whose form posts with the
session's anti-CSRF token. The data come from the same desk as the JSON API
(:class:`~gateway.run.http.api_desk.ApiDesk`: ``/api/devices`` is this table as JSON), and
a change goes through the same :meth:`ApiDesk.change_device`, so it is on the record with
who made it (a ``person-action`` entry with her sign-in's presentation digests).

Only a signed-in facility manager gets in; anyone else gets 403 and a page that says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from gateway.errors import DidgwError
from gateway.registry import KINDS, Status
from gateway.registry.table import SORTS
from gateway.run.http.api import DEVICE_ACTIONS, MAX_TEXT, ApiError, device_query, with_refusal
from gateway.run.http.api_desk import ApiDesk, iso
from gateway.run.http.pages import render
from gateway.run.http.server import HttpEdge, Principal
from gateway.transports import web

PAGE_ROWS = 50
#: What each refusal a device can earn (``auth/refusals.py`` ``EARNED``) means, in plain
#: words for the table and the device's page (translated there; the code stays shown, for
#: support). ``tests/unit/test_i18n.py`` wants one for every earned reason.
REFUSAL_WORDS = {
    "not_active": "the device is suspended or revoked here",
    "replay": "a message it had sent already came again",
    "clock_skew": "its clock is too far from the gateway's",
    "storage_full": "the gateway's disk was full",
    "unavailable": "the gateway could not check it just then",
}
_FILTERS = ("q", "status", "kind", "meta", "sort")


def device_path(did: str, action: str = "") -> str:
    """The console's address of a device (its DID percent-encoded as one path segment)."""
    return f"/console/devices/{quote(did, safe='')}" + (f"/{action}" if action else "")


class Console:
    """The console's handlers over one :class:`ApiDesk` on the edge's desk thread."""

    def __init__(self, edge: HttpEdge) -> None:
        self.edge = edge
        self.desk = ApiDesk(edge.config, edge.db, edge.gateway.did)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/console/devices", self.devices),
            web.get("/console/devices/{did}", self.device),
            web.get("/console/devices/{did}/{action}", self.confirm),
            web.post("/console/devices/{did}/{action}", self.change),
        ]

    def _refused(self, request: web.Request) -> web.Response | None:
        """None for a signed-in facility manager, else the 403 page that says why."""
        found = _manager(request)
        return None if isinstance(found, Principal) else found

    async def devices(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        chosen = {k: request.query.get(k, "") for k in _FILTERS}
        context: dict[str, Any] = {
            "chosen": chosen,
            "statuses": [s.value for s in Status],
            "kinds": KINDS,
            "sorts": SORTS,
            "rows": [],
            "next_page": None,
            "first_page": None,
            "problem": None,
        }
        try:
            sort, after, where = device_query(request.query)
        except ApiError as exc:
            context["problem"] = exc.detail
            return render(request, "console_devices.html", status=400, title="Devices", **context)
        now = self.edge.now_ms()
        rows, cursor = await self.edge.desk(self.desk.devices, PAGE_ROWS, sort, after, where, now)
        kept = {k: v for k, v in chosen.items() if v}
        context["rows"] = [self._row(r) for r in rows]
        if cursor is not None:
            context["next_page"] = "/console/devices?" + urlencode({**kept, "after": cursor})
        if after is not None:
            context["first_page"] = "/console/devices" + ("?" + urlencode(kept) if kept else "")
        return render(request, "console_devices.html", title="Devices", **context)

    def _row(self, row: dict[str, Any]) -> dict[str, Any]:
        refusal = with_refusal(self.edge, row)["last_refusal"]
        return {
            **row,
            "href": device_path(row["did"]),
            "seen": _short(row["last_seen"]),
            "refusal": None if refusal is None else refusal["reason"],
            "refusal_words": None if refusal is None else REFUSAL_WORDS.get(refusal["reason"]),
            "refused_at": None if refusal is None else _short(refusal["time"]),
        }

    async def device(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        did = request.match_info["did"]
        try:
            shown = await self.edge.desk(self.desk.device, did, self.edge.now_ms())
        except DidgwError:
            return render(request, "console_missing.html", status=404, title="No such device")
        done = request.query.get("done")
        return render(
            request,
            "console_device.html",
            title="Device",
            device=self._row(shown),
            history=[{**h, "when": _short(iso(h["ts"]))} for h in shown["history"]],
            readings=[{**r, "when": _short(r["time"])} for r in shown["recent_readings"]],
            actions=_actions(shown["status"]),
            done=done if done in DEVICE_ACTIONS else None,
            path=device_path(did),
        )

    async def confirm(self, request: web.Request) -> web.Response:
        return await self._confirmation(request, {})

    async def _confirmation(
        self, request: web.Request, form: Mapping[str, str], problem: str | None = None,
        status: int = 200,
    ) -> web.Response:  # fmt: skip
        if (refused := self._refused(request)) is not None:
            return refused
        did, action = request.match_info["did"], request.match_info["action"]
        if action not in DEVICE_ACTIONS:
            raise web.HTTPNotFound()
        try:
            shown = await self.edge.desk(self.desk.device, did, self.edge.now_ms())
        except DidgwError:
            return render(request, "console_missing.html", status=404, title="No such device")
        return render(
            request,
            "console_confirm.html",
            status=status,
            title="Confirm",
            device=shown,
            action=action,
            form=form,
            problem=problem,
            path=device_path(did),
        )

    async def change(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        did, action = request.match_info["did"], request.match_info["action"]
        if action not in DEVICE_ACTIONS:
            raise web.HTTPNotFound()
        posted = await request.post()
        form = {k: str(posted.get(k, "")).strip() for k in ("reason", "new_did")}
        wanted = ("reason", "new_did") if action == "rotate" else ("reason",)
        if any(not form[k] or len(form[k]) > MAX_TEXT for k in wanted):
            return await self._confirmation(request, form, "missing", 400)
        principal = _manager(request)
        if not isinstance(principal, Principal):
            return principal
        fields = {k: form[k] for k in wanted}
        try:
            await self.edge.desk(self.desk.change_device, principal, action, did, fields)
        except DidgwError as exc:
            return await self._confirmation(request, form, str(exc), 409)
        raise web.HTTPSeeOther(device_path(did) + f"?done={action}")


def _manager(request: web.Request) -> Principal | web.Response:
    """The signed-in facility manager asking, else the 403 page that says why."""
    principal = HttpEdge.principal(request)
    if principal is None or principal.session is None:
        why = "signed_out"
    elif not principal.permissions.may_manage_devices():
        why = "not_manager"
    else:
        return principal
    return render(request, "console_refused.html", status=403, title="Not allowed", why=why)


def _actions(status: str) -> list[str]:
    """The changes a device of ``status`` can take (none for a revoked one)."""
    if status == Status.ACTIVE.value:
        return ["suspend", "revoke", "rotate"]
    if status == Status.SUSPENDED.value:
        return ["resume", "revoke", "rotate"]
    return []


def _short(stamp: str | None) -> str | None:
    """``2026-12-05T10:51:00Z`` as ``2026-12-05 10:51:00``: a time people read (UTC)."""
    return None if stamp is None else stamp.replace("T", " ").removesuffix("Z")


def add_routes(edge: HttpEdge) -> None:
    """The console's pages."""
    edge.add(Console(edge).routes())

"""A household's energy at the front door: ``/energy`` (now and history), its live stream,
and the same as JSON under ``/api/energy/``.

* ``GET /energy?household=&by=&date=``: the page. *Now*: import and export power, today's
  kWh in and out, each meter's link; *History*: import and export per hour of a day, day of
  a month or month of a year (``by`` = hour, day, month) with cost and income at the
  ``[market]`` prices, as a chart drawn here (SVG, ``energy_chart.py``) and a table. A
  static page without JavaScript; with it, ``static/energy.js`` keeps *Now* live.
* ``GET /energy/stream?household=``: *Now* as server-sent events (``event: now``, the
  JSON of ``/api/energy/now``), a new one as each reading is recorded; ``event: end``
  when the session ends. One stream per session (a newer one ends the older), at most
  :data:`MAX_STREAMS` in all; each is checked against its session as
  :mod:`gateway.run.http.sse` does for every stream, so a revoked or suspended
  credential ends it within a second.
* ``GET /api/energy/now?household=``, ``GET /api/energy/history?household=&by=&date=``.

Who sees what: a signed-in member of the household (her session's permissions name it),
or an API token whose role may read the ``energy`` area; anyone else is refused (403).
The figures come from :mod:`gateway.energy.history` on the desk thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from datetime import UTC, date, datetime, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlite_utils import Database

from gateway.auth.api_access import Caller, market_scope, may, sees
from gateway.auth.web_sessions import WebSessions
from gateway.config import Config
from gateway.energy import history as energy
from gateway.run.http.api import error_response
from gateway.run.http.energy_chart import chart
from gateway.run.http.pages import render, words
from gateway.run.http.server import HttpEdge, Principal
from gateway.run.http.sse import Stream, StreamBook
from gateway.transports import web

log = logging.getLogger(__name__)

MAX_STREAMS = 256
MAX_DID = 512
PAGE = 100  # readings a page of /energy/readings lists


def local_zone(env: Mapping[str, str]) -> tzinfo:
    """The time zone days and months are counted in: ``TZ`` if set and known, else the
    machine's (``/etc/localtime``), else UTC."""
    name = env.get("TZ", "").lstrip(":")
    if name:
        with contextlib.suppress(ZoneInfoNotFoundError, ValueError, OSError):
            return ZoneInfo(name)
    with contextlib.suppress(OSError, ValueError), Path("/etc/localtime").open("rb") as f:
        return ZoneInfo.from_file(f)
    return UTC


class EnergyDesk:
    """The database side (desk thread only)."""

    def __init__(self, config: Config, db: Database, sessions: WebSessions, tz: tzinfo) -> None:
        self.db, self.sessions, self.tz = db, sessions, tz
        self.retail, self.feed_in = config.market.retail_price, config.market.feed_in_price

    def now(self, household: str, now_ms: int, links: Mapping[str, str]) -> dict[str, Any]:
        dids = energy.household_meters(self.db, household)
        start, end = energy.today_bounds(now_ms, self.tz)
        [(imp, exp)] = energy.energy_between(self.db, dids, [start, end]) or [(0, 0)]
        found = [energy.meter_now(self.db, d) for d in dids]
        known_in = [m.import_w for m in found if m.import_w is not None]
        known_out = [m.export_w for m in found if m.export_w is not None]
        readings = [m.reading_ms for m in found if m.reading_ms is not None]
        return {
            "household": household,
            "at": now_ms,
            "import_w": sum(known_in) if known_in else None,
            "export_w": sum(known_out) if known_out else None,
            "last_reading": max(readings) if readings else None,
            "today": {
                "start": start,
                "import_wh": imp,
                "export_wh": exp,
                "cost_micro_eur": imp * self.retail,
                "income_micro_eur": exp * self.feed_in,
            },
            "meters": [
                {
                    "did": m.did,
                    "link": links.get(m.did, "not_read"),
                    "last_reading": m.reading_ms,
                    "import_w": m.import_w,
                    "export_w": m.export_w,
                    "entry": m.entry,
                }
                for m in found
            ],
        }

    def history(self, household: str, by: str, day: date) -> energy.History:
        return energy.history(
            self.db,
            household,
            by,
            day,
            self.tz,
            retail_price=self.retail,
            feed_in_price=self.feed_in,
        )

    def latest_seqs(self, households: list[str]) -> dict[str, dict[str, int]]:
        """Each household's meters' latest seqs."""
        return {
            h: energy.latest_seqs(self.db, energy.household_meters(self.db, h)) for h in households
        }


class EnergyDoor:
    """The routes; the live streams and the one task that watches for them."""

    def __init__(self, edge: HttpEdge) -> None:
        self.edge = edge
        self.tz = local_zone(edge.env)
        self.desk = EnergyDesk(edge.config, edge.db, edge.sessions, self.tz)
        #: one stream per session (a newer one ends the older), at most MAX_STREAMS in all
        self.streams = StreamBook(
            edge, total=MAX_STREAMS, per_session=1, replace=True, tick=self._tick, name="energy"
        )
        self._seen: dict[str, dict[str, int]] = {}  # household -> its meters' latest seqs

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/energy", self.page),
            web.get("/energy/stream", self.stream),
            web.get("/api/energy/now", self.api_now),
            web.get("/api/energy/history", self.api_history),
            web.get("/energy/readings", self.readings_page),
            web.get("/api/energy/readings", self.api_readings),
        ]

    def links(self) -> dict[str, str]:
        return {did: ("up" if up() else "down") for did, up in self.edge.meter_links.items()}

    # -- who may see which household

    @staticmethod
    def _households(principal: Principal) -> list[str]:
        return sorted(principal.permissions.households)

    @staticmethod
    def _may_see(principal: Principal, household: str) -> bool:
        caller = Caller(principal.name, principal.permissions, principal.scope)
        return bool(may(caller, "energy", change=False)) and sees(market_scope(caller), [household])

    # -- the page

    async def page(self, request: web.Request) -> web.StreamResponse:
        principal = HttpEdge.principal(request)
        if principal is None or principal.session is None:
            raise web.HTTPSeeOther("/login")
        mine = self._households(principal)
        if not mine:
            return render(request, "energy_none.html", title="My energy", status=403)
        household = request.query.get("household") or mine[0]
        if household not in mine:
            return render(request, "energy_none.html", title="My energy", status=403)
        try:
            by, day = _view(request.query, self._today())
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        now_ms = self.edge.now_ms()
        now = await self.edge.desk(self.desk.now, household, now_ms, self.links())
        past = await self.edge.desk(self.desk.history, household, by, day)
        return render(
            request,
            "energy.html",
            title="My energy",
            households=mine,
            home=household,
            now=_shown_now(now, now_ms, self.tz),
            now_json=json.dumps(now, separators=(",", ":")),
            by=by,
            day=day.isoformat(),
            views=_views(household, by, day),
            history=_shown_history(past),
            chart=chart(past),
        )

    # -- the live stream

    async def stream(self, request: web.Request) -> web.StreamResponse:
        principal = HttpEdge.principal(request)
        if principal is None or principal.session is None:
            raise web.HTTPUnauthorized(text=words(request)("sign in first") + "\n")
        household = request.query.get("household", "")
        if household not in principal.permissions.households:
            _ = words(request)
            raise web.HTTPForbidden(
                text=_("you are not a member of {household}", household=household[:MAX_DID]) + "\n"
            )
        me = self.streams.open(request, principal.session.csrf, household)
        try:
            first = await self.edge.desk(self.desk.now, household, self.edge.now_ms(), self.links())
        except BaseException:
            self.streams.close(me)
            raise
        return await self.streams.serve(request, me, first, "now")

    async def _tick(self, streams: list[Stream]) -> None:
        """Send each household's *Now* to its streams when a new reading of hers is on the
        record."""
        households = sorted({s.topic for s in streams})
        seqs = await self.edge.desk(self.desk.latest_seqs, households)
        now_ms, links = self.edge.now_ms(), self.links()
        for h in households:
            if seqs[h] != self._seen.get(h):
                fresh = h in self._seen
                self._seen[h] = seqs[h]
                if not fresh:
                    continue  # each stream began with the figures of its opening
                now = await self.edge.desk(self.desk.now, h, now_ms, links)
                for s in streams:
                    if s.topic == h:
                        s.push(now)
        if not self.streams.streams:
            self._seen.clear()

    # -- the JSON API

    async def _api_household(self, request: web.Request) -> tuple[str, web.Response | None]:
        principal = HttpEdge.principal(request)
        if principal is None:
            return "", error_response(
                401,
                "unauthenticated",
                "send an API token (Authorization: Bearer didgw_...) or sign in",
                **{"WWW-Authenticate": 'Bearer realm="didgw"'},
            )
        household = request.query.get("household", "")
        if not household or len(household) > MAX_DID:
            return "", error_response(
                400, "bad_parameter", "give the household's DID as ?household="
            )
        if not self._may_see(principal, household):
            return "", error_response(
                403, "forbidden", f"{principal.name} may not see the energy of {household}"
            )
        return household, None

    async def api_now(self, request: web.Request) -> web.Response:
        household, refused = await self._api_household(request)
        if refused is not None:
            return refused
        now = await self.edge.desk(self.desk.now, household, self.edge.now_ms(), self.links())
        return web.json_response(now)

    async def api_history(self, request: web.Request) -> web.Response:
        household, refused = await self._api_household(request)
        if refused is not None:
            return refused
        try:
            by, day = _view(request.query, self._today())
        except ValueError as exc:
            return error_response(400, "bad_parameter", str(exc))
        past = await self.edge.desk(self.desk.history, household, by, day)
        return web.json_response(
            {
                "household": household,
                "by": past.by,
                "first": past.first.isoformat(),
                "time_zone": str(self.tz),
                "retail_price": self.desk.retail,
                "feed_in_price": self.desk.feed_in,
                "totals": {
                    "import_wh": past.import_wh,
                    "export_wh": past.export_wh,
                    "cost_micro_eur": past.cost_ueur,
                    "income_micro_eur": past.income_ueur,
                },
                "periods": [p.to_json() for p in past.periods],
            }
        )

    def _today(self) -> date:
        return datetime.fromtimestamp(self.edge.now_ms() / 1000, self.tz).date()

    # -- every reading, with its receipt

    async def readings_page(self, request: web.Request) -> web.StreamResponse:
        principal = HttpEdge.principal(request)
        if principal is None or principal.session is None:
            raise web.HTTPSeeOther("/login")
        mine = self._households(principal)
        household = request.query.get("household") or (mine[0] if mine else "")
        if household not in mine:
            return render(request, "energy_none.html", title="My readings", status=403)
        before = _before(request.query)
        found = await self.edge.desk(
            lambda: energy.readings(self.desk.db, household, before_ms=before, limit=PAGE)
        )
        older = (
            "/energy/readings?" + urlencode({"household": household, "before": found[-1]["ts"]})
            if len(found) == PAGE
            else None
        )
        shown = [
            {
                **r,
                "when": datetime.fromtimestamp(int(r["ts"]) / 1000, self.tz).strftime(
                    "%Y-%m-%d %H:%M:%S"
                ),
                "import_kwh": f"{int(r['import_wh']) / 1000:.3f}",
                "export_kwh": f"{int(r['export_wh']) / 1000:.3f}",
                "meter_short": str(r["meter"])[-10:],
            }
            for r in found
        ]
        return render(
            request, "energy_readings.html", title="My readings", home=household,
            households=mine, readings=shown, older=older,
        )  # fmt: skip

    async def api_readings(self, request: web.Request) -> web.Response:
        household, refused = await self._api_household(request)
        if refused is not None:
            return refused
        before = _before(request.query)
        found = await self.edge.desk(
            lambda: energy.readings(self.desk.db, household, before_ms=before, limit=PAGE)
        )
        return web.json_response(
            {
                "household": household,
                "readings": found,
                "next_before": found[-1]["ts"] if len(found) == PAGE else None,
            }
        )


def _before(query: Mapping[str, str]) -> int | None:
    text = query.get("before", "")
    return int(text) if text.isdigit() and len(text) <= 15 else None


def _view(query: Mapping[str, str], today: date) -> tuple[str, date]:
    by = query.get("by") or "hour"
    if by not in energy.PERIODS:
        raise ValueError(f"by: one of {', '.join(energy.PERIODS)}, not {by[:16]!r}")
    text = query.get("date") or ""
    if not text:
        return by, today
    try:
        day = date.fromisoformat(text[:10]) if len(text) <= 10 else None
    except ValueError:
        day = None
    if day is None or not 2000 <= day.year <= 2999:
        raise ValueError(f"date: a day as YYYY-MM-DD (2000 to 2999), not {text[:16]!r}")
    return by, day


# -- what the page shows (numbers as text; the words are the template's) -----------------


def kw(watts: int | None) -> str:
    return "-" if watts is None else f"{watts / 1000:.2f}"


def kwh(wh: int) -> str:
    return f"{wh / 1000:.2f}"


def eur(ueur: int) -> str:
    return f"{ueur / 1_000_000:.2f}"


def _shown_now(now: Mapping[str, Any], now_ms: int, tz: tzinfo) -> dict[str, Any]:
    today = now["today"]
    last = now["last_reading"]
    return {
        "import_kw": kw(now["import_w"]),
        "export_kw": kw(now["export_w"]),
        "today_in": kwh(today["import_wh"]),
        "today_out": kwh(today["export_wh"]),
        "cost": eur(today["cost_micro_eur"]),
        "income": eur(today["income_micro_eur"]),
        "last": None if last is None else _clock(last, tz),
        "meters": [
            {
                **m,
                "short": m["did"][-8:],
                "last": None if m["last_reading"] is None else _clock(m["last_reading"], tz),
            }
            for m in now["meters"]
        ],
    }


def _clock(ms: int, tz: tzinfo) -> str:
    return datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M:%S")


def _shown_history(past: energy.History) -> dict[str, Any]:
    return {
        "rows": [
            {
                "label": p.label[5:] if past.by == "day" else p.label,  # the month is above
                "in": kwh(p.import_wh),
                "out": kwh(p.export_wh),
                "cost": eur(p.cost_ueur),
                "income": eur(p.income_ueur),
            }
            for p in past.periods
        ],
        "in": kwh(past.import_wh),
        "out": kwh(past.export_wh),
        "cost": eur(past.cost_ueur),
        "income": eur(past.income_ueur),
    }


def _views(household: str, by: str, day: date) -> dict[str, str]:
    """Links: the three views of ``day``, and the span before and after this one."""

    def link(b: str, d: date) -> str:
        return "/energy?" + urlencode({"household": household, "by": b, "date": d.isoformat()})

    first, _ = energy.span(by, day, UTC)
    if by == "hour":
        before, after = date.fromordinal(day.toordinal() - 1), date.fromordinal(day.toordinal() + 1)
    elif by == "day":
        before = date.fromordinal(first.toordinal() - 1).replace(day=1)
        after = energy.span("day", date.fromordinal(first.toordinal() + 31), UTC)[0]
    else:
        before, after = date(first.year - 1, 1, 1), date(first.year + 1, 1, 1)
    return {
        "hour": link("hour", day),
        "day": link("day", day),
        "month": link("month", day),
        "before": link(by, before),
        "after": link(by, after),
    }


def add_routes(edge: HttpEdge) -> None:
    door = EnergyDoor(edge)
    edge.add(door.routes())

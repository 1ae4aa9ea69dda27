"""A household's market at the front door: place an order signed with her passkey, see her
orders, trades and statements, and take the receipt of each.

* ``GET /market?household=``: the page. An order is chosen from the coming intervals (in
  the gateway's local time), a quantity in kWh and a price in € per kWh; her orders with
  what became of them, her trades (the other side shown only by its household DID) and
  her statements with their breakdown, each with its receipt (``/proof/receipt/SEQ``).
* ``POST /market/orders/prepare`` (JSON: household, side, interval, kwh, price): the
  order's text and the WebAuthn options that sign it (challenge = its SHA-256, one of her
  bound passkeys, user verification required). One order waits per session.
* ``POST /market/orders`` (JSON: challenge, credential): the assertion is checked against
  her passkey (``gateway/auth/passkeys.py``), the credentials behind it re-checked, and
  the order goes to the market (``didgw run``'s market thread) as a ``passkey-order``
  entry with her ``person-action``: ``{"status": "accepted", "seq", "entry"}`` or
  ``{"status": "refused", "reason", "message"}``.
* ``GET /api/market/mine?household=``: the page's lists as JSON.

Why a passkey and how the record proves it: ``gateway/market/passkey_orders.py``.
``static/market.js`` does the signing; without JavaScript the lists still show, and the
form says that signing needs it.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway.auth import person_requests as requests
from gateway.auth.passkey_store import Passkey, PasskeyStore
from gateway.auth.passkeys import (
    CHALLENGE_MS,
    Ceremonies,
    PasskeyRefused,
    RelyingParty,
    b64u,
    credential_id_hash,
)
from gateway.auth.web_sessions import WebSession
from gateway.chain.store import NewEntry
from gateway.market import passkey_orders
from gateway.market.household_view import HouseholdMarket, household_market, next_seq
from gateway.market.orders import ORDER_REASONS, OrderRefused
from gateway.market.service import MarketSettings
from gateway.run.http.energy import eur, local_zone
from gateway.run.http.pages import render, words
from gateway.run.http.server import HttpEdge, Principal
from gateway.service import market_settings
from gateway.transports import web

log = logging.getLogger(__name__)

MAX_PENDING = 256
SHOWN = 50
MAX_INTERVALS_SHOWN = 96

#: What a person reads for each refusal (translated on the page); the reason stays visible.
REFUSALS = {
    "malformed": "The order could not be read.",
    "bad_signature": "The signature does not match the order.",
    "unknown_household": "This household is not registered here.",
    "not_active": "This household is suspended or revoked.",
    "not_household": "This DID is not a household.",
    "no_meter": "The household has no active meter, so it cannot trade.",
    "interval_closed": "That interval has started; choose a later one.",
    "interval_too_far": "That interval is too far ahead.",
    "bad_quantity": "The quantity is out of range.",
    "bad_price": "The price is out of range.",
    "no_export_capacity": "More than your meter has ever shown it can feed in per interval.",
    "replay": "This order was placed already.",
    "unavailable": "The market cannot take orders right now; try again.",
    "not_member": "You are not a member of this household.",
    "wrong_role": "Your credential does not allow this side (seller or buyer).",
    "market_off": "The market is off on this gateway.",
    "no_passkey": "Add a passkey first: it signs your orders.",
    "unknown_challenge": "This order is unknown or was placed already; start again.",
    "expired_challenge": "This order waited too long; start again.",
    "bad_passkey": "Your passkey did not sign this order.",
    "busy": "Too many orders are waiting to be signed; try again in a minute.",
    "revoked": "The credential behind your passkey was revoked.",
    "suspended": "The credential behind your passkey is suspended.",
    "expired": "The credential behind your passkey has expired.",
    "no_credential": "No credential of this gateway is behind your passkey.",
    "not_signed_in": "Sign in first.",
}
assert set(ORDER_REASONS) <= set(REFUSALS)  # noqa: S101 - a new reason needs its words


class Refused(Exception):
    def __init__(self, reason: str, status: int = 403) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


@dataclass(frozen=True)
class _Pending:
    text: str
    session: str  # the session's CSRF token: only the page that asked may finish
    household: str
    seq: int
    credential_ids: tuple[str, ...]
    expires_ms: int


def parse_amount(text: Any, *, scale: int, what: str) -> int:
    """``text`` (a decimal, "." or "," as the separator) times ``scale``, exactly."""
    if not isinstance(text, str) or not 0 < len(text) <= 16:
        raise Refused("bad_quantity" if what == "kwh" else "bad_price", 400)
    try:
        value = Decimal(text.strip().replace(",", "."))
    except InvalidOperation:
        raise Refused("bad_quantity" if what == "kwh" else "bad_price", 400) from None
    scaled = value * scale
    if not value.is_finite() or scaled != scaled.to_integral_value():
        raise Refused("bad_quantity" if what == "kwh" else "bad_price", 400)
    return int(scaled)


DASH = "\N{EN DASH}"


def intervals(now_ms: int, settings: MarketSettings, tz: tzinfo) -> list[tuple[int, str, str]]:
    """The intervals an order may name now: (start, day, hours) with day "" for today,
    "tomorrow" or the date (the page translates "tomorrow")."""
    step, clock = settings.interval_ms, _clock(settings)
    first = now_ms - now_ms % step + step
    today = datetime.fromtimestamp(now_ms / 1000, tz).date()
    shown = []
    for n in range(min(settings.max_ahead, MAX_INTERVALS_SHOWN)):
        start = first + n * step
        a = datetime.fromtimestamp(start / 1000, tz)
        b = datetime.fromtimestamp((start + step) / 1000, tz)
        if a.date() == today:
            day = ""
        elif a.date() == today + timedelta(days=1):
            day = "tomorrow"
        else:
            day = a.date().isoformat()
        shown.append((start, day, f"{a.strftime(clock)}{DASH}{b.strftime(clock)}"))
    return shown


class MarketDoor:
    def __init__(self, edge: HttpEdge) -> None:
        self.edge = edge
        self.settings = market_settings(edge.config)
        self.tz = local_zone(edge.env)
        self.pending: dict[bytes, _Pending] = {}
        self.ceremonies: Ceremonies | None = None
        try:
            rp = RelyingParty.from_url(edge.base_url)
        except ValueError:  # passkeys are off (an IP address): the page says so
            pass
        else:
            self.ceremonies = Ceremonies(rp, max_pending_logins=1, random_bytes=secrets.token_bytes)
        self._store: PasskeyStore | None = None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/market", self.page),
            web.post("/market", self.without_script),
            web.post("/market/orders/prepare", self.prepare),
            web.post("/market/orders", self.place),
            web.get("/api/market/mine", self.api_mine),
        ]

    def store(self) -> PasskeyStore:
        """On the desk thread only."""
        if self._store is None:
            self._store = PasskeyStore(self.edge.db)
        return self._store

    @property
    def market(self) -> Any:
        """``didgw run``'s market (``run/energy.py`` MarketSide), or None when it is off."""
        return self.edge.market

    # -- the page -------------------------------------------------------------------------

    def _household(self, request: web.Request, principal: Principal, given: str) -> str:
        mine = sorted(principal.permissions.households)
        if not mine:
            raise Refused("not_member")
        household = given or mine[0]
        if household not in mine:
            raise Refused("not_member")
        return household

    def _lists(self, household: str) -> HouseholdMarket:
        return household_market(self.edge.db.conn, household, limit=SHOWN)

    async def page(self, request: web.Request) -> web.StreamResponse:
        return await self._page(request, status=200)

    async def without_script(self, request: web.Request) -> web.StreamResponse:
        return await self._page(request, status=400, problem="script")

    async def _page(
        self, request: web.Request, *, status: int, problem: str = ""
    ) -> web.StreamResponse:
        principal = HttpEdge.principal(request)
        if principal is None or principal.session is None:
            raise web.HTTPSeeOther("/login")
        session = principal.session
        try:
            household = self._household(request, principal, request.query.get("household", ""))
        except Refused:
            return render(request, "energy_none.html", title="Market", status=403)
        lists = await self.edge.desk(self._lists, household)
        keys: list[Passkey] = await self.edge.desk(lambda: self.store().of(session.did))
        roles = principal.permissions.households.get(household, frozenset())
        now_ms = self.edge.now_ms()
        placed = request.query.get("placed", "")
        return render(
            request,
            "market.html",
            title="Market",
            status=status,
            households=sorted(principal.permissions.households),
            home=household,
            market_on=self.market is not None,
            passkeys_on=self.ceremonies is not None,
            may_sign=any(k.bound_entry is not None for k in keys),
            sides=[s for s, role in (("sell", "seller"), ("buy", "buyer")) if role in roles],
            intervals=intervals(now_ms, self.settings, self.tz),
            retail=eur_per_kwh(self.settings.retail),
            feed_in=eur_per_kwh(self.settings.feed_in),
            max_kwh=kwh3(self.settings.max_wh),
            orders=[self._order_view(o) for o in lists.orders],
            trades=[self._trade_view(t) for t in lists.trades],
            statements=[self._statement_view(s) for s in lists.statements],
            placed=placed if placed.isdigit() else "",
            problem=problem,
        )

    def _when(self, interval: int) -> str:
        a = datetime.fromtimestamp(interval / 1000, self.tz)
        b = datetime.fromtimestamp((interval + self.settings.interval_ms) / 1000, self.tz)
        clock = _clock(self.settings)
        return f"{a:%Y-%m-%d} {a.strftime(clock)}{DASH}{b.strftime(clock)}"

    def _order_view(self, o: dict[str, Any]) -> dict[str, Any]:
        return {
            **o,
            "when": self._when(o["interval"]),
            "kwh": kwh3(o["wh"]),
            "price_eur": eur_per_kwh(o["price"]),
            "matched_kwh": kwh3(o["matched_wh"]),
        }

    def _trade_view(self, t: dict[str, Any]) -> dict[str, Any]:
        return {
            **t,
            "when": self._when(t["interval"]),
            "kwh": kwh3(t["wh"]),
            "price_eur": eur_per_kwh(t["price"]),
            "amount": eur(t["amount_micro_eur"]),
        }

    def _statement_view(self, s: dict[str, Any]) -> dict[str, Any]:
        money = ("market", "shortfall", "feed_in", "grid_import", "unused", "net")
        energy = ("sold_wh", "bought_wh", "import_wh", "export_wh")
        return {
            **s,
            "when": self._when(s["interval"]),
            **{f"{k}_eur": eur(s[k]) for k in money},
            **{f"{k[:-3]}_kwh": kwh3(s[k]) for k in energy},
        }

    async def api_mine(self, request: web.Request) -> web.StreamResponse:
        principal = HttpEdge.principal(request)
        if principal is None or principal.session is None:
            return _answer("not_signed_in", 401)
        try:
            household = self._household(request, principal, request.query.get("household", ""))
        except Refused as exc:
            return _answer(exc.reason, exc.status)
        lists = await self.edge.desk(self._lists, household)
        return web.json_response({"household": household, **lists.to_json()})

    # -- placing an order -------------------------------------------------------------------

    async def prepare(self, request: web.Request) -> web.Response:
        try:
            session, principal = _session(request)
            body = await _json(request)
            if self.market is None:
                raise Refused("market_off", 503)
            ceremonies = self._ceremonies()
            household = self._household(request, principal, _text(body.get("household")))
            side = body.get("side")
            if side not in ("sell", "buy"):
                raise Refused("malformed", 400)
            decision = principal.permissions.may_trade_for(household, side)
            if not decision:
                raise Refused("wrong_role" if decision.reason == "wrong_role" else "not_member")
            interval = body.get("interval")
            if type(interval) is not int:
                raise Refused("malformed", 400)
            now_ms = self.edge.now_ms()
            if interval not in {i[0] for i in intervals(now_ms, self.settings, self.tz)}:
                raise Refused("interval_closed", 400)
            wh = parse_amount(body.get("kwh"), scale=1000, what="kwh")
            price = parse_amount(body.get("price"), scale=1000, what="price")
            if not 0 < wh <= self.settings.max_wh:
                raise Refused("bad_quantity", 400)
            if not 0 <= price <= self.settings.max_price:
                raise Refused("bad_price", 400)
            keys: list[Passkey] = await self.edge.desk(lambda: self.store().of(session.did))
            usable = tuple(k.credential_id for k in keys if k.bound_entry is not None)
            if not usable:
                raise Refused("no_passkey", 409)
            seq = await self.edge.desk(self._next_seq, household)
            text = passkey_orders.order_text(
                did=session.did,
                household=household,
                seq=seq,
                ts=now_ms,
                side=side,
                interval=interval,
                wh=wh,
                price=price,
            )
            challenge = passkey_orders.challenge_of(text)
            self._wait(challenge, _Pending(text, session.csrf, household, seq, usable,
                                           now_ms + CHALLENGE_MS), now_ms)  # fmt: skip
            options = ceremonies.signing_options(challenge, list(usable))
        except Refused as exc:
            return _answer(exc.reason, exc.status, request)
        return web.json_response({"order": json.loads(text), "options": options})

    def _next_seq(self, household: str) -> int:
        waiting = [p.seq + 1 for p in self.pending.values() if p.household == household]
        return max([next_seq(self.edge.db.conn, household), *waiting])

    def _wait(self, challenge: bytes, pending: _Pending, now_ms: int) -> None:
        """Keep ``pending`` until it is signed: one per session, :data:`MAX_PENDING` in all."""
        self.pending = {
            c: p
            for c, p in self.pending.items()
            if p.expires_ms > now_ms and p.session != pending.session
        }
        if len(self.pending) >= MAX_PENDING:
            raise Refused("busy", 503)
        self.pending[challenge] = pending

    async def place(self, request: web.Request) -> web.Response:
        now_ms = self.edge.now_ms()
        try:
            session, principal = _session(request)
            body = await _json(request)
            if not isinstance(body, dict) or set(body) - {"challenge", "credential"}:
                raise Refused("malformed", 400)
            ceremonies = self._ceremonies()
            try:
                challenge = passkey_orders.unb64u(body.get("challenge"))
            except OrderRefused:
                raise Refused("malformed", 400) from None
            pending = self.pending.get(challenge)
            if pending is None or pending.session != session.csrf:
                raise Refused("unknown_challenge", 409)
            del self.pending[challenge]  # single use, whatever follows
            if pending.expires_ms <= now_ms:
                raise Refused("expired_challenge", 409)
            credential = body.get("credential")
            signed = await self.edge.desk(
                lambda: self._check_signature(
                    ceremonies,
                    session=session,
                    pending=pending,
                    challenge=challenge,
                    credential=credential,
                    now_ms=now_ms,
                )
            )
            payload = passkey_orders.entry_payload(pending.text, signed)
            order = passkey_orders.signed_order(pending.text, payload)
            if self.market is None:
                raise Refused("market_off", 503)
            answer: dict[str, Any] = await self.market.submit_passkey(
                order, session.did, _may_trade(principal), _action(session)
            )
        except Refused as exc:
            return _answer(exc.reason, exc.status, request)
        except PasskeyRefused as exc:
            return _answer(exc.reason if exc.reason in REFUSALS else "bad_passkey", 403, request)
        except OrderRefused as exc:
            return _answer(exc.reason, 400, request)
        if answer.get("status") != "accepted":
            return _answer(str(answer.get("reason", "unavailable")), 409, request)
        log.info("%s placed order %s for %s", session.did, order.seq, order.household)
        return web.json_response(
            {
                "status": "accepted",
                "seq": answer["seq"],
                "entry": answer["entry"],
                "next": f"/market?household={pending.household}&placed={answer['seq']}",
            }
        )

    def _check_signature(
        self,
        ceremonies: Ceremonies,
        *,
        session: WebSession,
        pending: _Pending,
        challenge: bytes,
        credential: Any,
        now_ms: int,
    ) -> passkey_orders.Signature:
        """On the desk: her passkey signed ``challenge``; what the record keeps of it."""
        if not isinstance(credential, dict) or len(json.dumps(credential)) > 16 * 1024:
            raise Refused("malformed", 400)
        credential_id = credential.get("rawId") or credential.get("id")
        if credential_id not in pending.credential_ids:
            raise Refused("bad_passkey")
        store = self.store()
        passkey = store.find(str(credential_id))
        if passkey is None or passkey.did != session.did or passkey.bound_entry is None:
            raise Refused("no_passkey", 409)
        count = ceremonies.verify_login(
            challenge,
            credential,
            public_key=passkey.public_key,
            sign_count=passkey.sign_count,
            handle=passkey.user_handle,
            verified_person=True,
        )
        store.credentials_expiry(passkey.status_indexes, now_ms=now_ms)
        store.counted(passkey, count, now_ms=now_ms)
        response = credential["response"]
        return passkey_orders.Signature(
            passkey=credential_id_hash(passkey.credential_id),
            binding=passkey.bound_entry,
            key=passkey.public_key,
            rp_id=ceremonies.rp.rp_id,
            authenticator_data=passkey_orders.unb64u(response["authenticatorData"]),
            client_data_json=passkey_orders.unb64u(response["clientDataJSON"]),
            signature=passkey_orders.unb64u(response["signature"]),
        )

    def _ceremonies(self) -> Ceremonies:
        if self.ceremonies is None:
            raise Refused("no_passkey", 409)
        return self.ceremonies


def _clock(settings: MarketSettings) -> str:
    """Hours and minutes, and seconds too for intervals that are not whole minutes."""
    return "%H:%M" if settings.interval_ms % 60_000 == 0 else "%H:%M:%S"


def kwh3(wh: int) -> str:
    """Wh as kWh with three decimals: an order's quantity is whole Wh."""
    return f"{wh / 1000:.3f}"


def eur_per_kwh(milli: int) -> str:
    """m€/kWh as € per kWh with three decimals (120 → "0.120")."""
    return f"{milli / 1000:.3f}"


def _text(value: Any) -> str:
    return value if isinstance(value, str) and len(value) <= 512 else ""


def _session(request: web.Request) -> tuple[WebSession, Principal]:
    principal = HttpEdge.principal(request)
    if principal is None or principal.session is None:
        raise Refused("not_signed_in", 401)
    return principal.session, principal


async def _json(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise Refused("malformed", 400)
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refused("malformed", 400) from None


def _answer(reason: str, status: int, request: web.Request | None = None) -> web.Response:
    text = REFUSALS.get(reason, reason)
    message = words(request)(text) if request is not None else text
    return web.json_response(
        {"status": "refused", "reason": reason, "message": message}, status=status
    )


def _may_trade(principal: Principal) -> Any:
    def may_trade(household: str, side: str) -> str | None:
        decision = principal.permissions.may_trade_for(household, side)
        if decision:
            return None
        return "wrong_role" if decision.reason == "wrong_role" else "not_member"

    return may_trade


def _action(session: WebSession) -> Any:
    def action(order_entry: int) -> NewEntry:
        request = requests.PersonRequest(
            "http-" + secrets.token_hex(8), "order", {"via": "http", "signed": "passkey"}
        )
        return requests.action_entry(
            session.did,
            request,
            digests=list(session.presentations),
            disclosure=session.disclosure,
            order=order_entry,
        )

    return action


def add_routes(edge: HttpEdge) -> None:
    edge.add(MarketDoor(edge).routes())


__all__ = ["MarketDoor", "add_routes", "b64u", "eur_per_kwh", "intervals", "parse_amount"]

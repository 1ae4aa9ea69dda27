"""A household's signed order, and the checks it must pass. Sans-IO.

An order is a compact JWS by the household's key (``typ`` ``didgw-order+jws``, ``kid`` in
its ``assertionMethod``) whose payload is exactly::

    {"did": "<household DID>", "seq": 7, "ts": <ms>, "side": "sell" | "buy",
     "interval": <start of the interval, ms>, "wh": 1500, "price": 120}

``wh`` is how much (Wh, > 0), ``price`` the limit in milli-euro per kWh: a seller sells
at that price or above, a buyer buys at that price or below. ``seq`` numbers the
household's orders (each used once). The first failed check is the refusal's reason:

``malformed``, ``bad_signature``, ``unknown_household``, ``not_active``,
``not_household`` (the DID is a device of another kind), ``no_meter`` (no active meter
of this household), ``interval_closed`` (the interval has started, or its start is not
an interval boundary), ``interval_too_far``, ``bad_quantity``, ``bad_price``,
``no_export_capacity`` (a sell beyond what the household's meter has shown it can
export in one interval: its highest recorded export power times the interval), ``replay``
(the ``seq`` was used for another order), ``unavailable`` (the gateway cannot take it now).

A person may order for her household too (the wallet protocol): her JWS, by her own key,
has one more member, ``"household": "<household DID>"``, and ``did`` is her DID. Right
after parsing, ``may_trade(household, side)`` (her session's credentials,
``Permissions.may_trade_for``) must allow it, else ``not_member`` or ``wrong_role``; then
the same checks follow, for that household, with the signature checked against her key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.auth.strict import (
    AuthRefused,
    check_did,
    check_int,
    exact_members,
    json_object,
    split_jws,
    verify_signed,
)
from gateway.errors import DidgwError
from gateway.identity.resolver import Resolver
from gateway.market.auction import BUY, SELL

ORDER_TYP = "didgw-order+jws"
ORDER_REASONS = (
    "malformed",
    "bad_signature",
    "unknown_household",
    "not_active",
    "not_household",
    "no_meter",
    "interval_closed",
    "interval_too_far",
    "bad_quantity",
    "bad_price",
    "no_export_capacity",
    "replay",
    "unavailable",
    "not_member",
    "wrong_role",
)
MAX_ORDER_BYTES = 4096
_MEMBERS = frozenset({"did", "seq", "ts", "side", "interval", "wh", "price"})
_PERSON_MEMBERS = _MEMBERS | {"household"}

#: ``may_trade(household, side)``: None when allowed, else the refusal's reason.
MayTrade = Callable[[str, str], str | None]


class OrderRefused(DidgwError):
    code = "order_refused"

    def __init__(self, reason: str, seq: int | None = None, detail: str = "") -> None:
        if reason not in ORDER_REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.seq, self.detail = reason, seq, detail


@dataclass(frozen=True)
class SignedOrder:
    did: str
    seq: int
    ts: int
    side: str
    interval: int
    wh: int
    price: int
    token: bytes
    household: str = ""  # the household it is for (its own DID unless a person sent it)

    @property
    def for_household(self) -> str:
        return self.household or self.did


@dataclass(frozen=True)
class Household:
    """What the market knows of a household when it checks an order."""

    status: str  # the registry's: active, suspended, revoked
    kind: str
    has_meter: bool
    peak_export_w: int


@dataclass(frozen=True)
class Rules:
    interval_ms: int
    max_ahead: int
    max_wh: int
    max_price: int


def check_order(
    token: bytes,
    *,
    topic_did: str | None,
    lookup: Callable[[str], Household | None],
    resolver: Resolver,
    rules: Rules,
    now_ms: int,
    may_trade: MayTrade | None = None,
) -> SignedOrder:
    """The order in ``token``, or :class:`OrderRefused` (see the module docstring).

    With ``may_trade`` the order is a person's (``topic_did`` is then hers)."""
    seq: int | None = None
    try:
        header, body = split_jws(token, "order", max_bytes=MAX_ORDER_BYTES)
        obj = json_object(body, "order payload", max_bytes=MAX_ORDER_BYTES)
        seq = obj.get("seq") if isinstance(obj.get("seq"), int) else None
        if header.get("typ") != ORDER_TYP:
            raise OrderRefused("malformed", seq, f"JWS typ must be {ORDER_TYP}")
        order = parse_order(obj, token, person=may_trade is not None)
        if topic_did is not None and order.did != topic_did:
            raise OrderRefused("bad_signature", seq, "order of another household's topic")
        household = _household(order, lookup, may_trade)
        verify_signed(
            token,
            header,
            body,
            order.did,
            resolver=resolver,
            relationship="assertionMethod",
            now_ms=now_ms,
        )
    except AuthRefused as exc:
        reason = exc.reason if exc.reason in ORDER_REASONS else "malformed"
        raise OrderRefused(reason, seq, exc.detail) from None
    _terms(order, household, rules, now_ms)
    return order


def check_signed_order(
    order: SignedOrder,
    *,
    lookup: Callable[[str], Household | None],
    rules: Rules,
    now_ms: int,
    may_trade: MayTrade,
) -> SignedOrder:
    """The checks of :func:`check_order` after the signature, for a person's order whose
    signature was checked another way (a passkey: ``passkey_orders.py``)."""
    _terms(order, _household(order, lookup, may_trade), rules, now_ms)
    return order


def _household(
    order: SignedOrder, lookup: Callable[[str], Household | None], may_trade: MayTrade | None
) -> Household:
    seq, target = order.seq, order.for_household
    if may_trade is not None:
        refused = may_trade(target, order.side)
        if refused is not None:
            raise OrderRefused(refused, seq, f"{order.did} may not {order.side} for {target}")
    household = lookup(target)
    if household is None:
        raise OrderRefused("unknown_household", seq, f"{target} is not registered")
    if household.status != "active":
        raise OrderRefused("not_active", seq, f"{target} is {household.status}")
    if household.kind != "household":
        raise OrderRefused("not_household", seq, f"{target} is a {household.kind}")
    return household


def _terms(order: SignedOrder, household: Household, rules: Rules, now_ms: int) -> None:
    seq = order.seq
    if not household.has_meter:
        raise OrderRefused("no_meter", seq, "the household has no active meter")
    start = order.interval
    if start % rules.interval_ms or start <= now_ms:
        raise OrderRefused("interval_closed", seq, f"interval {start} is not open")
    if start > now_ms + rules.max_ahead * rules.interval_ms:
        raise OrderRefused("interval_too_far", seq, f"at most {rules.max_ahead} intervals ahead")
    if not 0 < order.wh <= rules.max_wh:
        raise OrderRefused("bad_quantity", seq, f"wh must be 1 to {rules.max_wh}")
    if not 0 <= order.price <= rules.max_price:
        raise OrderRefused("bad_price", seq, f"price must be 0 to {rules.max_price}")
    if order.side == SELL:
        capacity = household.peak_export_w * rules.interval_ms // 3_600_000
        if order.wh > capacity:
            raise OrderRefused(
                "no_export_capacity",
                seq,
                f"{order.wh} Wh to sell; the meter has shown at most {capacity} Wh per interval",
            )


def parse_order(obj: dict[str, Any], token: bytes, *, person: bool = False) -> SignedOrder:
    exact_members(obj, _PERSON_MEMBERS if person else _MEMBERS, "order")
    side = obj["side"]
    if side not in (SELL, BUY):
        raise OrderRefused("malformed", None, "side must be sell or buy")
    for name in ("wh", "price"):
        if type(obj[name]) is not int:
            raise OrderRefused("malformed", None, f"{name} must be an integer")
    return SignedOrder(
        did=check_did(obj["did"], "order did"),
        seq=check_int(obj["seq"], "order seq", minimum=1),
        ts=check_int(obj["ts"], "order ts"),
        side=side,
        interval=check_int(obj["interval"], "order interval"),
        wh=obj["wh"],
        price=obj["price"],
        token=token,
        household=check_did(obj["household"], "order household") if person else "",
    )

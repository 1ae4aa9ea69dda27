"""The local market's clearing rule: a uniform-price double auction per interval. Pure.

Units are integers, so every sum is exact: quantities in Wh, prices in milli-euro per kWh
(m€/kWh; 250 = €0.25/kWh), money in micro-euro (µ€): ``Wh * m€/kWh = µ€``.

The rule (docs/market.md, "Clearing"):

1. Offers (sell) are taken cheapest first, bids (buy) dearest first. Equal prices go by
   order id (household DID, then its order sequence number), so the order in which orders
   arrived never matters: the same book always clears the same way.
2. While the cheapest remaining offer is priced at or below the dearest remaining bid, they
   are matched for the smaller of their remaining quantities; the one used up is dropped.
   This yields the largest volume that can trade (the supply and demand curves' crossing).
3. Every matched Wh trades at one price: the midpoint, rounded down to a whole m€/kWh, of
   the *marginal* offer and bid (the last pair matched). The marginal offer is the dearest
   matched offer and the marginal bid the cheapest matched bid, so the price is at or above
   every matched offer and at or below every matched bid: no seller gets less than asked,
   no buyer pays more than bid.
4. Each trade names the offer and the bid it came from. Orders, or what is left of them,
   that did not match expire with the interval.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

SELL = "sell"
BUY = "buy"


@dataclass(frozen=True, order=True)
class OrderId:
    household: str
    seq: int

    def __str__(self) -> str:
        return f"{self.household}#{self.seq}"


@dataclass(frozen=True)
class Order:
    id: OrderId
    side: str  # SELL or BUY
    wh: int  # > 0
    price: int  # m€/kWh, >= 0


@dataclass(frozen=True)
class Trade:
    index: int  # 0, 1, … within the interval
    offer: OrderId
    bid: OrderId
    wh: int
    price: int  # the clearing price

    @property
    def seller(self) -> str:
        return self.offer.household

    @property
    def buyer(self) -> str:
        return self.bid.household

    @property
    def amount_ueur(self) -> int:
        return self.wh * self.price


@dataclass(frozen=True)
class Clearing:
    price: int | None  # None: nothing matched
    volume_wh: int
    trades: tuple[Trade, ...]
    marginal_offer: int | None = None
    marginal_bid: int | None = None


def clear(orders: Iterable[Order]) -> Clearing:
    """Clear one interval's book (see the module docstring)."""
    offers = sorted((o for o in orders if o.side == SELL), key=_offer_key)
    bids = sorted((o for o in orders if o.side == BUY), key=_bid_key)
    pairs: list[tuple[OrderId, OrderId, int]] = []
    i = j = 0
    offer_left = offers[0].wh if offers else 0
    bid_left = bids[0].wh if bids else 0
    last_offer = last_bid = -1
    n_offers, n_bids = len(offers), len(bids)
    while i < n_offers and j < n_bids:
        offer, bid = offers[i], bids[j]
        if offer.price > bid.price:
            break
        q = offer_left if offer_left < bid_left else bid_left
        pairs.append((offer.id, bid.id, q))
        last_offer, last_bid = offer.price, bid.price
        offer_left -= q
        bid_left -= q
        if offer_left == 0:
            i += 1
            if i < n_offers:
                offer_left = offers[i].wh
        if bid_left == 0:
            j += 1
            if j < n_bids:
                bid_left = bids[j].wh
    if not pairs:
        return Clearing(None, 0, ())
    price = (last_offer + last_bid) // 2
    trades = tuple(Trade(k, o, b, q, price) for k, (o, b, q) in enumerate(pairs))
    return Clearing(price, sum(q for _, _, q in pairs), trades, last_offer, last_bid)


def _offer_key(order: Order) -> tuple[int, str, int]:
    return (order.price, order.id.household, order.id.seq)


def _bid_key(order: Order) -> tuple[int, str, int]:
    return (-order.price, order.id.household, order.id.seq)

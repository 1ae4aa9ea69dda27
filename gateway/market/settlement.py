"""Settling an interval against the meters: what each household owes or is owed. Pure.

For each household in an interval: ``sold`` and ``bought`` (Wh, from its trades, all at
the interval's clearing price ``p``), and ``export`` and ``import`` (Wh, the differences
of its meter's export and import registers between the last reading at or before the
interval's start and the first reading at or after its end). Then, in µ€ (positive: the
household receives, negative: it pays):

* ``market``: ``p * sold - p * bought`` (between neighbours; sums to zero over everyone);
* ``shortfall``: ``-retail * max(0, sold - export)``: sold but not delivered; the grid
  delivered it instead, at the retail import price, paid by the seller;
* ``feed_in``: ``feed_in * max(0, export - sold)``: exported beyond what was sold, paid by
  the grid at the feed-in tariff;
* ``grid_import``: ``-retail * max(0, import - bought)``: used beyond what was bought,
  from the grid at the retail price;
* ``unused``: ``feed_in * max(0, bought - import)``: bought but not used; it flowed on to
  the grid, which pays the feed-in tariff for it.

``net`` is their sum.

**Production cross-check.** When the household has enrolled inverters, ``produced`` is
their lifetime-energy difference over the same readings' bounds, and metered export can
be no more than what they produced (plus ``tolerance`` Wh for the two instruments'
disagreement): ``credited = min(export, produced + tolerance)`` takes the place of
``export`` in ``shortfall`` and ``feed_in``, and the rest, ``held = export - credited``,
is neither paid nor counted as delivered; the statement names it (``produced_wh``,
``held_wh``) for the operator to look into (a battery or a generator not enrolled, a
meter or an inverter misreporting). Without inverters (``produced`` None) nothing changes
and the statement has neither field; the market passes None too when the export is within
the tolerance, which the cross-check could not change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from gateway.market.auction import Trade


@dataclass(frozen=True)
class Prices:
    retail: int  # m€/kWh, what the grid charges for imported energy
    feed_in: int  # m€/kWh, what the grid pays for exported energy


@dataclass(frozen=True)
class Metered:
    import_wh: int
    export_wh: int


@dataclass(frozen=True)
class Statement:
    household: str
    interval: int  # start, Unix ms
    price: int | None
    sold_wh: int
    bought_wh: int
    import_wh: int
    export_wh: int
    market: int
    shortfall: int
    feed_in: int
    grid_import: int
    unused: int
    trades: tuple[int, ...]  # indexes of its trades in the interval
    produced_wh: int | None = None  # its inverters' production; None: no inverter
    held_wh: int = 0  # export beyond production + tolerance: not credited

    @property
    def net(self) -> int:
        return self.market + self.shortfall + self.feed_in + self.grid_import + self.unused

    def as_json(self) -> dict[str, object]:
        body = asdict(self)
        body["trades"] = list(self.trades)
        body["net"] = self.net
        if self.produced_wh is None:
            del body["produced_wh"], body["held_wh"]
        return {
            "type": "statement",
            "units": {"energy": "Wh", "price": "m€/kWh", "money": "µ€"},
            **body,
        }


def settle(
    household: str,
    *,
    interval: int,
    trades: Iterable[Trade],
    metered: Metered,
    prices: Prices,
    price: int | None,
    produced_wh: int | None = None,
    tolerance_wh: int = 0,
) -> Statement:
    mine = [t for t in trades if household in (t.seller, t.buyer)]
    sold = sum(t.wh for t in mine if t.seller == household)
    bought = sum(t.wh for t in mine if t.buyer == household)
    market = sum(t.amount_ueur for t in mine if t.seller == household) - sum(
        t.amount_ueur for t in mine if t.buyer == household
    )
    exp, imp = metered.export_wh, metered.import_wh
    credited = exp if produced_wh is None else min(exp, max(0, produced_wh + tolerance_wh))
    return Statement(
        household=household,
        interval=interval,
        price=price,
        sold_wh=sold,
        bought_wh=bought,
        import_wh=imp,
        export_wh=exp,
        market=market,
        shortfall=-prices.retail * max(0, sold - credited),
        feed_in=prices.feed_in * max(0, credited - sold),
        grid_import=-prices.retail * max(0, imp - bought),
        unused=prices.feed_in * max(0, bought - imp),
        trades=tuple(t.index for t in mine),
        produced_wh=produced_wh,
        held_wh=exp - credited,
    )

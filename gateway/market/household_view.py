"""What one household sees of the market: her orders and what became of each, her trades
with the other side named only by its household DID, and her settlement statements.

Read-only queries over the market's tables (``service.py`` writes them); the newest first,
at most ``limit`` of each. Units as everywhere in the market: Wh, milli-euro per kWh,
micro-euro.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HouseholdMarket:
    orders: list[dict[str, Any]]
    trades: list[dict[str, Any]]
    statements: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"orders": self.orders, "trades": self.trades, "statements": self.statements}


def household_market(
    conn: sqlite3.Connection, household: str, *, limit: int = 50
) -> HouseholdMarket:
    """Her orders (``state`` open until its interval clears, then ``traded`` with the Wh
    matched, or ``not matched``), trades and statements."""
    orders = [
        {
            "seq": seq,
            "interval": interval,
            "side": side,
            "wh": wh,
            "price": price,
            "entry": entry,
            "state": "open" if cleared is None else ("traded" if matched else "not matched"),
            "matched_wh": matched,
        }
        for seq, interval, side, wh, price, entry, cleared, matched in conn.execute(
            "SELECT o.seq, o.interval, o.side, o.wh, o.price, o.entry, i.cleared_ms, "
            "(SELECT coalesce(sum(t.wh), 0) FROM market_trades t WHERE t.interval = o.interval "
            " AND ((t.seller = o.household AND t.offer_seq = o.seq) OR "
            "      (t.buyer = o.household AND t.bid_seq = o.seq))) "
            "FROM market_orders o LEFT JOIN market_intervals i ON i.interval = o.interval "
            "WHERE o.household = ? ORDER BY o.interval DESC, o.seq DESC LIMIT ?",
            [household, limit],
        )
    ]
    trades = [
        {
            "interval": interval,
            "index": idx,
            "side": "sell" if seller == household else "buy",
            "counterparty": buyer if seller == household else seller,
            "seq": offer_seq if seller == household else bid_seq,
            "wh": wh,
            "price": price,
            "amount_micro_eur": wh * price,
            "entry": entry,
        }
        for interval, idx, seller, offer_seq, buyer, bid_seq, wh, price, entry in conn.execute(
            "SELECT interval, idx, seller, offer_seq, buyer, bid_seq, wh, price, entry "
            "FROM market_trades WHERE seller = ? OR buyer = ? "
            "ORDER BY interval DESC, idx DESC LIMIT ?",
            [household, household, limit],
        )
    ]
    statements = [
        {**json.loads(body), "entry": entry}
        for body, entry in conn.execute(
            "SELECT body, entry FROM market_statements WHERE household = ? "
            "ORDER BY interval DESC LIMIT ?",
            [household, limit],
        )
    ]
    return HouseholdMarket(orders, trades, statements)


def next_seq(conn: sqlite3.Connection, household: str) -> int:
    """A ``seq`` no order of ``household`` has used yet."""
    row = conn.execute(
        "SELECT coalesce(max(seq), 0) FROM market_orders WHERE household = ?", [household]
    ).fetchone()
    return int(row[0]) + 1


def concerns(conn: sqlite3.Connection, households: list[str], entry: int) -> bool:
    """Whether record entry ``entry`` is a trade or statement of one of ``households``
    (so a receipt of it is theirs to have)."""
    for household in households:
        row = conn.execute(
            "SELECT 1 FROM market_trades WHERE entry = ? AND (seller = ? OR buyer = ?) "
            "UNION ALL SELECT 1 FROM market_statements WHERE entry = ? AND household = ?",
            [entry, household, household, entry, household],
        ).fetchone()
        if row is not None:
            return True
    return False

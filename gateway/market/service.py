"""The market as the gateway runs it: take orders, clear intervals, settle them, on the record.

Everything here is synchronous and single-threaded over one database connection of its
own (the caller runs it on one thread); time comes in as ``now_ms``. Each change is one
transaction that appends its chain entries and writes the market's tables together, so
the record and the tables never disagree:

* an accepted order: entry of kind ``order`` by the household (its JWS as received, keyed
  by its ``seq``), row in ``market_orders``;
* a cleared interval (at its start): one entry of kind ``trade`` per trade, signed by the
  gateway (``typ`` ``didgw-trade+jws``), naming the orders (and their entries) it came from;
* a settled interval (once every involved meter has a reading at or after its end): one
  entry of kind ``statement`` per household, signed by the gateway.

Each step returns the messages for the households concerned: ``(household DID, JSON)``,
published by the caller on ``<prefix>/d/<did>/market``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from gateway.chain.store import ChainStore, NewEntry
from gateway.db import write_transaction
from gateway.identity.resolver import Resolver
from gateway.identity.signing import Signer, sign_jws
from gateway.market.auction import Order, OrderId, Trade, clear
from gateway.market.orders import (
    Household,
    MayTrade,
    OrderRefused,
    Rules,
    SignedOrder,
    check_order,
    check_signed_order,
)
from gateway.market.passkey_orders import KIND as PASSKEY_ORDER
from gateway.market.settlement import Metered, Prices, Statement, settle
from gateway.registry import Registry

Message = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class MarketSettings:
    interval_ms: int = 900_000
    max_ahead: int = 96
    max_wh: int = 100_000
    max_price: int = 5000
    retail: int = 300
    feed_in: int = 80
    production_tolerance_wh: int = 100

    @property
    def rules(self) -> Rules:
        return Rules(self.interval_ms, self.max_ahead, self.max_wh, self.max_price)

    @property
    def prices(self) -> Prices:
        return Prices(self.retail, self.feed_in)


class Market:
    def __init__(
        self,
        db: Database,
        registry: Registry,
        resolver: Resolver,
        signer: Signer | None,
        settings: MarketSettings,
    ) -> None:
        self._db = db
        self._conn: sqlite3.Connection = db.conn
        self._store = ChainStore(db)
        self._registry = registry
        self._resolver = resolver
        self._signer = signer
        self.settings = settings
        self.counts: dict[str, int] = {}
        # (interval, household) → why its statement is not made yet; see overdue().
        self._waiting: dict[tuple[int, str], str] = {}

    def close(self) -> None:
        self._db.close()

    # -- orders ------------------------------------------------------------

    def household(self, did: str) -> Household | None:
        device = self._registry.find(did)
        if device is None:
            return None
        row = self._conn.execute(
            "SELECT count(*), coalesce(max(m.peak_export_w), 0) FROM meters m "
            "JOIN devices d ON d.did = m.did WHERE m.household = ? AND d.status = 'active'",
            [did],
        ).fetchone()
        return Household(device.status.value, device.kind, row[0] > 0, int(row[1]))

    def submit(self, token: bytes, now_ms: int, *, topic_did: str | None = None) -> Message | None:
        """Check and record an order; the answer for its household (None: nobody to tell)."""
        try:
            order = check_order(
                token,
                topic_did=topic_did,
                lookup=self.household,
                resolver=self._resolver,
                rules=self.settings.rules,
                now_ms=now_ms,
            )
            entry = self._record_order(order, now_ms)
        except OrderRefused as refusal:
            self.counts[refusal.reason] = self.counts.get(refusal.reason, 0) + 1
            if topic_did is None:
                raise
            body = {"type": "order", "seq": refusal.seq, "status": "refused"}
            return topic_did, {**body, "reason": refusal.reason}
        self.counts["accepted"] = self.counts.get("accepted", 0) + 1
        return order.did, {"type": "order", "seq": order.seq, "status": "accepted", "entry": entry}

    def submit_person(
        self,
        token: bytes,
        now_ms: int,
        *,
        person: str,
        may_trade: MayTrade,
        action: Callable[[int], NewEntry],
    ) -> dict[str, Any]:
        """A person's order for a household (the wallet protocol): her answer.

        ``may_trade`` is her session's permission check; ``action(order entry)`` is the
        entry recording that she placed it (with her presentation's digest), appended
        in the same transaction as the order.
        """
        try:
            order = check_order(
                token,
                topic_did=person,
                lookup=self.household,
                resolver=self._resolver,
                rules=self.settings.rules,
                now_ms=now_ms,
                may_trade=may_trade,
            )
            entry = self._record_order(order, now_ms, action)
        except OrderRefused as refusal:
            return self._refused(refusal)
        return self._accepted(order, entry)

    def submit_passkey(
        self,
        order: SignedOrder,
        now_ms: int,
        *,
        may_trade: MayTrade,
        action: Callable[[int], NewEntry],
    ) -> dict[str, Any]:
        """A person's order signed with her passkey (its signature checked by the caller:
        ``passkey_orders.py``); recorded as a ``passkey-order`` entry, then as any order."""
        try:
            check_signed_order(
                order,
                lookup=self.household,
                rules=self.settings.rules,
                now_ms=now_ms,
                may_trade=may_trade,
            )
            entry = self._record_order(order, now_ms, action, kind=PASSKEY_ORDER)
        except OrderRefused as refusal:
            return self._refused(refusal)
        return self._accepted(order, entry)

    def _refused(self, refusal: OrderRefused) -> dict[str, Any]:
        self.counts[refusal.reason] = self.counts.get(refusal.reason, 0) + 1
        return {"status": "refused", "reason": refusal.reason, "seq": refusal.seq}

    def _accepted(self, order: SignedOrder, entry: int) -> dict[str, Any]:
        self.counts["accepted"] = self.counts.get("accepted", 0) + 1
        return {"status": "accepted", "seq": order.seq, "entry": entry}

    def _record_order(
        self,
        order: SignedOrder,
        now_ms: int,
        action: Callable[[int], NewEntry] | None = None,
        *,
        kind: str = "order",
    ) -> int:
        known = self._store.find_key(order.did, kind, order.seq)
        if known is not None:
            if known.payload == order.token:
                return known.seq  # sent again (its answer was lost): same entry
            raise OrderRefused("replay", order.seq, f"seq {order.seq} is another order")

        def write() -> int:
            [entry] = self._store.append_within(
                [NewEntry(kind, order.did, order.token, order.seq)], now_ms=now_ms
            )
            if action is not None:
                self._store.append_within([action(entry.seq)], now_ms=now_ms)
            self._conn.execute(
                "INSERT INTO market_orders (household, seq, interval, side, wh, price, entry, "
                "received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    order.for_household,
                    order.seq,
                    order.interval,
                    order.side,
                    order.wh,
                    order.price,
                    entry.seq,
                    now_ms,
                ],
            )
            return entry.seq

        try:
            return int(self._transaction(write))
        except sqlite3.IntegrityError:  # the household's own order, or another member's
            raise OrderRefused("replay", order.seq, f"seq {order.seq} is taken") from None
        except sqlite3.Error as exc:
            raise OrderRefused("unavailable", order.seq, str(exc)) from None

    def _transaction(self, work: Callable[[], Any]) -> Any:
        try:
            with write_transaction(self._conn):
                return work()
        except BaseException:
            self._store.resync()
            raise

    # -- the book, clearing --------------------------------------------------

    def book(self, interval: int) -> list[Order]:
        rows = self._conn.execute(
            "SELECT household, seq, side, wh, price FROM market_orders WHERE interval = ?",
            [interval],
        ).fetchall()
        return [Order(OrderId(h, s), side, wh, p) for h, s, side, wh, p in rows]

    def open_intervals(self) -> list[int]:
        rows = self._conn.execute(
            "SELECT DISTINCT o.interval FROM market_orders o LEFT JOIN market_intervals i "
            "ON i.interval = o.interval WHERE i.cleared_ms IS NULL ORDER BY o.interval"
        ).fetchall()
        return [int(r[0]) for r in rows]

    def clear_interval(self, interval: int, now_ms: int) -> list[Message]:
        if self._signer is None:
            raise OrderRefused("unavailable", None, "the market needs the gateway key")
        signer = self._signer
        book = self.book(interval)
        result = clear(book)
        entries = {
            (h, s): e
            for h, s, e in self._conn.execute(
                "SELECT household, seq, entry FROM market_orders WHERE interval = ?", [interval]
            )
        }
        payloads = [
            self._trade_body(
                interval, t, entries[(t.seller, t.offer.seq)], entries[(t.buyer, t.bid.seq)]
            )
            for t in result.trades
        ]

        def write() -> list[int]:
            tokens = [
                sign_jws(_json(body), signer, headers={"typ": "didgw-trade+jws"}).encode()
                for body in payloads
            ]
            recorded = self._store.append_within(
                [NewEntry("trade", signer.did, token) for token in tokens], now_ms=now_ms
            )
            self._conn.executemany(
                "INSERT INTO market_trades (interval, idx, seller, offer_seq, buyer, bid_seq, "
                "wh, price, entry) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        interval,
                        t.index,
                        t.seller,
                        t.offer.seq,
                        t.buyer,
                        t.bid.seq,
                        t.wh,
                        t.price,
                        e.seq,
                    )
                    for t, e in zip(result.trades, recorded, strict=True)
                ],
            )
            self._conn.execute(
                "INSERT INTO market_intervals (interval, cleared_ms, price, volume_wh) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (interval) DO UPDATE SET "
                "cleared_ms = excluded.cleared_ms, price = excluded.price, "
                "volume_wh = excluded.volume_wh",
                [interval, now_ms, result.price, result.volume_wh],
            )
            return [e.seq for e in recorded]

        seqs: list[int] = self._transaction(write)
        messages: list[Message] = []
        for body, seq in zip(payloads, seqs, strict=True):
            message = {**body, "entry": seq}
            messages.append((str(body["offer"]["household"]), message))
            messages.append((str(body["bid"]["household"]), message))
        return messages

    @staticmethod
    def _trade_body(interval: int, t: Trade, offer_entry: int, bid_entry: int) -> dict[str, Any]:
        return {
            "type": "trade",
            "interval": interval,
            "index": t.index,
            "offer": {"household": t.seller, "seq": t.offer.seq, "entry": offer_entry},
            "bid": {"household": t.buyer, "seq": t.bid.seq, "entry": bid_entry},
            "wh": t.wh,
            "price": t.price,
        }

    def trades(self, interval: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT interval, idx, seller, offer_seq, buyer, bid_seq, wh, price, entry FROM "
        sql += "market_trades" + (" WHERE interval = ?" if interval is not None else "")
        rows = self._conn.execute(
            sql + " ORDER BY interval, idx", [] if interval is None else [interval]
        ).fetchall()
        return [
            {
                "interval": r[0],
                "index": r[1],
                "seller": r[2],
                "offer_seq": r[3],
                "buyer": r[4],
                "bid_seq": r[5],
                "wh": r[6],
                "price": r[7],
                "entry": r[8],
            }
            for r in rows
        ]

    # -- settlement ---------------------------------------------------------

    def unsettled(self, now_ms: int) -> list[int]:
        rows = self._conn.execute(
            "SELECT interval FROM market_intervals WHERE cleared_ms IS NOT NULL "
            "AND settled_ms IS NULL AND interval + ? <= ? ORDER BY interval",
            [self.settings.interval_ms, now_ms],
        ).fetchall()
        return [int(r[0]) for r in rows]

    def metered(self, household: str, start: int, end: int) -> tuple[Metered, list[int]] | str:
        """Import and export of the household's meters over [start, end], and the entries of
        the readings used; or why they are not known yet (a meter with no reading at or
        after ``end``, or none before ``start``, or no active meter)."""
        imp = exp = 0
        used: list[int] = []
        rows = self._conn.execute(
            "SELECT m.did FROM meters m JOIN devices d ON d.did = m.did "
            "WHERE m.household = ? AND d.status = 'active'",
            [household],
        ).fetchall()
        if not rows:
            return "the household has no active meter"
        for (meter,) in rows:
            before = self._conn.execute(
                "SELECT import_wh, export_wh, entry FROM meter_readings WHERE meter = ? "
                "AND ts <= ? ORDER BY ts DESC LIMIT 1",
                [meter, start],
            ).fetchone()
            after = self._conn.execute(
                "SELECT import_wh, export_wh, entry FROM meter_readings WHERE meter = ? "
                "AND ts >= ? ORDER BY ts LIMIT 1",
                [meter, end],
            ).fetchone()
            if before is None:
                return f"meter {meter} has no reading at or before the interval's start"
            if after is None:
                return f"meter {meter} has no reading at or after the interval's end yet"
            imp += after[0] - before[0]
            exp += after[1] - before[1]
            used += [before[2], after[2]]
        return Metered(imp, exp), used

    def produced(self, household: str, start: int, end: int) -> tuple[int, list[int]] | str | None:
        """What the household's active inverters produced over [start, end] (Wh) and the
        entries of the readings used; None when it has no active inverter (settlement is
        then as it was without inverters); or why it is not known yet."""
        rows = self._conn.execute(
            "SELECT i.did FROM inverters i JOIN devices d ON d.did = i.did "
            "WHERE i.household = ? AND d.status = 'active'",
            [household],
        ).fetchall()
        if not rows:
            return None
        total = 0
        used: list[int] = []
        for (inverter,) in rows:
            before = self._conn.execute(
                "SELECT energy_wh, entry FROM inverter_readings WHERE inverter = ? "
                "AND ts <= ? ORDER BY ts DESC LIMIT 1",
                [inverter, start],
            ).fetchone()
            after = self._conn.execute(
                "SELECT energy_wh, entry FROM inverter_readings WHERE inverter = ? "
                "AND ts >= ? ORDER BY ts LIMIT 1",
                [inverter, end],
            ).fetchone()
            if before is None:
                return f"inverter {inverter} has no reading at or before the interval's start"
            if after is None:
                return f"inverter {inverter} has no reading at or after the interval's end yet"
            total += after[0] - before[0]
            used += [before[1], after[1]]
        return total, used

    def settle_interval(self, interval: int, now_ms: int) -> list[Message]:
        """Statements for the households with orders in the interval whose meter data are in.

        Each statement needs only its own household's meters, so a silent meter holds up
        its own household alone (:meth:`overdue` says which). The interval is settled once
        every household has its statement.
        """
        if self._signer is None:
            raise OrderRefused("unavailable", None, "the market needs the gateway key")
        signer = self._signer
        end = interval + self.settings.interval_ms
        households = [
            r[0]
            for r in self._conn.execute(
                "SELECT DISTINCT o.household FROM market_orders o WHERE o.interval = ? "
                "AND NOT EXISTS (SELECT 1 FROM market_statements s "
                "WHERE s.interval = o.interval AND s.household = o.household) "
                "ORDER BY o.household",
                [interval],
            )
        ]
        price_row = self._conn.execute(
            "SELECT price FROM market_intervals WHERE interval = ?", [interval]
        ).fetchone()
        price = None if price_row is None else price_row[0]
        trades = [
            Trade(
                t["index"],
                OrderId(t["seller"], t["offer_seq"]),
                OrderId(t["buyer"], t["bid_seq"]),
                t["wh"],
                t["price"],
            )
            for t in self.trades(interval)
        ]
        bodies: list[tuple[Statement, dict[str, Any]]] = []
        for household in households:
            metered = self.metered(household, interval, end)
            produced: tuple[int, list[int]] | str | None = None
            tolerance = self.settings.production_tolerance_wh
            if not isinstance(metered, str) and metered[0].export_wh > tolerance:
                # Only export beyond the tolerance needs the inverters' word: a night's
                # statement does not wait for an inverter that sleeps.
                produced = self.produced(household, interval, end)
            if isinstance(metered, str) or isinstance(produced, str):
                why = metered if isinstance(metered, str) else produced
                self._waiting[(interval, household)] = str(why)
                continue
            self._waiting.pop((interval, household), None)
            statement = settle(
                household,
                interval=interval,
                trades=trades,
                metered=metered[0],
                prices=self.settings.prices,
                price=price,
                produced_wh=None if produced is None else produced[0],
                tolerance_wh=self.settings.production_tolerance_wh,
            )
            body = {**statement.as_json(), "readings": metered[1]}
            if produced is not None:
                body["production_readings"] = produced[1]
            bodies.append((statement, body))

        def write() -> list[int]:
            tokens = [
                sign_jws(_json(body), signer, headers={"typ": "didgw-statement+jws"}).encode()
                for _, body in bodies
            ]
            recorded = self._store.append_within(
                [NewEntry("statement", signer.did, token) for token in tokens], now_ms=now_ms
            )
            self._conn.executemany(
                "INSERT INTO market_statements (interval, household, body, entry) "
                "VALUES (?, ?, ?, ?)",
                [
                    (interval, s.household, json.dumps(body, sort_keys=True), e.seq)
                    for (s, body), e in zip(bodies, recorded, strict=True)
                ],
            )
            if len(bodies) == len(households):
                self._conn.execute(
                    "UPDATE market_intervals SET settled_ms = ? WHERE interval = ?",
                    [now_ms, interval],
                )
            return [e.seq for e in recorded]

        if not bodies and households:
            return []

        seqs: list[int] = self._transaction(write)
        return [
            (s.household, {**body, "entry": seq})
            for (s, body), seq in zip(bodies, seqs, strict=True)
        ]

    def statements(self, household: str, interval: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT body, entry FROM market_statements WHERE household = ?"
        args: list[Any] = [household]
        if interval is not None:
            sql += " AND interval = ?"
            args.append(interval)
        return [
            {**json.loads(body), "entry": entry}
            for body, entry in self._conn.execute(sql + " ORDER BY interval", args)
        ]

    # -- the loop's step -----------------------------------------------------

    def tick(self, now_ms: int) -> list[Message]:
        """Clear every interval that has started, settle every one whose meter data is in."""
        messages: list[Message] = []
        for interval in self.open_intervals():
            if interval <= now_ms:
                messages += self.clear_interval(interval, now_ms)
        for interval in self.unsettled(now_ms):
            messages += self.settle_interval(interval, now_ms)
        return messages

    def overdue(self, now_ms: int) -> list[tuple[int, str, str]]:
        """(interval, household, why) of the statements still waiting one whole interval
        after their interval ended: a meter that should have reported by now has not."""
        late = now_ms - 2 * self.settings.interval_ms
        return sorted(
            (interval, household, why)
            for (interval, household), why in self._waiting.items()
            if interval <= late
        )


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def current_interval(now_ms: int, interval_ms: int) -> int:
    return now_ms - now_ms % interval_ms

"""The clearing rule and settlement: properties (hypothesis) and worked examples."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.market.auction import BUY, SELL, Order, OrderId, clear
from gateway.market.settlement import Metered, Prices, settle

HOUSES = [f"did:key:z6MkHouse{i}" for i in range(6)]

orders_st = st.lists(
    st.builds(
        lambda h, seq, side, wh, price: Order(OrderId(h, seq), side, wh, price),
        st.sampled_from(HOUSES),
        st.integers(min_value=1, max_value=10**6),
        st.sampled_from([SELL, BUY]),
        st.integers(min_value=1, max_value=20_000),
        st.integers(min_value=0, max_value=1_000),
    ),
    max_size=60,
    unique_by=lambda o: o.id,
)


@settings(max_examples=300, deadline=None)
@given(orders_st)
def test_energy_is_conserved(orders):
    result = clear(orders)
    by_id = {o.id: o for o in orders}
    sold: dict[OrderId, int] = {}
    bought: dict[OrderId, int] = {}
    for t in result.trades:
        assert t.wh > 0
        assert by_id[t.offer].side == SELL and by_id[t.bid].side == BUY
        sold[t.offer] = sold.get(t.offer, 0) + t.wh
        bought[t.bid] = bought.get(t.bid, 0) + t.wh
    assert sum(sold.values()) == sum(bought.values()) == result.volume_wh
    assert all(q <= by_id[i].wh for i, q in sold.items())
    assert all(q <= by_id[i].wh for i, q in bought.items())


@settings(max_examples=300, deadline=None)
@given(orders_st)
def test_no_trade_above_its_bid_or_below_its_offer(orders):
    by_id = {o.id: o for o in orders}
    for t in clear(orders).trades:
        assert by_id[t.offer].price <= t.price <= by_id[t.bid].price


@settings(max_examples=300, deadline=None)
@given(orders_st)
def test_clearing_price_between_marginal_offer_and_bid(orders):
    result = clear(orders)
    if result.price is None:
        offers = [o.price for o in orders if o.side == SELL]
        bids = [o.price for o in orders if o.side == BUY]
        assert not offers or not bids or min(offers) > max(bids)  # nothing could match
        return
    assert result.marginal_offer is not None and result.marginal_bid is not None
    assert result.marginal_offer <= result.price <= result.marginal_bid
    # Nothing left that could still trade: the unmatched remainder does not cross.
    by_id = {o.id: o for o in orders}
    left = {o.id: o.wh for o in orders}
    for t in result.trades:
        left[t.offer] -= t.wh
        left[t.bid] -= t.wh
    open_offers = [by_id[i].price for i, q in left.items() if q and by_id[i].side == SELL]
    open_bids = [by_id[i].price for i, q in left.items() if q and by_id[i].side == BUY]
    assert not open_offers or not open_bids or min(open_offers) > max(open_bids)


@settings(max_examples=200, deadline=None)
@given(orders_st, st.randoms(use_true_random=False))
def test_same_book_clears_the_same_way(orders, rnd):
    shuffled = list(orders)
    rnd.shuffle(shuffled)
    assert clear(orders) == clear(shuffled)


def test_worked_example():
    a, b, c = HOUSES[:3]
    orders = [
        Order(OrderId(a, 1), SELL, 2000, 100),
        Order(OrderId(b, 1), SELL, 1000, 180),
        Order(OrderId(c, 1), BUY, 2500, 250),
        Order(OrderId(c, 2), BUY, 1000, 120),
    ]
    result = clear(orders)
    # a's 2000 Wh go to c's first bid; b's 1000 Wh: 500 to c's first bid, then
    # c's second bid (120) is below b's offer (180): stop. Marginal pair: 180 / 250.
    assert [(t.offer.seq, t.bid.household, t.wh) for t in result.trades] == [
        (1, c, 2000),
        (1, c, 500),
    ]
    assert result.price == 215 and result.volume_wh == 2500


@settings(max_examples=200, deadline=None)
@given(
    orders_st,
    st.lists(st.tuples(st.integers(0, 30_000), st.integers(0, 30_000)), min_size=6, max_size=6),
)
def test_statements_add_up(orders, meters):
    result = clear(orders)
    prices = Prices(retail=300, feed_in=80)
    statements = [
        settle(
            h,
            interval=0,
            trades=result.trades,
            metered=Metered(imp, exp),
            prices=prices,
            price=result.price,
        )
        for h, (imp, exp) in zip(HOUSES, meters, strict=True)
    ]
    assert sum(s.market for s in statements) == 0  # money between neighbours balances
    assert sum(s.sold_wh for s in statements) == sum(s.bought_wh for s in statements)
    for s, (imp, exp) in zip(statements, meters, strict=True):
        assert s.import_wh == imp and s.export_wh == exp
        delivered = min(s.sold_wh, exp)
        assert s.feed_in == 80 * (exp - delivered)
        assert s.shortfall == -300 * (s.sold_wh - delivered)
        assert s.net == s.market + s.shortfall + s.feed_in + s.grid_import + s.unused


def test_ten_thousand_orders_clear_quickly():
    import time

    rnd = random.Random(7)
    orders = [
        Order(
            OrderId(f"did:key:z{i % 700}", i),
            rnd.choice([SELL, BUY]),
            rnd.randint(1, 5000),
            rnd.randint(50, 400),
        )
        for i in range(10_000)
    ]
    start = time.perf_counter()
    clear(orders)
    assert time.perf_counter() - start < 1.0  # bench/market.py measures it properly

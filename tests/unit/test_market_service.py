"""The market on a database: vouched meters, orders and their refusals, clearing, settlement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.chain.store import ChainStore
from gateway.energy.meter import VOUCHED_READING, MeterRecorder, enroll
from gateway.energy.p1 import format_telegram, parse_telegram
from gateway.identity import keystore, offline_resolver, verify_jws
from gateway.identity.signing import Signer, sign_jws
from gateway.market.orders import ORDER_TYP, OrderRefused
from gateway.market.service import Market, MarketSettings
from gateway.registry import Registry

T0 = 1_700_000_100_000  # a time inside interval 1_700_000_100_000 - (…% 60_000)
INTERVAL = 60_000


def telegram(import_wh: int, export_wh: int, export_w: int, equipment: str = "E0001"):
    lines = [
        "1-3:0.2.8(50)",
        "0-0:1.0.0(240615120000S)",
        f"0-0:96.1.1({equipment.encode().hex().upper()})",
        f"1-0:1.8.1({import_wh // 1000:06d}.{import_wh % 1000:03d}*kWh)",
        "1-0:1.8.2(000000.000*kWh)",
        f"1-0:2.8.1({export_wh // 1000:06d}.{export_wh % 1000:03d}*kWh)",
        "1-0:2.8.2(000000.000*kWh)",
        "0-0:96.14.0(0001)",
        "1-0:1.7.0(00.000*kW)",
        f"1-0:2.7.0({export_w // 1000:02d}.{export_w % 1000:03d}*kW)",
    ]
    return parse_telegram(format_telegram(lines))


def order(signer: Signer, seq: int, side: str, interval: int, wh: int, price: int) -> bytes:  # noqa: PLR0917
    body = {
        "did": signer.did,
        "seq": seq,
        "ts": T0,
        "side": side,
        "interval": interval,
        "wh": wh,
        "price": price,
    }
    return sign_jws(json.dumps(body).encode(), signer, headers={"typ": ORDER_TYP}).encode()


@pytest.fixture
def world(db, tmp_path: Path, new_did):
    gateway = new_did()
    chain = ChainStore(db)
    registry = Registry(db, offline_resolver(), chain=chain, gateway_did=gateway.did)
    houses = [new_did() for _ in range(3)]
    meters = []
    for i, h in enumerate(houses):
        registry.register(h.did, name=f"house {i}", kind="household", actor="t", now=T0 / 1000)
        meter = enroll(
            db,
            registry,
            state_dir=tmp_path,
            gateway_did=gateway.did,
            household=h.did,
            name=f"meter {i}",
            port=f"/dev/p{i}",
            actor="t",
            now=T0 / 1000,
        )
        key = keystore.load_private_key(Path(meter.key_file), None)
        meters.append(MeterRecorder(meter, db, Signer.for_did_key(key), gateway.did))
    market = Market(
        db,
        registry,
        offline_resolver(),
        gateway,
        MarketSettings(interval_ms=INTERVAL, retail=300, feed_in=80),
    )
    return gateway, houses, meters, market, chain


def test_vouched_reading_is_signed_by_the_meter_key_and_says_so(world, tmp_path):
    gateway, _, meters, market, _ = world
    entry = meters[0].record(telegram(1000, 0, 2500), T0)
    recorded = ChainStore(market._db).get(entry)
    assert recorded.kind == VOUCHED_READING and recorded.actor == meters[0].meter.did
    verified = verify_jws(
        recorded.payload, resolver=offline_resolver(), relationship="assertionMethod", now=T0 / 1000
    )
    body = json.loads(verified.payload)
    assert body["vouched_by"] == gateway.did and body["values"]["import_t1_wh"]["value"] == 1000
    assert oct(Path(meters[0].meter.key_file).stat().st_mode & 0o777) == "0o600"
    # Another meter on the same port: refused, not continued under this identity.
    assert meters[0].record(telegram(1000, 0, 0, equipment="E9999"), T0 + 1) is None
    assert meters[0].counts["wrong_meter"] == 1


def test_orders_trades_and_statements(world):
    _, (a, b, c), meters, market, _ = world
    start = T0 - T0 % INTERVAL + INTERVAL
    # Export capacity on record: a has shown 10 kW, b 4 kW, c none.
    meters[0].record(telegram(0, 0, 10_000), T0)
    meters[1].record(telegram(0, 0, 4_000), T0)
    meters[2].record(telegram(0, 0, 0), T0)
    answers = [
        market.submit(order(a, 1, "sell", start, 100, 100), T0, topic_did=a.did),
        market.submit(order(b, 1, "sell", start, 60, 150), T0, topic_did=b.did),
        market.submit(order(c, 1, "buy", start, 120, 200), T0, topic_did=c.did),
        market.submit(order(b, 2, "buy", start, 50, 90), T0, topic_did=b.did),
    ]
    assert [m["status"] for _, m in answers] == ["accepted"] * 4
    refused = [
        (order(c, 2, "sell", start, 10, 100), "no_export_capacity"),  # c has shown no export
        (order(a, 2, "sell", start, 1000, 100), "no_export_capacity"),  # 10 kW * 1 min = 166 Wh
        (order(a, 1, "sell", start, 99, 100), "replay"),
        (order(a, 3, "sell", start - INTERVAL, 10, 100), "interval_closed"),
        (order(a, 4, "sell", start + 1, 10, 100), "interval_closed"),
        (order(a, 5, "buy", start, 0, 100), "bad_quantity"),
        (order(a, 6, "buy", start, 10, -1), "bad_price"),
        (order(a, 7, "buy", start + 10**9 * INTERVAL, 10, 1), "interval_too_far"),
        (b"not a jws", "malformed"),
    ]
    for token, reason in refused:
        _, answer = market.submit(token, T0, topic_did=a.did if token != refused[0][0] else c.did)
        assert answer["reason"] == reason, (reason, answer)
    # The same order again (its answer was lost): the same entry, recorded once.
    again = market.submit(order(a, 1, "sell", start, 100, 100), T0, topic_did=a.did)
    assert again[1]["entry"] == answers[0][1]["entry"]
    _, forged = market.submit(order(b, 9, "buy", start, 1, 1), T0, topic_did=a.did)
    assert forged["reason"] == "bad_signature"
    with pytest.raises(OrderRefused):
        market.submit(b"x.y.z", T0)

    assert market.tick(start - 1) == []
    messages = market.tick(start)
    trades = market.trades(start)
    # a sells 100 @100 to c; b sells 20 of its 60 @150 to c (c wants 120); b's bid at 90 < 150.
    assert [(t["seller"], t["buyer"], t["wh"]) for t in trades] == [
        (a.did, c.did, 100),
        (b.did, c.did, 20),
    ]
    assert {t["price"] for t in trades} == {175}
    assert len(messages) == 4  # each trade to both parties
    # Meter data for the interval: a exported 90 (short 10), b exported 50, c imported 150.
    end = start + INTERVAL
    meters[0].record(telegram(0, 0, 10_000), start - 5)
    meters[1].record(telegram(0, 0, 4_000), start - 5)
    meters[2].record(telegram(0, 0, 0), start - 5)
    assert market.tick(end) == []  # not settled: no reading at or after the end yet
    meters[0].record(telegram(0, 90, 0), end + 1)
    meters[1].record(telegram(10, 50, 0), end + 1)
    meters[2].record(telegram(150, 0, 0), end + 1)
    statements = {h: m for h, m in market.tick(end + 2)}
    sa, sb, sc = statements[a.did], statements[b.did], statements[c.did]
    assert (sa["sold_wh"], sa["export_wh"], sa["market"]) == (100, 90, 17_500)
    assert sa["shortfall"] == -300 * 10 and sa["feed_in"] == 0
    assert (sb["sold_wh"], sb["export_wh"], sb["feed_in"]) == (20, 50, 80 * 30)
    assert sb["grid_import"] == -300 * 10  # its bid did not trade; it imported 10 Wh
    assert (sc["bought_wh"], sc["import_wh"], sc["grid_import"]) == (120, 150, -300 * 30)
    assert sa["market"] + sb["market"] + sc["market"] == 0
    assert market.statements(a.did, start)[0]["net"] == sa["net"]
    assert market.tick(end + 3) == []  # settled once


def test_a_silent_meter_holds_up_its_own_households_statement_only(world):
    _, (a, b, c), meters, market, _ = world
    start = T0 - T0 % INTERVAL + INTERVAL
    end = start + INTERVAL
    meters[0].record(telegram(0, 0, 10_000), T0)
    for i in range(3):
        meters[i].record(telegram(0, 0, 10_000 if i == 0 else 0), start - 5)
    market.submit(order(a, 1, "sell", start, 100, 100), T0, topic_did=a.did)
    market.submit(order(b, 1, "buy", start, 60, 200), T0, topic_did=b.did)
    market.submit(order(c, 1, "buy", start, 40, 200), T0, topic_did=c.did)
    market.tick(start)
    meters[0].record(telegram(0, 100, 0), end + 1)
    meters[1].record(telegram(60, 0, 0), end + 1)  # c's meter says nothing after the end
    settled = dict(market.tick(end + 2))
    assert set(settled) == {a.did, b.did}
    assert market.unsettled(end + 2) == [start]  # c's statement is still to come
    meter = meters[2].meter.did
    why = f"meter {meter} has no reading at or after the interval's end yet"
    assert market.overdue(end + 2) == []  # not late yet: meters report at their own pace
    assert market.overdue(end + INTERVAL) == [(start, c.did, why)]
    assert market.tick(end + 3) == []  # nothing new: nothing made twice
    meters[2].record(telegram(40, 0, 0), end + INTERVAL)
    late = dict(market.tick(end + INTERVAL + 1))
    assert set(late) == {c.did} and late[c.did]["bought_wh"] == 40
    assert market.unsettled(end + INTERVAL + 1) == [] and market.overdue(end + INTERVAL + 1) == []
    assert [s["household"] for s in market.statements(a.did, start)] == [a.did]
    assert len(market.statements(c.did, start)) == 1


def test_an_encrypted_meters_frame_counter_survives_a_restart(world, db):
    """The last recorded frame counter is read back from the record: after a restart a
    frame recorded before it is a replay."""
    import dataclasses

    gateway, _, meters, _, _ = world
    assert meters[0].last_frame_counter == -1
    sealed = dataclasses.replace(telegram(1000, 0, 0), frame_counter=41, variant="smarty")
    meters[0].record(sealed, T0)
    signer = meters[0]._signer
    again = MeterRecorder(meters[0].meter, db, signer, gateway.did)
    assert again.last_frame_counter == 41
    assert (
        MeterRecorder(meters[1].meter, db, meters[1]._signer, gateway.did).last_frame_counter == -1
    )


def test_meter_keys_are_checked_kept_0600_and_refused_when_shared(tmp_path):
    from gateway.energy.meter import MeterError, load_dlms_keys, parse_dlms_keys, set_dlms_keys

    key = "000102030405060708090a0b0c0d0e0f"
    assert parse_dlms_keys(key.encode() + b"\n", "smarty") == (bytes.fromhex(key), None)
    both = f"{key}\n{'11' * 16}".encode()
    assert parse_dlms_keys(both, "sagemcom-t210-encrypted")[1] == b"\x11" * 16
    for bad, variant in ((b"", "smarty"), (key[:-1].encode(), "smarty"), (both, "smarty")):
        with pytest.raises(MeterError) as caught:
            parse_dlms_keys(bad, variant)
        assert key not in str(caught.value)
    with pytest.raises(MeterError, match="takes an encryption and an authentication key"):
        parse_dlms_keys(key.encode(), "sagemcom-t210-encrypted")
    with pytest.raises(MeterError, match="not encrypted"):
        set_dlms_keys(tmp_path, "did:key:z6MkMeter", "dsmr5", key.encode())
    path = set_dlms_keys(tmp_path, "did:key:z6MkMeter", "smarty", key.encode())
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_dlms_keys(tmp_path, "did:key:z6MkMeter", "smarty")[0] == bytes.fromhex(key)
    path.chmod(0o644)
    with pytest.raises(MeterError, match="group or others"):
        load_dlms_keys(tmp_path, "did:key:z6MkMeter", "smarty")

"""Vouched inverters on a database: enrolment and its binding on the record, readings and
their refusals, a household's latest production, and settlement's production cross-check."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from gateway.chain.store import ChainStore
from gateway.energy.inverter import (
    BINDING,
    BINDING_TYP,
    InverterError,
    InverterRecorder,
    enroll,
    inverters,
    latest_readings,
)
from gateway.energy.meter import VOUCHED_READING, MeterRecorder
from gateway.energy.meter import enroll as enroll_meter
from gateway.energy.modbus_link import LinkError, LinkSpec
from gateway.energy.p1 import format_telegram, parse_telegram
from gateway.energy.sunspec import InverterValues, Nameplate, SunSpecRefused
from gateway.identity import keystore, offline_resolver, verify_jws
from gateway.identity.signing import Signer, sign_jws
from gateway.market.auction import OrderId, Trade
from gateway.market.orders import ORDER_TYP
from gateway.market.service import Market, MarketSettings
from gateway.market.settlement import Metered, Prices, settle
from gateway.registry import Registry

T0 = 1_700_000_100_000
INTERVAL = 60_000
PLATE = Nameplate("Maker", "Inverter X", "2.1", "SN-1")


@pytest.fixture
def world(db, tmp_path: Path, new_did):
    gateway = new_did()
    registry = Registry(db, offline_resolver(), chain=ChainStore(db), gateway_did=gateway.did)
    house = new_did()
    registry.register(house.did, name="house", kind="household", actor="t", now=T0 / 1000)
    inverter = enroll(
        db,
        registry,
        state_dir=tmp_path,
        gateway=gateway,
        household=house.did,
        name="roof",
        spec=LinkSpec("tcp://192.0.2.10:502", 1),
        serial=None,
        actor="t",
        now=T0 / 1000,
    )
    key = keystore.load_private_key(Path(inverter.key_file), None)
    recorder = InverterRecorder(inverter, db, Signer.for_did_key(key), gateway.did)
    return gateway, registry, house, inverter, recorder


def body_of(db, entry: int, now: float = T0 / 1000) -> dict:
    recorded = ChainStore(db).get(entry)
    verified = verify_jws(
        recorded.payload, resolver=offline_resolver(), relationship="assertionMethod", now=now
    )
    return {"kind": recorded.kind, "actor": recorded.actor, **json.loads(verified.payload)}


def test_enrolment_registers_the_inverter_and_the_gateway_binds_it_on_the_record(db, world):
    gateway, registry, house, inverter, _ = world
    device = registry.find(inverter.did)
    assert device.kind == "inverter" and device.owner == house.did
    assert device.metadata["identity"] == "vouched" and device.metadata["vouched_by"] == gateway.did
    assert oct(Path(inverter.key_file).stat().st_mode & 0o777) == "0o600"
    binding = body_of(db, inverter.binding_entry)
    assert binding["kind"] == BINDING and binding["actor"] == gateway.did
    assert binding["inverter"] == inverter.did and binding["household"] == house.did
    assert binding["link"] == "tcp://192.0.2.10:502" and binding["unit"] == 1
    token = ChainStore(db).get(inverter.binding_entry).payload
    header = json.loads(base64.urlsafe_b64decode(token.split(b".")[0] + b"=="))
    assert header["typ"] == BINDING_TYP and header["kid"].startswith(gateway.did)
    assert inverters(db, house.did) == [inverter]


@pytest.mark.parametrize(
    "spec",
    [
        LinkSpec("tcp://192.0.2.10:502", 300),
        LinkSpec("tcp://192.0.2.10:99999"),
        LinkSpec("tcp://192.0.2.10:502/path"),
        LinkSpec("http://192.0.2.10"),
        LinkSpec("ttyUSB0"),
        LinkSpec("/dev/ttyUSB0", parity="X"),
        LinkSpec("/dev/ttyUSB0", baudrate=10),
    ],
)
def test_a_bad_link_is_refused_before_anything_is_made(db, world, tmp_path, spec):
    gateway, registry, house, *_ = world
    before = len(list((tmp_path / "keys" / "inverters").iterdir()))
    with pytest.raises(LinkError):
        enroll(
            db, registry, state_dir=tmp_path, gateway=gateway, household=house.did, name="x",
            spec=spec, serial=None, actor="t", now=T0 / 1000,
        )  # fmt: skip
    assert len(list((tmp_path / "keys" / "inverters").iterdir())) == before


def test_only_a_household_gets_an_inverter(db, world, tmp_path, new_did):
    gateway, registry, *_ = world
    with pytest.raises(InverterError, match="not a registered household"):
        enroll(
            db, registry, state_dir=tmp_path, gateway=gateway, household=new_did().did,
            name="x", spec=LinkSpec("/dev/ttyUSB0"), serial=None, actor="t", now=T0 / 1000,
        )  # fmt: skip


def test_readings_are_signed_by_the_inverter_key_and_bound_to_its_serial(db, world):
    gateway, _, house, inverter, recorder = world
    entry = recorder.record(PLATE, InverterValues(2500, 10_000, 4), T0)
    body = body_of(db, entry)
    assert body["kind"] == VOUCHED_READING and body["actor"] == inverter.did
    assert body["type"] == "production" and body["vouched_by"] == gateway.did
    assert body["values"] == {"power_w": 2500, "energy_wh": 10_000, "state": 4}
    assert body["inverter"]["serial"] == "SN-1" and body["seq"] == 1
    # Another inverter on the same link: refused, not continued under this identity.
    other = Nameplate("Maker", "Inverter X", "2.1", "SN-2")
    with pytest.raises(SunSpecRefused, match="wrong_inverter"):
        recorder.record(other, InverterValues(2500, 10_100, 4), T0 + 1000)
    # Lifetime energy going backwards: refused.
    with pytest.raises(SunSpecRefused, match="energy_backwards"):
        recorder.record(PLATE, InverterValues(2500, 9_999, 4), T0 + 2000)
    assert recorder.counts == {"recorded": 1, "wrong_inverter": 1, "energy_backwards": 1}
    recorder.record(PLATE, InverterValues(1200, 10_050, 4), T0 + 3000)
    [latest] = latest_readings(db.conn, house.did)
    assert (latest.power_w, latest.energy_wh, latest.ts) == (1200, 10_050, T0 + 3000)
    # After a restart, the serial first seen and the last energy still hold.
    key = keystore.load_private_key(Path(inverter.key_file), None)
    [again] = inverters(db)
    assert again.serial == "SN-1"
    restarted = InverterRecorder(again, db, Signer.for_did_key(key), gateway.did)
    with pytest.raises(SunSpecRefused, match="energy_backwards"):
        restarted.record(PLATE, InverterValues(0, 10_049, 2), T0 + 4000)
    with pytest.raises(SunSpecRefused, match="wrong_inverter"):
        restarted.record(other, InverterValues(0, 10_060, 2), T0 + 4000)
    assert body_of(db, restarted.record(PLATE, InverterValues(0, 10_060, 2), T0 + 5000))["seq"] == 3


def test_a_serial_given_at_enrolment_is_bound_from_the_first_reading(db, world, tmp_path):
    gateway, registry, house, *_ = world
    inverter = enroll(
        db, registry, state_dir=tmp_path, gateway=gateway, household=house.did, name="shed",
        spec=LinkSpec("/dev/ttyUSB1", 3, 19200, "E"), serial="SN-7", actor="t", now=T0 / 1000,
    )  # fmt: skip
    assert body_of(db, inverter.binding_entry)["serial"] == "SN-7"
    key = keystore.load_private_key(Path(inverter.key_file), None)
    recorder = InverterRecorder(inverter, db, Signer.for_did_key(key), gateway.did)
    with pytest.raises(SunSpecRefused, match="wrong_inverter"):
        recorder.record(PLATE, InverterValues(1, 1, 4), T0)


# -- settlement's production cross-check ----------------------------------------------------

PRICES = Prices(retail=300, feed_in=80)


def trade(seller: str, buyer: str, wh: int, price: int = 100) -> Trade:
    return Trade(0, OrderId(seller, 1), OrderId(buyer, 1), wh, price)


def test_without_inverters_the_statement_is_unchanged() -> None:
    s = settle(
        "a", interval=0, trades=[trade("a", "b", 500)], metered=Metered(0, 800),
        prices=PRICES, price=100,
    )  # fmt: skip
    assert s.feed_in == 80 * 300 and s.shortfall == 0 and s.held_wh == 0
    assert "produced_wh" not in s.as_json() and "held_wh" not in s.as_json()


@pytest.mark.parametrize(
    ("export", "produced", "tolerance", "held", "feed_in", "shortfall"),
    [
        (800, 1000, 0, 0, 80 * 300, 0),  # exported less than produced: as before
        (800, 800, 0, 0, 80 * 300, 0),
        (800, 750, 50, 0, 80 * 300, 0),  # within the tolerance
        (800, 700, 50, 50, 80 * 250, 0),  # 50 Wh beyond production + tolerance: held
        (800, 300, 0, 500, 0, -300 * 200),  # sold 500, backed 300: 200 short
        (800, 0, 0, 800, 0, -300 * 500),
        (800, -50, 0, 800, 0, -300 * 500),  # a negative difference counts as none
    ],
)
def test_export_beyond_production_is_held_not_paid(  # noqa: PLR0917
    export: int, produced: int, tolerance: int, held: int, feed_in: int, shortfall: int
) -> None:
    s = settle(
        "a", interval=0, trades=[trade("a", "b", 500)], metered=Metered(0, export),
        prices=PRICES, price=100, produced_wh=produced, tolerance_wh=tolerance,
    )  # fmt: skip
    assert (s.held_wh, s.feed_in, s.shortfall) == (held, feed_in, shortfall)
    assert s.market == 500 * 100 and s.export_wh == export
    body = s.as_json()
    assert body["produced_wh"] == produced and body["held_wh"] == held


def telegram(export_wh: int):
    lines = [
        "1-3:0.2.8(50)",
        "0-0:1.0.0(240615120000S)",
        f"0-0:96.1.1({b'E0001'.hex().upper()})",
        "1-0:1.8.1(000000.000*kWh)",
        "1-0:1.8.2(000000.000*kWh)",
        f"1-0:2.8.1({export_wh // 1000:06d}.{export_wh % 1000:03d}*kWh)",
        "1-0:2.8.2(000000.000*kWh)",
        "0-0:96.14.0(0001)",
        "1-0:1.7.0(00.000*kW)",
        "1-0:2.7.0(10.000*kW)",
    ]
    return parse_telegram(format_telegram(lines))


def test_the_market_settles_a_household_against_its_inverters(db, world, tmp_path, new_did):
    gateway, registry, house, inverter, recorder = world
    buyer = new_did()
    registry.register(buyer.did, name="buyer", kind="household", actor="t", now=T0 / 1000)
    asleep = enroll(  # the buyer's inverter never answers (it is night on its roof)
        db, registry, state_dir=tmp_path, gateway=gateway, household=buyer.did, name="asleep",
        spec=LinkSpec("/dev/ttyUSB9"), serial=None, actor="t", now=T0 / 1000,
    )  # fmt: skip
    meters = []
    for h in (house, buyer):
        meter = enroll_meter(
            db, registry, state_dir=tmp_path, gateway_did=gateway.did, household=h.did,
            name="m", port="/dev/x", actor="t", now=T0 / 1000,
        )  # fmt: skip
        key = keystore.load_private_key(Path(meter.key_file), None)
        meters.append(MeterRecorder(meter, db, Signer.for_did_key(key), gateway.did))
    market = Market(
        db, registry, offline_resolver(), gateway,
        MarketSettings(interval_ms=INTERVAL, production_tolerance_wh=20),
    )  # fmt: skip
    start = T0 - T0 % INTERVAL + INTERVAL
    end = start + INTERVAL
    meters[0].record(telegram(1000), T0)
    meters[1].record(telegram(0), T0)
    recorder.record(PLATE, InverterValues(3000, 50_000, 4), T0)
    for signer, side in ((house, "sell"), (buyer, "buy")):
        body = {"did": signer.did, "seq": 1, "ts": T0, "side": side, "interval": start,
                "wh": 100, "price": 100}  # fmt: skip
        token = sign_jws(json.dumps(body).encode(), signer, headers={"typ": ORDER_TYP})
        assert market.submit(token.encode(), T0, topic_did=signer.did)[1]["status"] == "accepted"
    market.tick(start)
    meters[0].record(telegram(1150), end)  # exported 150 Wh …
    meters[1].record(telegram(0), end)
    # The buyer exported nothing: its inverter's silence holds nothing up.
    assert set(dict(market.tick(end + 1))) == {buyer.did}
    assert inverters(db, buyer.did) == [asleep]
    # … the seller's statement waits for the inverter's reading at or after the end:
    overdue = market.overdue(end + 2 * INTERVAL)
    assert [(h, why) for _, h, why in overdue] == [
        (house.did, f"inverter {inverter.did} has no reading at or after the interval's end yet")
    ]
    recorder.record(PLATE, InverterValues(3000, 50_110, 4), end)  # … of 110 Wh produced
    settled = dict(market.tick(end + 2))
    statement = settled[house.did]
    assert statement["produced_wh"] == 110 and statement["held_wh"] == 20  # 150 - (110 + 20)
    assert statement["feed_in"] == 80 * 30  # (150 - 20 held) - 100 sold
    assert len(statement["production_readings"]) == 2
    assert "produced_wh" not in market.statements(buyer.did, start)[0]  # nothing to check


def test_one_inverter_per_link_and_unit_and_one_setting_per_line(db, world, tmp_path):
    gateway, registry, house, *_ = world

    def enrol(spec: LinkSpec):
        return enroll(
            db, registry, state_dir=tmp_path, gateway=gateway, household=house.did,
            name="x", spec=spec, serial=None, actor="t", now=T0 / 1000,
        )  # fmt: skip

    with pytest.raises(InverterError, match="enrolled there already"):
        enrol(LinkSpec("tcp://192.0.2.10:502", 1))  # the fixture's inverter
    enrol(LinkSpec("tcp://192.0.2.10:502", 2))  # another unit behind the same endpoint
    enrol(LinkSpec("/dev/ttyUSB3", 1, 19200, "E"))
    enrol(LinkSpec("/dev/ttyUSB3", 2, 19200, "E"))  # a second inverter on the RS-485 line
    with pytest.raises(InverterError, match="share its settings"):
        enrol(LinkSpec("/dev/ttyUSB3", 3, 9600, "N"))
    enroll_meter(
        db, registry, state_dir=tmp_path, gateway_did=gateway.did, household=house.did,
        name="m", port="/dev/ttyUSB0", actor="t", now=T0 / 1000,
    )  # fmt: skip
    with pytest.raises(InverterError, match="port of meter"):
        enrol(LinkSpec("/dev/ttyUSB0", 1))
    assert len(inverters(db, house.did)) == 4


def test_home_assistant_is_told_her_inverters_production_summed(db, world, tmp_path):
    """Her Home Assistant's solar entities come from the inverters' recorded readings."""
    from gateway.market.homeassistant import InverterNow
    from gateway.market.homeassistant_households import recorded_inverter, snapshot

    gateway, registry, house, _, recorder = world
    assert recorded_inverter(db, house.did) is None  # no reading yet: nothing to tell
    recorder.record(PLATE, InverterValues(2500, 10_000, 4), T0)
    second = enroll(
        db,
        registry,
        state_dir=tmp_path,
        gateway=gateway,
        household=house.did,
        name="garage",
        spec=LinkSpec("tcp://192.0.2.11:502", 1),
        serial=None,
        actor="t",
        now=T0 / 1000,
    )
    key = keystore.load_private_key(Path(second.key_file), None)
    InverterRecorder(second, db, Signer.for_did_key(key), gateway.did).record(
        Nameplate("Maker", "Inverter Y", "1.0", "SN-9"), InverterValues(700, 5_000, 4), T0 + 500
    )
    assert recorded_inverter(db, house.did) == InverterNow(3200, 15_000)
    assert snapshot(db, house.did).inverter == InverterNow(3200, 15_000)

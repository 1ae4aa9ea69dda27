"""Home Assistant discovery (gateway/market/homeassistant.py and its queries): the payloads
against a JSON schema written from Home Assistant's documentation
(tests/vectors/homeassistant/) and the Energy dashboard's rules, the state gate, the broker
role of a household's account, and a household's figures from a real market on a database."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from gateway.auth import homeassistant_access as access
from gateway.chain.store import ChainStore
from gateway.energy.meter import MeterRecorder, enroll
from gateway.energy.p1 import format_telegram, parse_telegram
from gateway.identity import keystore, offline_resolver
from gateway.identity.signing import Signer, sign_jws
from gateway.market import homeassistant as ha
from gateway.market import homeassistant_households as households
from gateway.market.orders import ORDER_TYP
from gateway.market.service import Market, MarketSettings
from gateway.registry import Registry

SCHEMA = json.loads(
    (
        Path(__file__).parents[1] / "vectors" / "homeassistant" / "device-discovery.schema.json"
    ).read_text()
)
DID = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
HOUSE = ha.Household(DID, "Lindenstr. 4")
WITH_INVERTER = ha.Snapshot(inverter=ha.InverterNow(1200, 3_456_789))

#: Home Assistant core, homeassistant/components/sensor/const.py: DEVICE_CLASS_STATE_CLASSES
#: and (part of) DEVICE_CLASS_UNITS, for the classes didgw uses.
STATE_CLASSES = {
    "energy": {"total", "total_increasing"},
    "power": {"measurement"},
    "monetary": {"total"},
}
UNITS = {"energy": {"Wh", "kWh", "MWh", "MJ", "GJ"}, "power": {"W", "kW"}}
#: The Energy dashboard: grid consumption and return, solar production.
DASHBOARD = {"grid_import_kwh", "grid_export_kwh", "solar_kwh"}


def _payload(snapshot: ha.Snapshot | None = None) -> dict:
    snapshot = snapshot or ha.Snapshot()
    return ha.discovery_payload(HOUSE, snapshot, prefix="didgw", version="1.2.3")


@pytest.mark.parametrize("snapshot", [ha.Snapshot(), WITH_INVERTER], ids=["meter", "inverter"])
def test_discovery_payload_follows_the_documented_schema(snapshot: ha.Snapshot) -> None:
    payload = _payload(snapshot)
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(payload, SCHEMA, cls=jsonschema.Draft202012Validator)
    node = access.node_id(DID)
    unique = [c["unique_id"] for c in payload["components"].values()]
    assert len(set(unique)) == len(unique) and all(u.startswith(f"didgw_{node}_") for u in unique)
    assert payload["device"]["manufacturer"] == "didgw"
    assert payload["device"]["identifiers"] == [f"didgw_{node}"]
    assert payload["state_topic"] == f"didgw/ha/{node}/state"
    assert payload["availability_topic"] == "didgw/ha/status"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda p: p.pop("origin"), "origin is required"),
        (lambda p: next(iter(p["components"].values())).pop("unique_id"), "unique_id required"),
        (lambda p: next(iter(p["components"].values())).update(unit="kWh"), "misspelt option"),
        (lambda p: next(iter(p["components"].values())).update(platform="light"), "not a sensor"),
        (lambda p: p["device"].pop("identifiers"), "a device needs identifiers"),
        (lambda p: p.update(state_topic="didgw/ha/+/state"), "a topic with a wildcard"),
    ],
)
def test_the_schema_refuses_what_home_assistant_would_not_take(change, why: str) -> None:
    payload = _payload()
    change(payload)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, SCHEMA, cls=jsonschema.Draft202012Validator)


def test_entities_meet_the_energy_dashboards_rules() -> None:
    components = _payload(WITH_INVERTER)["components"].values()
    by_key = {re.search(r"value_json\.(\w+)", c["value_template"])[1]: c for c in components}
    assert set(by_key) >= DASHBOARD
    for key, component in by_key.items():
        device_class = component.get("device_class")
        if device_class in STATE_CLASSES:
            assert component["state_class"] in STATE_CLASSES[device_class], key
        if device_class in UNITS:
            assert component["unit_of_measurement"] in UNITS[device_class], key
        if device_class == "monetary":
            assert component["unit_of_measurement"] == "EUR", key
    for key in DASHBOARD:
        assert by_key[key]["device_class"] == "energy"
        assert by_key[key]["state_class"] in {"total", "total_increasing"}
    assert by_key["solar_w"]["device_class"] == "power"
    assert by_key["settled_net_eur"]["state_class"] == "total"


def test_an_inverter_is_one_more_pair_of_entities_and_every_template_has_a_value() -> None:
    assert len(_payload(WITH_INVERTER)["components"]) == len(_payload()["components"]) + 2
    for snapshot in (ha.Snapshot(), WITH_INVERTER):
        state = ha.state_payload(snapshot)
        for component in _payload(snapshot)["components"].values():
            key = re.search(r"value_json\.(\w+)", component["value_template"])[1]
            assert key in state
    state = ha.state_payload(WITH_INVERTER)
    assert (state["solar_w"], state["solar_kwh"]) == (1200, 3456.789)
    assert "solar_w" not in ha.state_payload(ha.Snapshot())


def test_state_units_are_exact_and_unknown_is_null() -> None:
    state = ha.state_payload(
        ha.Snapshot(import_wh=1_234_567, export_wh=1, market_ueur=17_500, net_ueur=-3_000_001)
    )
    assert state["grid_import_kwh"] == 1234.567 and state["grid_export_kwh"] == 0.001
    assert state["market_income_eur"] == 0.0175 and state["settled_net_eur"] == -3.000001
    assert state["grid_import_w"] is None  # rendered "None": unknown in Home Assistant
    assert ha.encode({"b": 1, "a": 2}) == b'{"a":2,"b":1}'


def test_state_gate_sends_changes_at_most_every_n_seconds() -> None:
    gate = ha.StateGate(every_s=10)
    assert gate.due("n", b"1", 0)
    assert not gate.due("n", b"1", 100)  # unchanged: never again
    assert not gate.due("n", b"2", 5)  # changed, but too soon
    assert gate.due("n", b"2", 10)
    assert gate.due("other", b"2", 10)  # households are apart
    gate.forget("n")
    assert gate.due("n", b"2", 11)  # after a reconnect: whatever it is


def test_her_role_reads_her_subtree_and_the_status_and_publishes_nothing() -> None:
    node = access.node_id(DID)
    create, modify = access.role_commands("didgw", node)
    assert create["rolename"] == modify["rolename"] == f"didgw-ha-{node}"
    acls = {(a["acltype"], a["topic"]) for a in create["acls"]}
    assert acls == {
        ("subscribePattern", f"didgw/ha/{node}/#"),
        ("publishClientReceive", f"didgw/ha/{node}/#"),
        ("subscribeLiteral", "didgw/ha/status"),
        ("publishClientReceive", "didgw/ha/status"),
    }
    assert all(a["allow"] for a in create["acls"])
    (client,) = access.client_commands(node, "p" * 32)
    assert client["username"] == f"ha-{node}" and not client["username"].startswith("didgw-")
    assert access.discovery_topic("didgw", node).startswith(access.discovery_prefix("didgw", node))
    with pytest.raises(ValueError, match="16 characters"):
        access.client_commands(node, "short")
    with pytest.raises(ValueError, match="node id"):
        access.role_commands("didgw", "+/#")
    assert access.node_id(DID) != access.node_id(DID[:-1] + "L")


T0 = 1_700_000_100_000
INTERVAL = 60_000


def _telegram(import_wh: int, export_wh: int, export_w: int):
    lines = [
        "1-3:0.2.8(50)",
        "0-0:1.0.0(240615120000S)",
        f"0-0:96.1.1({b'E0001'.hex().upper()})",
        f"1-0:1.8.1({import_wh // 1000:06d}.{import_wh % 1000:03d}*kWh)",
        "1-0:1.8.2(000000.000*kWh)",
        f"1-0:2.8.1({export_wh // 1000:06d}.{export_wh % 1000:03d}*kWh)",
        "1-0:2.8.2(000000.000*kWh)",
        "0-0:96.14.0(0001)",
        "1-0:1.7.0(00.250*kW)",
        f"1-0:2.7.0({export_w // 1000:02d}.{export_w % 1000:03d}*kW)",
    ]
    return parse_telegram(format_telegram(lines))


def _order(signer: Signer, seq: int, side: str, interval: int, wh: int, price: int) -> bytes:  # noqa: PLR0917
    body = {"did": signer.did, "seq": seq, "ts": T0, "side": side, "interval": interval}
    body |= {"wh": wh, "price": price}
    return sign_jws(json.dumps(body).encode(), signer, headers={"typ": ORDER_TYP}).encode()


def test_a_households_figures_come_from_her_meter_orders_and_statements(
    db, tmp_path: Path, new_did
) -> None:
    gateway = new_did()
    registry = Registry(db, offline_resolver(), chain=ChainStore(db), gateway_did=gateway.did)
    seller, buyer = new_did(), new_did()
    recorders = []
    for i, house in enumerate((seller, buyer)):
        registry.register(house.did, name=f"house {i}", kind="household", actor="t", now=T0 / 1000)
        meter = enroll(
            db, registry, state_dir=tmp_path, gateway_did=gateway.did, household=house.did,
            name=f"meter {i}", port=f"/dev/p{i}", actor="t", now=T0 / 1000,
        )  # fmt: skip
        key = keystore.load_private_key(Path(meter.key_file), None)
        recorders.append(MeterRecorder(meter, db, Signer.for_did_key(key), gateway.did))
    assert households.snapshot(db, seller.did).import_wh is None  # no reading yet
    market = Market(
        db, registry, offline_resolver(), gateway,
        MarketSettings(interval_ms=INTERVAL, retail=300, feed_in=80),
    )  # fmt: skip
    start = T0 - T0 % INTERVAL + INTERVAL
    recorders[0].record(_telegram(5_000, 0, 10_000), T0)
    recorders[1].record(_telegram(7_000, 0, 0), T0)
    market.submit(_order(seller, 1, "sell", start, 100, 100), T0, topic_did=seller.did)
    market.submit(_order(buyer, 1, "buy", start, 120, 200), T0, topic_did=buyer.did)
    now = households.snapshot(db, seller.did)
    assert (now.import_wh, now.export_wh, now.import_w, now.export_w) == (5_000, 0, 250, 10_000)
    assert (now.open_orders, now.open_sell_wh, now.open_buy_wh) == (1, 100, 0)
    assert households.snapshot(db, buyer.did).open_buy_wh == 120
    market.tick(start)  # cleared: a trade of 100 Wh at 150
    assert households.snapshot(db, seller.did).open_orders == 0
    end = start + INTERVAL
    recorders[0].record(_telegram(5_000, 0, 10_000), start - 5)
    recorders[1].record(_telegram(7_000, 0, 0), start - 5)
    recorders[0].record(_telegram(5_000, 100, 0), end + 1)
    recorders[1].record(_telegram(7_100, 0, 0), end + 1)
    market.tick(end + 2)  # settled
    after = households.snapshot(db, seller.did)
    (statement,) = market.statements(seller.did, start)
    assert after.market_ueur == statement["market"] == 100 * 150
    assert after.net_ueur == statement["net"]
    assert after.export_wh == 100 and after.inverter is None
    assert households.snapshot(db, seller.did, lambda _db, _h: ha.InverterNow(5, 6)).inverter


def test_opt_in_list_keeps_active_households_only(db, new_did) -> None:
    registry = Registry(db, offline_resolver())
    house, device = new_did(), new_did()
    registry.register(house.did, name="Lindenstr. 4", kind="household", actor="t", now=1.0)
    registry.register(device.did, name="sensor", kind="sensor", actor="t", now=1.0)
    with pytest.raises(households.HomeAssistantError, match="not a registered household"):
        households.check_household(db, device.did)
    with pytest.raises(households.HomeAssistantError, match="not a registered household"):
        households.check_household(db, "did:key:z6MkNOBODY")
    assert households.check_household(db, house.did).name == "Lindenstr. 4"
    assert households.opt_in(db, house.did, 5) and not households.opt_in(db, house.did, 6)
    assert [h.did for h in households.opted_in(db)] == [house.did]
    registry.suspend(house.did, actor="t", now=2.0, reason="test")
    assert households.opted_in(db) == []  # suspended: nothing published
    assert [r["household"] for r in households.listing(db)] == [house.did]
    with pytest.raises(households.HomeAssistantError, match="suspended"):
        households.check_household(db, house.did)
    assert households.opt_out(db, house.did) and not households.opt_out(db, house.did)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("state_every_seconds = 0", "state_every_seconds"),
        ("poll_seconds = 600", "poll_seconds"),
        ('enabled = "yes"', "enabled"),
    ],
)
def test_a_bad_setting_is_refused_naming_its_key(tmp_path: Path, line: str, key: str) -> None:
    from gateway.config import load_config
    from gateway.errors import ConfigError

    path = tmp_path / "gateway.toml"
    path.write_text(f"[homeassistant]\n{line}\n")
    with pytest.raises(ConfigError, match=key):
        load_config(path)
    path.write_text("[homeassistant]\nenabled = true\nstate_every_seconds = 2.5\n")
    assert load_config(path).homeassistant.state_every_seconds == 2.5


def test_the_publisher_sends_configs_changes_and_removals(tmp_path: Path, new_did) -> None:
    from gateway.db import connect, migrate
    from gateway.run.homeassistant import Publisher

    db = connect(tmp_path / "didgw.db")
    migrate(db, now=0)
    registry = Registry(db, offline_resolver())
    house = new_did()
    registry.register(house.did, name="Lindenstr. 4", kind="household", actor="t", now=1.0)
    households.opt_in(db, house.did, 1)
    inverter: list[ha.InverterNow] = []
    publisher = Publisher(
        tmp_path / "didgw.db",
        prefix="didgw",
        version="1",
        every_s=10,
        inverter=lambda _db, _h: inverter[0] if inverter else None,
    )
    node = access.node_id(house.did)
    config, state = access.discovery_topic("didgw", node), access.state_topic("didgw", node)
    first = publisher.step(0)
    assert [t for t, _ in first] == [config, state]  # the config first, then its state
    assert publisher.step(1) == []  # nothing changed
    inverter.append(ha.InverterNow(100, 2000))  # an inverter with readings appears
    again = dict(publisher.step(2))
    assert "solar_kwh" in json.loads(again[config])["components"][f"{node}_solar_kwh"]["unique_id"]
    assert json.loads(again[state])["solar_kwh"] == 2.0  # its state at once, with the config
    inverter[0] = ha.InverterNow(150, 2001)
    assert publisher.step(3) == []  # changed, but within state_every_seconds
    assert [t for t, _ in publisher.step(12)] == [state]
    publisher.republish()  # after a reconnect: everything again
    assert [t for t, _ in publisher.step(13)] == [config, state]
    households.opt_out(db, house.did)
    assert publisher.step(14) == [(config, b""), (state, b"")]  # removed from Home Assistant
    assert publisher.step(15) == []
    publisher.close()
    # A new run clears a household still listed but no longer active (suspended meanwhile).
    households.opt_in(db, house.did, 16)
    registry.suspend(house.did, actor="t", reason="test", now=17.0)
    fresh = Publisher(tmp_path / "didgw.db", prefix="didgw", version="1", every_s=10)
    assert fresh.step(0) == [(config, b""), (state, b"")]
    fresh.close()
    db.close()

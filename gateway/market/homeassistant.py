"""Home Assistant MQTT discovery for a household: the payloads, built without I/O.

What a household's Home Assistant shows (docs/homeassistant.md): her meter (grid import and
export, energy and power), her inverter when she has one (solar power and production), her
open orders and her settled income. Each is an entity of one Home Assistant device,
"didgw <her name>", announced in **one** retained discovery message
(:func:`discovery_payload`) on ``<prefix>/ha/<node>/device/didgw_<node>/config``, with
every value in **one** retained state message (:func:`state_payload`) on
``<prefix>/ha/<node>/state`` that the entities pick their value from.

**Device-based discovery** (``<discovery prefix>/device/<object id>/config``, Home
Assistant 2024.11 and later) rather than a message per entity: the device block, the origin
and the availability are said once; an entity added later (an inverter) is the same
message again with one more component, so Home Assistant never sees half a device; and
opting out is one empty retained message, which removes the device and every entity.
Older Home Assistant releases ignore the message (docs/homeassistant.md says which release
is needed).

**The Energy dashboard** takes a sensor for grid consumption, return to grid and solar
production only with ``device_class`` ``energy``, ``state_class`` ``total`` or
``total_increasing`` and an energy unit; power sensors are ``power``/``measurement``/``W``;
money is ``monetary`` with ``state_class`` ``total`` (Home Assistant refuses
``total_increasing`` and ``measurement`` for it) in ``EUR``. The entity table below is the
one place these are written; ``tests/unit/test_homeassistant.py`` checks it against a JSON
schema written from Home Assistant's documentation and against those rules.

**Availability**: every entity follows ``<prefix>/ha/status`` (``online``/``offline``),
which the gateway's publishing connection sets retained on connect and leaves as its last
will, so Home Assistant shows the values as unavailable when the gateway is gone, and
not stale figures. A value not known yet is ``null`` in the state; the template then
renders ``None``, which Home Assistant's MQTT sensor shows as unknown.

Units: the market's integers (Wh, micro-euro) become kWh and EUR as exact decimals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from gateway.auth import homeassistant_access as access

ORIGIN_NAME = "didgw"
MANUFACTURER = "didgw"
#: The first Home Assistant release that takes device-based discovery.
MIN_HOME_ASSISTANT = "2024.11"


@dataclass(frozen=True)
class Entity:
    """One sensor: its key in the state message, and how Home Assistant should show it."""

    key: str
    name: str
    unit: str | None
    device_class: str | None
    state_class: str
    icon: str | None = None
    precision: int | None = None


#: The household's meter: the Energy dashboard's "grid consumption" and "return to grid".
METER_ENTITIES = (
    Entity("grid_import_kwh", "Grid import", "kWh", "energy", "total_increasing", precision=3),
    Entity("grid_export_kwh", "Grid export", "kWh", "energy", "total_increasing", precision=3),
    Entity("grid_import_w", "Grid import power", "W", "power", "measurement", precision=0),
    Entity("grid_export_w", "Grid export power", "W", "power", "measurement", precision=0),
)
#: An inverter (a device of kind ``inverter`` owned by the household, with readings): the
#: Energy dashboard's "solar production".
INVERTER_ENTITIES = (
    Entity("solar_w", "Solar power", "W", "power", "measurement", precision=0),
    Entity("solar_kwh", "Solar production", "kWh", "energy", "total_increasing", precision=3),
)
#: The market: her open orders and what her statements settled.
MARKET_ENTITIES = (
    Entity("open_orders", "Open orders", None, None, "measurement", "mdi:format-list-bulleted"),
    Entity("open_sell_kwh", "Open offers", "kWh", None, "measurement", "mdi:solar-power", 3),
    Entity("open_buy_kwh", "Open bids", "kWh", None, "measurement", "mdi:transmission-tower", 3),
    Entity("market_income_eur", "Market income", "EUR", "monetary", "total", precision=2),
    Entity("settled_net_eur", "Settled net", "EUR", "monetary", "total", precision=2),
)


@dataclass(frozen=True)
class InverterNow:
    """An inverter's latest figures (None: not known)."""

    power_w: int | None
    energy_wh: int | None


@dataclass(frozen=True)
class Snapshot:
    """What a household's Home Assistant is told, in the market's integer units."""

    import_wh: int | None = None
    export_wh: int | None = None
    import_w: int | None = None
    export_w: int | None = None
    reading_ms: int | None = None
    open_orders: int = 0
    open_sell_wh: int = 0
    open_buy_wh: int = 0
    market_ueur: int = 0
    net_ueur: int = 0
    inverter: InverterNow | None = None


@dataclass(frozen=True)
class Household:
    did: str
    name: str

    @property
    def node(self) -> str:
        return access.node_id(self.did)


def entities(snapshot: Snapshot) -> tuple[Entity, ...]:
    """The entities of a household: her meter's and market's, her inverter's if she has one."""
    extra = INVERTER_ENTITIES if snapshot.inverter is not None else ()
    return (*METER_ENTITIES, *extra, *MARKET_ENTITIES)


def discovery_payload(
    household: Household, snapshot: Snapshot, *, prefix: str, version: str
) -> dict[str, Any]:
    """The device-based discovery message of her device (retain it)."""
    node = household.node
    components: dict[str, Any] = {}
    for entity in entities(snapshot):
        component: dict[str, Any] = {
            "platform": "sensor",
            "unique_id": f"didgw_{node}_{entity.key}",
            "name": entity.name,
            "state_class": entity.state_class,
            "value_template": f"{{{{ value_json.{entity.key} }}}}",
        }
        if entity.device_class is not None:
            component["device_class"] = entity.device_class
        if entity.unit is not None:
            component["unit_of_measurement"] = entity.unit
        if entity.icon is not None:
            component["icon"] = entity.icon
        if entity.precision is not None:
            component["suggested_display_precision"] = entity.precision
        components[f"{node}_{entity.key}"] = component
    return {
        "device": {
            "identifiers": [f"didgw_{node}"],
            "name": f"didgw {household.name}",
            "manufacturer": MANUFACTURER,
            "model": "household",
            "sw_version": version,
        },
        "origin": {"name": ORIGIN_NAME, "sw_version": version},
        "availability_topic": access.status_topic(prefix),
        "state_topic": access.state_topic(prefix, node),
        "qos": 1,
        "components": components,
    }


def state_payload(snapshot: Snapshot) -> dict[str, Any]:
    """Every entity's value, by its key (``null``: not known yet)."""
    inverter = snapshot.inverter
    values: dict[str, Any] = {
        "grid_import_kwh": _kwh(snapshot.import_wh),
        "grid_export_kwh": _kwh(snapshot.export_wh),
        "grid_import_w": snapshot.import_w,
        "grid_export_w": snapshot.export_w,
        "open_orders": snapshot.open_orders,
        "open_sell_kwh": _kwh(snapshot.open_sell_wh),
        "open_buy_kwh": _kwh(snapshot.open_buy_wh),
        "market_income_eur": _eur(snapshot.market_ueur),
        "settled_net_eur": _eur(snapshot.net_ueur),
        "reading_ms": snapshot.reading_ms,
    }
    if inverter is not None:
        values["solar_w"] = inverter.power_w
        values["solar_kwh"] = _kwh(inverter.energy_wh)
    return values


def encode(payload: dict[str, Any]) -> bytes:
    """A payload as sent: compact JSON, members sorted (equal payloads, equal bytes)."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class StateGate:
    """When a household's state goes out: when it changed, at most once every ``every_s``.

    Sans-IO: the caller says what it would send and when; the gate says whether to send it
    now, and remembers what went out (:meth:`forget` after a reconnect or an opt-out, so
    that the next state goes out whatever it is).
    """

    every_s: float
    _sent: dict[str, tuple[bytes, float]] = field(default_factory=dict)

    def due(self, node: str, payload: bytes, now_s: float) -> bool:
        last = self._sent.get(node)
        if last is not None and (last[0] == payload or now_s - last[1] < self.every_s):
            return False
        self._sent[node] = (payload, now_s)
        return True

    def forget(self, node: str | None = None) -> None:
        if node is None:
            self._sent.clear()
        else:
            self._sent.pop(node, None)


def _kwh(wh: int | None) -> float | None:
    return None if wh is None else float(Decimal(wh) / 1000)


def _eur(micro: int) -> float:
    return float(Decimal(micro) / 1_000_000)

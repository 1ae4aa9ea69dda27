"""Which households opted in to Home Assistant, and what to tell each: queries over the record.

The opt-in list is the ``homeassistant_households`` table (a household, the username of
its read-only broker account, when it opted in); ``didgw homeassistant enable|disable``
changes it (with the broker account: ``gateway/ops/homeassistant.py``) and the running
gateway (``gateway/run/homeassistant.py``) reads it every tick. :func:`snapshot` gathers a
household's figures for :mod:`gateway.market.homeassistant`: her meters' latest registers
and power, her open orders, the sums of her settlement statements, and her inverter's
figures through an :data:`InverterLookup`.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database

from gateway.auth import homeassistant_access as access
from gateway.db import write_transaction
from gateway.energy.history import household_meters, meter_now
from gateway.energy.inverter import latest_readings
from gateway.errors import DidgwError
from gateway.market.homeassistant import Household, InverterNow, Snapshot
from gateway.registry import Status

#: A household's inverter figures, None when she has no inverter with readings.
InverterLookup = Callable[[Database, str], InverterNow | None]


class HomeAssistantError(DidgwError):
    code = "homeassistant_refused"


def check_household(db: Database, did: str) -> Household:
    """``did`` as a household that may opt in: registered, of kind household, active."""
    row = db.execute("SELECT name, kind, status FROM devices WHERE did = ?", [did]).fetchone()
    if row is None or row[1] != "household":
        raise HomeAssistantError(
            f"{did} is not a registered household (didgw device register DID --kind household)"
        )
    if row[2] != Status.ACTIVE.value:
        raise HomeAssistantError(f"household {did} is {row[2]}, not active")
    return Household(did, str(row[0]))


def opt_in(db: Database, household: str, now_ms: int) -> bool:
    """Put her on the list (False: she was on it already)."""
    with write_transaction(db.conn):
        cursor = db.execute(
            "INSERT OR IGNORE INTO homeassistant_households (household, username, enabled_ms) "
            "VALUES (?, ?, ?)",
            [household, access.username(access.node_id(household)), now_ms],
        )
    return cursor.rowcount == 1


def opt_out(db: Database, household: str) -> bool:
    """Take her off the list (False: she was not on it)."""
    with write_transaction(db.conn):
        cursor = db.execute("DELETE FROM homeassistant_households WHERE household = ?", [household])
    return cursor.rowcount == 1


def opted_in(db: Database) -> list[Household]:
    """The households on the list that are still active households, oldest opt-in first
    (one suspended or revoked since gets nothing published, and what was is removed)."""
    rows = db.execute(
        "SELECT h.household, d.name FROM homeassistant_households h "
        "JOIN devices d ON d.did = h.household "
        "WHERE d.kind = 'household' AND d.status = ? ORDER BY h.enabled_ms, h.household",
        [Status.ACTIVE.value],
    ).fetchall()
    return [Household(str(did), str(name)) for did, name in rows]


def listing(db: Database) -> list[dict[str, object]]:
    """The list as ``didgw homeassistant list`` shows it."""
    rows = db.execute(
        "SELECT household, username, enabled_ms FROM homeassistant_households "
        "ORDER BY enabled_ms, household"
    ).fetchall()
    return [{"household": h, "username": u, "enabled_ms": t} for h, u, t in rows]


def no_inverter(db: Database, household: str) -> InverterNow | None:
    """An inverter lookup that finds none (for a household with no inverter, and tests)."""
    return None


def recorded_inverter(db: Database, household: str) -> InverterNow | None:
    """Her inverters' latest recorded readings, summed: the power they produce now and the
    energy they have produced to date (None until one of them has a reading)."""
    latest = latest_readings(db.conn, household)
    if not latest:
        return None
    return InverterNow(sum(r.power_w for r in latest), sum(r.energy_wh for r in latest))


def snapshot(
    db: Database, household: str, inverter: InverterLookup = recorded_inverter
) -> Snapshot:
    """Her figures now: meters summed (None until every meter has a reading), open orders
    (intervals not cleared yet), and the sums of all her statements."""
    import_wh = export_wh = import_w = export_w = 0
    reading_ms: int | None = None
    known = True
    meter_dids = household_meters(db, household)
    for did in meter_dids:
        row = db.execute(
            "SELECT import_wh, export_wh FROM meter_readings WHERE meter = ? "
            "ORDER BY seq DESC LIMIT 1",
            [did],
        ).fetchone()
        now = meter_now(db, did)
        if row is None or now.reading_ms is None:
            known = False
            continue
        import_wh += int(row[0])
        export_wh += int(row[1])
        import_w += now.import_w or 0
        export_w += now.export_w or 0
        reading_ms = max(reading_ms or 0, now.reading_ms)
    known = known and bool(meter_dids)
    orders = db.execute(
        "SELECT count(*), coalesce(sum(CASE WHEN o.side = 'sell' THEN o.wh END), 0), "
        "coalesce(sum(CASE WHEN o.side = 'buy' THEN o.wh END), 0) FROM market_orders o "
        "LEFT JOIN market_intervals i ON i.interval = o.interval "
        "WHERE o.household = ? AND i.cleared_ms IS NULL",
        [household],
    ).fetchone()
    money = db.execute(
        "SELECT coalesce(sum(json_extract(body, '$.market')), 0), "
        "coalesce(sum(json_extract(body, '$.net')), 0) FROM market_statements "
        "WHERE household = ?",
        [household],
    ).fetchone()
    return Snapshot(
        import_wh=import_wh if known else None,
        export_wh=export_wh if known else None,
        import_w=import_w if known else None,
        export_w=export_w if known else None,
        reading_ms=reading_ms if known else None,
        open_orders=int(orders[0]),
        open_sell_wh=int(orders[1]),
        open_buy_wh=int(orders[2]),
        market_ueur=int(money[0]),
        net_ueur=int(money[1]),
        inverter=inverter(db, household),
    )

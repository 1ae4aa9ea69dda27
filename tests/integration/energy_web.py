"""Households with vouched meters and their readings on the record, for the tests of
``/energy`` (test_energy_web.py, test_energy_browser.py)."""

from __future__ import annotations

import random
import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import device as dev
from gateway_process import GatewayProcess
from people_web import Person, issue_credential
from support import Run

from gateway.db import connect
from gateway.energy.meter import MeterRecorder, meters
from gateway.energy.p1 import Telegram
from gateway.identity import keystore
from gateway.identity.signing import Signer

SIM = Path(__file__).parents[2] / "firmware-sim" / "p1meter.py"


def daytime_zone() -> str:
    """Seoul (the seed market), unless it is night there; then Amsterdam, where it is
    afternoon. The readings end a minute before now, and the tests of "today" need a day
    that has readings in it, whenever the suite runs (a run just after midnight had none)."""
    seoul_hour = datetime.now(ZoneInfo("Asia/Seoul")).hour
    return "Asia/Seoul" if 2 <= seoul_hour < 22 else "Europe/Amsterdam"


ZONE = daytime_zone()
TZ = ZoneInfo(ZONE)
RETAIL, FEED_IN = 250, 70  # m€/kWh, set in [market]


def household_member(
    didgw: Run, front_door: GatewayProcess, name: str, port: Path
) -> tuple[Person, str, str]:
    """A registered household with a vouched meter on ``port``, and a member of it with a
    credential: (the member, the household's DID, the meter's DID)."""
    state = front_door.state
    household = Signer.for_did_key(keystore.generate_key()).did
    on = ("--state-dir", str(state))
    made = didgw("device", "register", household, "--name", name, "--kind", "household", *on)
    assert made.returncode == 0, made.stderr
    enrolled = didgw(
        "meter", "enroll", "--household", household, "--name", f"{name} meter",
        "--port", str(port), *on,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    meter = re.search(r"enrolled meter (\S+)", enrolled.stdout)[1]  # type: ignore[index]
    identity = dev.Identity.from_key(dev.load_or_create_key(state.parent / f"{name}.pem"))
    claims = [f"household={household}", "role=buyer", f"name={name.title()}"]
    credential_id, text = issue_credential(
        didgw, state, "household", identity.did, claims, out=state.parent / f"{name}.sdjwt"
    )
    return Person(identity, text, credential_id, front_door.url), household, meter


def telegram(t_ms: int, import_wh: int, export_wh: int, in_w: int, out_w: int) -> Telegram:
    return Telegram(
        "ISK5\\2M550T-1012", "50", t_ms, "E0043007052870318", (import_wh, 0), (export_wh, 0),
        1, in_w, out_w,
    )  # fmt: skip


def record_readings(state: Path, meter_did: str, now: datetime) -> list[tuple[int, int, int]]:
    """Five weeks of readings up to a minute before ``now``, put on the record by the
    gateway's own recorder with their own times: [(ts, import Wh, export Wh)]."""
    [meter] = [m for m in meters(connect(state / "didgw.db")) if m.did == meter_did]
    signer = Signer.for_did_key(keystore.load_private_key(Path(meter.key_file), None))
    recorder = MeterRecorder(meter, connect(state / "didgw.db"), signer, "did:key:z6MkGateway")
    rng = random.Random(18)
    t = int(datetime(2026, 10, 28, 22, 10, tzinfo=TZ).timestamp() * 1000)
    end = int(now.timestamp() * 1000) - 60_000
    imp, exp = 1_234_567, 345_678
    readings = []
    try:
        while t < end:
            hour = datetime.fromtimestamp(t / 1000, TZ).hour
            sunny = 9 <= hour < 16
            recorder.record(telegram(t, imp, exp, 300 + hour * 10, 2000 if sunny else 0), t)
            readings.append((t, imp, exp))
            step = rng.choice([7, 13, 29, 41, 53]) * 60_000
            if rng.random() < 0.01:
                step += rng.randint(2, 9) * 3_600_000  # the meter was away for hours
            t += step
            imp += rng.randint(0, 400) * step // 3_600_000
            exp += (rng.randint(500, 2500) if sunny else 0) * step // 3_600_000
    finally:
        recorder.close()
    return readings


def one_reading(state: Path, meter_did: str) -> int:
    """A reading of the meter put on the record by the gateway's own recorder: its entry."""
    [meter] = [m for m in meters(connect(state / "didgw.db")) if m.did == meter_did]
    signer = Signer.for_did_key(keystore.load_private_key(Path(meter.key_file), None))
    recorder = MeterRecorder(meter, connect(state / "didgw.db"), signer, "did:key:z6MkGateway")
    try:
        recorder.record(telegram(1_764_900_000_000, 1000, 200, 300, 0), 1_764_900_000_000)
    finally:
        recorder.close()
    row = connect(state / "didgw.db").execute(
        "SELECT max(e.seq) FROM chain_entries e JOIN chain_actors a ON a.id = e.actor "
        "WHERE a.did = ?",
        [meter_did],
    )
    return int(row.fetchone()[0])


def priced(front_door: GatewayProcess) -> GatewayProcess:
    """``front_door`` with the [market] prices the tests check the money against."""
    with front_door.config.open("a") as f:
        f.write(f"\n[market]\nretail_price = {RETAIL}\nfeed_in_price = {FEED_IN}\n")
    return front_door

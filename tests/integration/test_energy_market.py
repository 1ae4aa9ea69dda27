"""The meter and the market end to end: P1 meters on real pty pairs, the real ``didgw run``,
households trading over MQTT through the real broker, statements checked against the meters."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import pytest
from broker import Mosquitto
from gateway_process import GatewayProcess, gateway_did, make_device
from meters import Meters, enroll
from support import Run, wait_until

from gateway.auth.broker import market_topic, orders_topic
from gateway.chain.store import ChainStore
from gateway.db import connect
from gateway.identity import keystore, offline_resolver, verify_jws
from gateway.identity.signing import Signer, sign_jws
from gateway.market.orders import ORDER_TYP

pytestmark = pytest.mark.integration


def entries(state: Path, kind: str) -> list:
    store = ChainStore(connect(state / "didgw.db"))
    try:
        return [e for e in store.entries() if e.kind == kind]
    finally:
        store.close()


def test_pty_meter_readings_on_the_record_corrupt_ones_skipped_and_reconnect(
    didgw: Run, mosquitto: Mosquitto, meters: Meters, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    assert didgw("init", "--state-dir", str(state)).returncode == 0
    link = tmp_path / "ttyP1"
    meter = enroll(didgw, state, tmp_path, "house", link)
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[mqtt]\nenabled = false\n[meter]\nenabled = true\nrecord_every_seconds = 0.0\n"
        "reconnect_seconds = 0.2\n"
    )
    sim = meters.start(link, "--rate", "20", "--speed", "60", "--corrupt", "0.25", "--seed", "3")
    gateway = GatewayProcess(state, mosquitto, config)
    gateway.start()
    try:
        wait_until(
            lambda: len(entries(state, "vouched_reading")) >= 20,
            "20 vouched readings on the record",
            15,
            details=lambda: gateway.output,
        )
        sim.terminate()  # the meter vanishes (its pty is gone) …
        sim.wait(10)
        before = len(entries(state, "vouched_reading"))
        meters.start(link, "--rate", "20", "--seed", "3")  # … and comes back
        wait_until(
            lambda: len(entries(state, "vouched_reading")) >= before + 10,
            "10 more vouched readings after the meter came back",
            15,
            details=lambda: gateway.output,
        )
    finally:
        assert gateway.stop() == 0, gateway.output
    recorded = entries(state, "vouched_reading")
    for entry in recorded:
        assert entry.actor == meter
        body = json.loads(
            verify_jws(
                entry.payload,
                resolver=offline_resolver(),
                relationship="assertionMethod",
                now=time.time(),
            ).payload
        )
        assert body["did"] == meter and body["vouched_by"] == gateway_did(didgw, state)
    counts = json.loads(re.findall(r"meter did:key:\S+: (\{.*?\})", gateway.output)[-1])
    assert counts["crc"] + counts["truncated"] + counts["garbled"] > 0, counts
    assert counts["telegrams"] >= len(recorded)
    assert "meter port" in gateway.output  # the vanishing and the return were noticed
    assert didgw("chain", "verify", "--state-dir", str(state)).returncode == 0


def test_three_households_trade_over_mqtt_and_statements_add_up(  # noqa: PLR0912
    didgw: Run, mosquitto: Mosquitto, meters: Meters, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    assert didgw("init", "--state-dir", str(state)).returncode == 0
    gw = gateway_did(didgw, state)
    interval = 3
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[mqtt]\n" + mosquitto.gateway_settings() + "verify_workers = 0\n"
        "[meter]\nenabled = true\nrecord_every_seconds = 0.0\n"
        f"[market]\nenabled = true\ninterval_seconds = {interval}\ntick_seconds = 0.1\n"
    )
    houses = []
    for i, solar in enumerate((9000, 6000, 0)):
        device = make_device(tmp_path, mosquitto, f"house{i}", gw)
        link = tmp_path / f"ttyP1-{i}"
        r = didgw(
            "device",
            "register",
            device.did,
            "--name",
            f"house {i}",
            "--kind",
            "household",
            "--state-dir",
            str(state),
        )
        assert r.returncode == 0, r.stderr
        r = didgw(
            "meter",
            "enroll",
            "--household",
            device.did,
            "--name",
            f"meter {i}",
            "--port",
            str(link),
            "--state-dir",
            str(state),
        )
        assert r.returncode == 0, r.stderr
        meters.start(
            link,
            "--rate",
            "10",
            "--speed",
            "30",
            "--start",
            "2024-06-15T11:00",
            "--seed",
            str(i + 1),
            "--solar-peak-w",
            str(solar),
        )
        houses.append(device)
    gateway = GatewayProcess(state, mosquitto, config)
    gateway.start()
    peers = []
    try:
        for device in houses:
            grant = device.authenticate(timeout=15)
            peer = mosquitto.peer(grant.username, grant.password.decode())
            peer.connect()
            peer.subscribe(market_topic(device.did, mosquitto.prefix))
            peers.append(peer)
        db = sqlite3.connect(state / "didgw.db")
        signers = [
            Signer.for_did_key(keystore.load_private_key(tmp_path / f"house{i}.pem", None))
            for i in range(3)
        ]
        book = (  # (who, side, Wh, price), the same each interval
            (signers[0], "sell", 5, 90),
            (signers[1], "sell", 4, 120),
            (signers[2], "buy", 7, 200),
            (signers[1], "buy", 2, 60),
        )

        def meters_on_record() -> bool:
            """Every meter has a reading on record, and each seller's meter has shown the
            export power its sell needs (else: no_export_capacity)."""
            peak = dict(
                db.execute(
                    "SELECT household, peak_export_w FROM meters m WHERE EXISTS "
                    "(SELECT 1 FROM meter_readings r WHERE r.meter = m.did)"
                ).fetchall()
            )
            return len(peak) == len(houses) and all(
                peak[signer.did] * interval * 1000 // 3_600_000 >= wh
                for signer, side, wh, _ in book
                if side == "sell"
            )

        wait_until(
            meters_on_record,
            "every meter's readings, and the sellers' export power, on record",
            15,
            details=lambda: gateway.output,
        )
        starts = []
        seq = 0
        for _ in range(3):
            now = int(time.time() * 1000)
            start = now - now % (interval * 1000) + interval * 1000
            if start - now < 800:
                start += interval * 1000
            starts.append(start)
            for signer, side, wh, price in book:
                seq += 1
                body = {
                    "did": signer.did,
                    "seq": seq,
                    "ts": now,
                    "side": side,
                    "interval": start,
                    "wh": wh,
                    "price": price,
                }
                token = sign_jws(json.dumps(body).encode(), signer, headers={"typ": ORDER_TYP})
                peer = peers[signers.index(signer)]
                peer.publish(orders_topic(signer.did, mosquitto.prefix), token)
            # Wait the interval's opening out on purpose (a clock window, not an outcome):
            # the next round's orders are for the interval after it.
            time.sleep((start - int(time.time() * 1000)) / 1000 + 0.2)

        def settled() -> bool:
            return (
                db.execute(
                    "SELECT count(*) FROM market_intervals WHERE settled_ms IS NOT NULL"
                ).fetchone()[0]
                >= 3
            )

        wait_until(settled, "three market intervals settled", 20, details=lambda: gateway.output)
        messages = []
        for peer in peers:
            got = []
            while True:
                try:
                    got.append(json.loads(peer.next_message(timeout=1)[1]))
                except Exception:
                    break
            messages.append(got)
    finally:
        for peer in peers:
            peer.close()
        assert gateway.stop() == 0, gateway.output
    orders = [m for m in messages[0] if m["type"] == "order"]
    assert orders and all(m["status"] == "accepted" for m in orders), messages[0]
    for i in range(3):
        kinds = {m["type"] for m in messages[i]}
        assert {"order", "trade", "statement"} <= kinds, (i, kinds)
    for start in starts:
        trades = db.execute(
            "SELECT seller, buyer, wh, price FROM market_trades WHERE interval = ?", [start]
        ).fetchall()
        # 5 Wh at 90 and 4 Wh at 120 against 7 Wh at 200: 5 + 2, at (120 + 200) // 2.
        assert sorted((w, p) for _, _, w, p in trades) == [(2, 160), (5, 160)]
        statements = [
            json.loads(b)
            for (b,) in db.execute("SELECT body FROM market_statements WHERE interval = ?", [start])
        ]
        assert len(statements) == 3 and sum(s["market"] for s in statements) == 0
        for s in statements:
            meter = db.execute(
                "SELECT did FROM meters WHERE household = ?", [s["household"]]
            ).fetchone()[0]
            first = db.execute(
                "SELECT import_wh, export_wh FROM meter_readings WHERE meter = ? "
                "AND ts <= ? ORDER BY ts DESC LIMIT 1",
                [meter, start],
            ).fetchone()
            last = db.execute(
                "SELECT import_wh, export_wh FROM meter_readings WHERE meter = ? "
                "AND ts >= ? ORDER BY ts LIMIT 1",
                [meter, start + interval * 1000],
            ).fetchone()
            assert s["import_wh"] == last[0] - first[0] and s["export_wh"] == last[1] - first[1]
            assert s["net"] == (
                s["market"] + s["shortfall"] + s["feed_in"] + s["grid_import"] + s["unused"]
            )
    assert len(entries(state, "trade")) == 6 and len(entries(state, "statement")) == 9
    assert didgw("chain", "verify", "--state-dir", str(state)).returncode == 0

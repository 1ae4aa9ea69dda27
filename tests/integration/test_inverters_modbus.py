"""Solar inverters end to end: the SunSpec simulator as a Modbus TCP server on loopback and
as Modbus RTU on a real pty, read by the real ``didgw run`` (pymodbus) with its readings on
the record; another inverter on the same link and energy going backwards refused; devices
that misbehave bounded; the simulator's registers read by mbpoll (libmodbus), a Modbus
master nobody here wrote, agreeing with what the gateway read; and a statement of the running
market checking a household's metered export against its inverter."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from broker import Mosquitto, free_port
from gateway_process import GatewayProcess, gateway_did, make_device
from inverters import Inverters, enroll
from meters import Meters
from meters import register_household as household
from support import Run, wait_until

from gateway.auth.broker import orders_topic
from gateway.chain.store import ChainStore
from gateway.db import connect
from gateway.identity import keystore, offline_resolver, verify_jws
from gateway.identity.signing import Signer, sign_jws
from gateway.market.orders import ORDER_TYP

pytestmark = pytest.mark.integration


def readings(state: Path, did: str) -> list[dict]:
    store = ChainStore(connect(state / "didgw.db"))
    try:
        found = [e for e in store.entries() if e.kind == "vouched_reading" and e.actor == did]
    finally:
        store.close()
    return [
        json.loads(
            verify_jws(
                e.payload, resolver=offline_resolver(), relationship="assertionMethod",
                now=time.time(),
            ).payload
        )
        for e in found
    ]  # fmt: skip


def counts_of(output: str, did: str) -> dict[str, int]:
    return json.loads(re.findall(rf"inverter {re.escape(did)}: (\{{.*?\}})", output)[-1])


def run_gateway(state: Path, tmp_path: Path, metrics_port: int | None = None) -> GatewayProcess:
    config = tmp_path / "gateway.toml"
    metrics = "enabled = false" if metrics_port is None else f"port = {metrics_port}"
    config.write_text(
        f"[mqtt]\nenabled = false\n[http]\nenabled = false\n[metrics]\n{metrics}\n"
        "[inverter]\nenabled = true\npoll_seconds = 0.1\ntimeout_seconds = 0.5\n"
        "reconnect_seconds = 0.2\n"
    )
    gateway = GatewayProcess(state, None, config)
    gateway.start()
    return gateway


@pytest.fixture
def state(didgw: Run, tmp_path: Path) -> Path:
    state = tmp_path / "state"
    assert didgw("init", "--state-dir", str(state)).returncode == 0
    return state


def test_inverters_over_tcp_and_rtu_on_a_pty_have_their_readings_on_the_record(
    didgw: Run, inverters: Inverters, state: Path, tmp_path: Path
) -> None:
    house = household(didgw, state, tmp_path, "house")
    tcp = inverters.tcp("--serial", "TCP-0001", "--speed", "60", "--power", "3000")
    pty = tmp_path / "ttyINV"
    rtu_args = ("--unit", "7", "--serial", "RTU-0001", "--power", "1500", "--speed", "60")
    rtu_sim = inverters.pty(pty, *rtu_args)
    over_tcp = enroll(didgw, state, house, "roof", tcp)
    over_rtu = enroll(didgw, state, house, "garage", str(pty), "--unit", "7", "--baud", "19200")
    gateway = run_gateway(state, tmp_path)
    try:
        wait_until(
            lambda: len(readings(state, over_tcp)) >= 5 and len(readings(state, over_rtu)) >= 5,
            "5 readings of each inverter on the record",
            20,
            details=lambda: gateway.output,
        )
        rtu_sim.terminate()  # the serial line goes away (its pty with it) …
        rtu_sim.wait(10)
        time.sleep(0.5)
        before = len(readings(state, over_rtu))
        inverters.pty(pty, *rtu_args, "--energy-wh", "13000000")  # … and comes back
        wait_until(
            lambda: len(readings(state, over_rtu)) >= before + 3,
            "3 more readings over RTU after the line came back",
            20,
            details=lambda: gateway.output,
        )
    finally:
        assert gateway.stop() == 0, gateway.output
    gw = gateway_did(didgw, state)
    for did, serial, power in ((over_tcp, "TCP-0001", 3000), (over_rtu, "RTU-0001", 1500)):
        bodies = readings(state, did)
        assert [b["seq"] for b in bodies] == list(range(1, len(bodies) + 1))
        for b in bodies:
            assert b["did"] == did and b["vouched_by"] == gw and b["type"] == "production"
            assert b["inverter"]["serial"] == serial and b["values"]["power_w"] == power
            assert b["inverter"]["manufacturer"] == "didgw-sim"
        energies = [b["values"]["energy_wh"] for b in bodies]
        assert energies == sorted(energies) and energies[-1] > energies[0]  # 60x: ~1 Wh/0.1 s
        assert counts_of(gateway.output, did)["recorded"] == len(bodies)
    # The gateway's statements binding both to the household are on the record.
    listed = json.loads(didgw("inverter", "list", "--json", "--state-dir", str(state)).stdout)
    assert {(i["did"], i["household"], i["serial"]) for i in listed} == {
        (over_tcp, house, "TCP-0001"),
        (over_rtu, house, "RTU-0001"),
    }
    assert all(i["latest"]["entry"] > i["binding_entry"] for i in listed)
    assert didgw("chain", "verify", "--state-dir", str(state)).returncode == 0


def test_two_inverters_on_one_rs485_line_are_polled_in_turn(
    didgw: Run, inverters: Inverters, state: Path, tmp_path: Path
) -> None:
    house = household(didgw, state, tmp_path, "house")
    line = tmp_path / "ttyRS485"
    inverters.pty(line, "--unit", "3", "--unit", "4", "--serial", "BUS", "--power", "700")
    third = enroll(didgw, state, house, "east", str(line), "--unit", "3")
    fourth = enroll(didgw, state, house, "west", str(line), "--unit", "4")
    refused = didgw(
        "inverter", "enroll", "--household", house, "--name", "x", "--link", str(line),
        "--unit", "5", "--baud", "19200", "--state-dir", str(state),
    )  # fmt: skip
    assert refused.returncode == 1 and "share its settings" in refused.stderr, refused.stderr
    gateway = run_gateway(state, tmp_path)
    try:
        wait_until(
            lambda: len(readings(state, third)) >= 5 and len(readings(state, fourth)) >= 5,
            "5 readings of each inverter on the line",
            20,
            details=lambda: gateway.output,
        )
    finally:
        assert gateway.stop() == 0, gateway.output
    assert {b["inverter"]["serial"] for b in readings(state, third)} == {"BUS-3"}
    assert {b["inverter"]["serial"] for b in readings(state, fourth)} == {"BUS-4"}
    assert "reading 2 inverters on 1 links" in gateway.output
    assert "no_answer" not in gateway.output  # one request on the line at a time


def test_another_inverter_on_the_link_and_energy_going_backwards_are_refused(
    didgw: Run, inverters: Inverters, state: Path, tmp_path: Path
) -> None:
    house = household(didgw, state, tmp_path, "house")
    serial_file = tmp_path / "serial"
    serial_file.write_text("FIRST-1\n")
    swapped = enroll(
        didgw, state, house, "swapped", inverters.tcp("--serial-file", str(serial_file))
    )
    backwards = enroll(didgw, state, house, "backwards", inverters.tcp("--fault", "backwards"))
    gateway = run_gateway(state, tmp_path)
    try:
        wait_until(
            lambda: len(readings(state, swapped)) >= 3, "3 readings", 15, lambda: gateway.output
        )
        serial_file.write_text("SECOND-2\n")  # another inverter answers on the same address
        time.sleep(0.2)
        seen = len(readings(state, swapped))
        time.sleep(1.0)
        assert len(readings(state, swapped)) == seen
        serial_file.write_text("FIRST-1\n")  # the first one is back: readings go on
        wait_until(
            lambda: len(readings(state, swapped)) >= seen + 3,
            "readings again",
            15,
            lambda: gateway.output,
        )
    finally:
        assert gateway.stop() == 0, gateway.output
    assert {b["inverter"]["serial"] for b in readings(state, swapped)} == {"FIRST-1"}
    assert counts_of(gateway.output, swapped)["wrong_inverter"] >= 5
    # Lifetime energy lower at each read: the first reading only is recorded.
    [only] = readings(state, backwards)
    assert only["seq"] == 1
    assert counts_of(gateway.output, backwards)["energy_backwards"] >= 5
    assert "energy_backwards" in gateway.output and "wrong_inverter" in gateway.output


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("bad_marker", "no_marker"),
        ("no_inverter", "no_inverter"),
        ("huge_model", "bad_model"),
        ("endless", "too_many_models"),
        ("silent", "no_answer"),
        ("garbage", "no_answer"),
        ("flood", "no_answer"),
    ],
)
def test_didgw_inverter_read_refuses_a_misbehaving_device_with_its_reason(
    didgw: Run, inverters: Inverters, tmp_path: Path, fault: str, reason: str
) -> None:
    link = inverters.tcp("--fault", fault)
    started = time.monotonic()
    out = didgw("inverter", "read", "--link", link, "--json", "--timeout", "0.5")
    assert out.returncode == 1, out.stdout + out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["refused"] == reason, out.stdout
    assert time.monotonic() - started < 15  # bounded: at most a few timeouts


def test_misbehaving_inverters_and_garbage_on_a_pty_leave_the_gateway_reading_the_others(
    didgw: Run, inverters: Inverters, state: Path, tmp_path: Path
) -> None:
    house = household(didgw, state, tmp_path, "house")
    good = enroll(didgw, state, house, "good", inverters.tcp("--power", "900"))
    faults = {
        fault: enroll(didgw, state, house, fault, inverters.tcp("--fault", fault))
        for fault in ("huge_model", "endless", "silent", "garbage", "flood")
    }
    for fault in ("garbage", "flood"):
        pty = tmp_path / f"tty{fault}"
        inverters.pty(pty, "--fault", fault)
        faults[f"{fault}_rtu"] = enroll(didgw, state, house, f"{fault} rtu", str(pty))
    port = free_port()
    gateway = run_gateway(state, tmp_path, metrics_port=port)
    try:
        time.sleep(3)
        wait_until(
            lambda: len(readings(state, good)) >= 10, "10 good readings", 15, lambda: gateway.output
        )
        memory_mb = gateway.memory_kb() / 1024
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            metrics = answer.read().decode()
        status = didgw("status", "--config", str(gateway.config), "--state-dir", str(state))
    finally:
        assert gateway.stop() == 0, gateway.output
    assert "Traceback" not in gateway.output
    for fault, did in faults.items():
        assert readings(state, did) == [], fault
        counts = counts_of(gateway.output, did)
        assert counts["recorded"] == 0 and sum(counts.values()) >= 2, (fault, counts)
    assert counts_of(gateway.output, faults["huge_model"])["bad_model"] >= 2
    assert counts_of(gateway.output, faults["endless"])["too_many_models"] >= 2
    assert counts_of(gateway.output, faults["silent"])["no_answer"] >= 2
    # Logged once per streak, not at every poll (an inverter silent all night is one line).
    assert gateway.output.count(f"inverter {faults['silent']}: no_answer") == 1, gateway.output
    assert memory_mb < 120, memory_mb
    # The refusals by reason, as the metrics and didgw status show them.
    counted = {
        outcome: float(n)
        for outcome, n in re.findall(
            r'didgw_readings_total\{outcome="(\w+)",transport="sunspec"\} (\S+)', metrics
        )
    }
    assert counted["accepted"] >= 10 and counted["bad_model"] >= 2, metrics
    assert counted["too_many_models"] >= 2 and counted["no_answer"] >= 4, metrics
    assert "too_many_models" in status.stdout, status.stdout
    assert f"inverter {good[-8:]}:up" in status.stdout, status.stdout
    assert f"inverter {faults['silent'][-8:]}:DOWN" in status.stdout, status.stdout


def _mbpoll(*args: str) -> list[int]:
    out = subprocess.run(
        ["mbpoll", *args, "-1", "-0", "-t", "4"], capture_output=True, text=True, timeout=10,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return [int(v) & 0xFFFF for v in re.findall(r"^\[\d+\]:\s+(-?\d+)", out.stdout, re.M)]


@pytest.mark.skipif(shutil.which("mbpoll") is None, reason="needs mbpoll (scripts/setup.sh --dev)")
def test_mbpoll_reads_the_simulator_as_the_gateway_does(
    didgw: Run, inverters: Inverters, tmp_path: Path
) -> None:
    # --speed 0: the lifetime energy stands still, so both readers must see the same value.
    args = ("--power", "2345", "--speed", "0", "--energy-wh", "70000123", "--serial", "XCHK-42")
    tcp = inverters.tcp(*args)
    pty = tmp_path / "ttyXCHK"
    inverters.pty(pty, *args, "--unit", "5")
    host, port = tcp.removeprefix("tcp://").rsplit(":", 1)
    for link, where, unit in (
        (tcp, ["-m", "tcp", "-p", port, host], "1"),
        (str(pty), ["-m", "rtu", "-b", "9600", "-P", "none", str(pty)], "5"),
    ):
        *options, target = where
        # 0-based addresses (-0): the marker and the header of the common model at 40000 …
        head = _mbpoll(*options, "-a", unit, "-r", "40000", "-c", "4", target)
        assert head == [0x5375, 0x6E53, 1, 66]
        # … the serial number (common model points 48-63) and the inverter model after it.
        serial = _mbpoll(*options, "-a", unit, "-r", str(40004 + 48), "-c", "16", target)
        text = b"".join(r.to_bytes(2, "big") for r in serial).rstrip(b"\0").decode()
        model = _mbpoll(*options, "-a", unit, "-r", "40070", "-c", "52", target)
        assert model[:2] == [103, 50]
        power = model[2 + 12] * 10 ** (model[2 + 13] - (0x10000 if model[2 + 13] & 0x8000 else 0))
        energy = model[2 + 22] << 16 | model[2 + 23]
        gateway_read = didgw("inverter", "read", "--link", link, "--unit", unit, "--json")
        assert gateway_read.returncode == 0, gateway_read.stdout + gateway_read.stderr
        seen = json.loads(gateway_read.stdout.splitlines()[-1])
        assert (text, power, energy) == ("XCHK-42", 2345, 70000123)
        assert (seen["nameplate"]["serial"], seen["power_w"], seen["energy_wh"]) == (
            text,
            power,
            energy,
        )


@pytest.mark.skipif(shutil.which("mbpoll") is None, reason="needs mbpoll (scripts/setup.sh --dev)")
def test_mbpoll_reads_the_float_model_as_the_gateway_does(didgw: Run, inverters: Inverters) -> None:
    link = inverters.tcp("--float", "--power", "2345", "--speed", "0", "--energy-wh", "2500000")
    host, port = link.removeprefix("tcp://").rsplit(":", 1)
    header = _mbpoll("-m", "tcp", "-p", port, "-r", "40070", "-c", "2", host)
    assert header == [113, 60]
    floats = []
    for offset in (20, 30):  # W and WH of model 113, float32 with the high word first (-B)
        out = subprocess.run(
            ["mbpoll", "-m", "tcp", "-p", port, "-0", "-1", "-B", "-t", "4:float",
             "-r", str(40072 + offset), "-c", "1", host],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        floats.append(float(re.findall(r"^\[\d+\]:\s+(\S+)", out.stdout, re.M)[0]))
    seen = json.loads(didgw("inverter", "read", "--link", link, "--json").stdout.splitlines()[-1])
    assert floats == [2345.0, 2_500_000.0]
    assert (seen["power_w"], seen["energy_wh"]) == (2345, 2_500_000)


def test_a_statement_checks_metered_export_against_the_inverter_over_the_running_market(
    didgw: Run, mosquitto: Mosquitto, meters: Meters, inverters: Inverters, tmp_path: Path
) -> None:
    """A household whose P1 meter exports more than its inverter produces (the meter's
    roof is 9 kW, the inverter says 2 kW): its statement holds the excess."""
    state = tmp_path / "state"
    assert didgw("init", "--state-dir", str(state)).returncode == 0
    interval = 3
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[mqtt]\n" + mosquitto.gateway_settings() + "verify_workers = 0\n[http]\nenabled = false\n"
        f"[metrics]\nport = {free_port()}\n"
        "[meter]\nenabled = true\nrecord_every_seconds = 0.0\n"
        "[inverter]\nenabled = true\npoll_seconds = 0.2\n"
        f"[market]\nenabled = true\ninterval_seconds = {interval}\ntick_seconds = 0.1\n"
        "production_tolerance_wh = 5\n"
    )
    house = make_device(tmp_path, mosquitto, "house", gateway_did(didgw, state))
    out = didgw(
        "device", "register", house.did, "--name", "house", "--kind", "household",
        "--state-dir", str(state),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    p1 = tmp_path / "ttyP1"
    out = didgw(
        "meter", "enroll", "--household", house.did, "--name", "p1", "--port", str(p1),
        "--state-dir", str(state),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    meters.start(p1, "--rate", "10", "--speed", "30", "--start", "2024-06-15T11:00",
                 "--solar-peak-w", "9000")  # fmt: skip
    roof = enroll(
        didgw, state, house.did, "roof", inverters.tcp("--power", "2000", "--speed", "30")
    )
    gateway = GatewayProcess(state, mosquitto, config)
    gateway.start()
    db = sqlite3.connect(state / "didgw.db")
    try:
        grant = house.authenticate(timeout=15)
        peer = mosquitto.peer(grant.username, grant.password.decode())
        peer.connect()
        wait_until(
            lambda: (
                db.execute("SELECT max(peak_export_w) FROM meters").fetchone()[0] > 0
                and readings(state, roof)
            ),
            "the meter's export and the inverter's production on record",
            15,
            details=lambda: gateway.output,
        )
        signer = Signer.for_did_key(keystore.load_private_key(tmp_path / "house.pem", None))
        now = int(time.time() * 1000)
        start = now - now % (interval * 1000) + 2 * interval * 1000
        body = {"did": signer.did, "seq": 1, "ts": now, "side": "sell", "interval": start,
                "wh": 5, "price": 90}  # fmt: skip
        token = sign_jws(json.dumps(body).encode(), signer, headers={"typ": ORDER_TYP})
        peer.publish(orders_topic(signer.did, mosquitto.prefix), token)
        wait_until(
            lambda: db.execute("SELECT count(*) FROM market_statements").fetchone()[0] == 1,
            "the household's statement",
            20,
            details=lambda: gateway.output,
        )
        peer.close()
    finally:
        assert gateway.stop() == 0, gateway.output
    [(raw,)] = db.execute("SELECT body FROM market_statements").fetchall()
    statement = json.loads(raw)
    first, last = (
        db.execute("SELECT energy_wh FROM inverter_readings WHERE entry = ?", [entry]).fetchone()[0]
        for entry in statement["production_readings"]
    )
    assert statement["produced_wh"] == last - first > 0
    held = max(0, statement["export_wh"] - statement["produced_wh"] - 5)
    assert statement["held_wh"] == held > 0, statement  # 9 kW of roof, 2 kW of inverter
    # Nobody bought (sold 0): feed-in pays for the export the inverter backs, no more.
    assert statement["sold_wh"] == 0
    assert statement["feed_in"] == 80 * (statement["export_wh"] - held), statement

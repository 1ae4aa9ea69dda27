"""``didgw run`` as a service: systemd units, sd_notify, metrics, ``didgw status``, SIGHUP,
and the disk guard. Real processes throughout: a real mosquitto, the real gateway, a real
``AF_UNIX`` datagram socket standing in for systemd's notification socket."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import device as dev
import pytest
from broker import Mosquitto
from gateway_process import GatewayProcess, gateway_did, make_device, records, register
from support import ROOT, Run

from gateway.chain.store import ChainStore
from gateway.db import connect

pytestmark = pytest.mark.integration

READING = {"import_kwh": {"value": 1.5, "unit": "kWh"}}


# -- units ------------------------------------------------------------------------------


def _verify(unit: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    didgw = str(Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "didgw")
    didgw = didgw if Path(didgw).exists() else str(ROOT / ".venv" / "bin" / "didgw")
    text = (ROOT / "systemd" / "didgw.service").read_text()
    assert "/opt/didgw/.venv/bin/didgw" in text
    unit = tmp_path / "didgw.service"
    unit.write_text(text.replace("/opt/didgw/.venv/bin/didgw", didgw))
    assert _verify(unit) == ""  # not a single warning

    broken = tmp_path / "broken" / "didgw.service"
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace("Type=notify", "Type=notifyy"))
    assert "notifyy" in _verify(broken)  # the check can fail

    # The mosquitto drop-in, applied to Debian's own mosquitto.service.
    shipped = Path("/lib/systemd/system/mosquitto.service")
    if not shipped.exists():
        pytest.skip("Debian's mosquitto.service is not installed")
    units = tmp_path / "units"
    (units / "mosquitto.service.d").mkdir(parents=True)
    shutil.copy(shipped, units / "mosquitto.service")
    dropin = units / "mosquitto.service.d" / "didgw.conf"
    shutil.copy(ROOT / "systemd" / "mosquitto.service.d" / "didgw.conf", dropin)
    env = {"SYSTEMD_UNIT_PATH": f"{units}:"}
    assert _verify(units / "mosquitto.service", env) == ""
    dropin.write_text(dropin.read_text() + "Bogus=1\n")
    assert "Bogus" in _verify(units / "mosquitto.service", env)  # the drop-in is read


def _scheduling(pid: int) -> set[tuple[int, int]]:
    """(policy, real-time priority) of every thread of ``pid`` (proc(5): stat fields 41, 40)."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        out.add((int(fields[38]), int(fields[37])))  # fields from the 3rd on
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="a real-time policy takes root, as systemd has")
def test_the_broker_drop_in_puts_routing_first(mosquitto: Mosquitto) -> None:
    """The drop-in's ExecStartPost, run as systemd runs it (as root, $MAINPID the broker's),
    puts every thread of a real mosquitto under SCHED_RR 10, and the broker routes on."""
    dropin = (ROOT / "systemd" / "mosquitto.service.d" / "didgw.conf").read_text()
    (line,) = re.findall(r"^ExecStartPost=-(.+)$", dropin, re.M)
    assert _scheduling(mosquitto.pid) == {(os.SCHED_OTHER, 0)}
    command = line.replace("$MAINPID", str(mosquitto.pid)).split()
    subprocess.run(command, check=True, timeout=10)
    assert _scheduling(mosquitto.pid) == {(os.SCHED_RR, 10)}
    topic = f"{mosquitto.prefix}/bench/stream"
    with mosquitto.gateway() as sub, mosquitto.gateway() as pub:
        assert not sub.connect().is_failure and not pub.connect().is_failure
        assert not sub.subscribe(topic).is_failure
        assert not pub.publish(topic, b"first").is_failure
        assert sub.next_message() == (topic, b"first")


def test_sysusers_declares_the_user_and_the_serial_group() -> None:
    lines = [
        line.split()
        for line in (ROOT / "systemd" / "didgw.sysusers").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0][:3] == ["u", "didgw", "-"]
    assert ["m", "didgw", "dialout"] in lines


# -- sd_notify ------------------------------------------------------------------------------


class NotifySocket:
    """What systemd does with NOTIFY_SOCKET: a datagram socket it reads messages from."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def receive(self, until: str, timeout: float) -> dict[str, str]:
        """Messages until one has the field ``until``; that one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            message = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(message)
            if until in message:
                return message
        raise AssertionError(f"no {until} within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


def test_a_start_that_a_restart_cannot_fix_exits_78_and_says_why(
    didgw: Run, tmp_path: Path
) -> None:
    """No broker password, a config that does not parse: `didgw run` exits 78, which the
    unit's RestartPreventExitStatus keeps systemd from restarting, and tells systemd why
    (the STATUS `systemctl status` shows)."""
    state = tmp_path / "state"
    assert didgw("init", "--state-dir", str(state)).returncode == 0
    unit = (ROOT / "systemd" / "didgw.service").read_text()
    assert "RestartPreventExitStatus=78" in unit.splitlines()
    no_password = tmp_path / "no-password.toml"
    no_password.write_text('[mqtt]\nhost = "127.0.0.1"\nport = 1\n')
    broken = tmp_path / "broken.toml"
    broken.write_text("[mqtt\nport = 1\n")
    for config, why in (
        (no_password, "DIDGW_MQTT_PASSWORD is not set"),
        (broken, "not valid TOML"),
    ):
        notify = NotifySocket(tmp_path / f"notify-{config.stem}")
        try:
            ran = didgw(
                "run", "--config", str(config), "--state-dir", str(state),
                env={"NOTIFY_SOCKET": str(notify.path)},
            )  # fmt: skip
            assert ran.returncode == 78, ran.stdout + ran.stderr
            assert why in ran.stderr and "a restart will not fix this" in ran.stderr
            status = notify.receive("STATUS", timeout=5)["STATUS"]
            while not status.startswith("not started: "):  # after "stopping", if it got that far
                status = notify.receive("STATUS", timeout=5)["STATUS"]
            assert why in status
        finally:
            notify.close()


def test_ready_status_watchdog_and_stopping(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    notify = NotifySocket(tmp_path / "notify")
    try:
        gateway.start(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
        ready = notify.receive("READY", timeout=10)
        assert ready["READY"] == "1"
        assert "readings accepted" in ready["STATUS"] and "broker up" in ready["STATUS"]
        start = time.monotonic()
        pings = 0
        while pings < 3:  # every half interval (0.5 s) from the event loop
            notify.receive("WATCHDOG", timeout=2)
            pings += 1
        assert time.monotonic() - start < 3
        gateway.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert notify.receive("STOPPING", timeout=10)["STOPPING"] == "1"
        assert gateway.process.wait(timeout=30) == 0  # type: ignore[union-attr]
    finally:
        notify.close()


# -- metrics and didgw status ------------------------------------------------------------


def _metrics_port(config: Path) -> int:
    return int(re.search(r"\[metrics\]\nport = (\d+)", config.read_text()).group(1))  # type: ignore[union-attr]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def _sample(text: str, name: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def test_metrics_and_status_report_readings_refusals_and_connections(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    gw = gateway_did(didgw, gateway.state)
    device = make_device(tmp_path, mosquitto, "meter", gw)
    register(didgw, gateway.state, device.did, "meter")
    port = _metrics_port(gateway.config)
    gateway.start()
    try:
        device.start(timeout=15)
        for _ in range(5):
            device.publish_reading("energy", READING)
        assert device.wait_acked(timeout=20)
        device.publish_raw(b"not a reading")  # refused as malformed
        deadline = time.monotonic() + 10
        text = ""
        while time.monotonic() < deadline:  # workers report their counts every second
            text = _scrape(port)
            if _sample(text, "didgw_readings_total", outcome="malformed", transport="mqtt"):
                break
            time.sleep(0.3)
        assert _sample(text, "didgw_readings_total", outcome="accepted", transport="mqtt") == 5
        assert _sample(text, "didgw_readings_total", outcome="malformed", transport="mqtt") == 1
        assert _sample(text, "didgw_authentications_total", result="grant", transport="mqtt") == 1
        assert _sample(text, "didgw_connection_up", peer="broker") == 1
        assert _sample(text, "didgw_chain_entries") >= 5  # type: ignore[operator]
        assert _sample(text, "didgw_devices", status="active") == 1
        assert _sample(text, "didgw_storage_full") == 0

        status = didgw("status", "--state-dir", str(gateway.state), env=_env(gateway))
        assert status.returncode == 0, status.stdout + status.stderr
        assert "5 accepted" in status.stdout and "malformed 1" in status.stdout
        assert "broker:" in status.stdout and "up" in status.stdout
    finally:
        device.stop()
        assert gateway.stop() == 0
    stopped = didgw("status", "--state-dir", str(gateway.state), env=_env(gateway))
    assert stopped.returncode == 1  # not running: said, and not healthy
    assert "not running" in stopped.stdout
    assert re.search(r"record: +\d+ entries", stopped.stdout)


def _env(gateway: GatewayProcess) -> dict[str, str]:
    return {"DIDGW_CONFIG": str(gateway.config)}


# -- SIGHUP ----------------------------------------------------------------------------------


def test_sighup_refuses_a_bad_file_and_applies_a_good_one(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess
) -> None:
    gateway.start()
    good = gateway.config.read_text()
    try:
        gateway.config.write_text(good + "session_seconds = 5\n")  # below the minimum
        gateway.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        assert gateway.wait_for("reload refused, the running configuration stays")
        assert "session_seconds" in gateway.output
        assert gateway.process.poll() is None  # type: ignore[union-attr]

        gateway.config.write_text(good + "session_seconds = 120\nverify_workers = 1\n")
        gateway.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        assert gateway.wait_for("mqtt.session_seconds changed; applied")
        assert gateway.wait_for("mqtt.verify_workers changed; takes effect at the next restart")
        assert gateway.process.poll() is None  # type: ignore[union-attr]
    finally:
        assert gateway.stop() == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_sighup_applies_a_new_clock_window_to_authentication_and_readings(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path, workers: int
) -> None:
    """A device 120 s ahead and readings 120 s off: refused under a 60 s window, accepted
    once SIGHUP has widened it (in the main process and in every reading worker)."""
    gw = gateway_did(didgw, gateway.state)
    ahead = make_device(tmp_path, mosquitto, "ahead", gw, clock=lambda: time.time() + 120)
    meter = make_device(tmp_path, mosquitto, "meter", gw)
    for device in (ahead, meter):
        register(didgw, gateway.state, device.did, device.did[-6:])
    base = gateway.config.read_text() + f"verify_workers = {workers}\n\n[devices]\n"
    gateway.config.write_text(base + "clock_skew_seconds = 60\nmax_reading_age_seconds = 60\n")
    gateway.start()
    try:
        meter.start(timeout=15)
        with pytest.raises(dev.AuthRefused) as refused:
            ahead.authenticate(timeout=15)
        assert refused.value.reason == "clock_skew"
        now = int(time.time() * 1000)
        meter.publish_reading("energy", READING, ts_ms=now + 120_000)
        meter.publish_reading("energy", READING, ts_ms=now - 120_000)
        assert meter.wait_acked(timeout=15)
        assert [a.get("reason") for a in meter.acks] == ["clock_skew", "clock_skew"]

        gateway.config.write_text(
            base + "clock_skew_seconds = 300\nmax_reading_age_seconds = 600\n"
        )
        gateway.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        assert gateway.wait_for("devices.clock_skew_seconds changed; applied")
        ahead.start(timeout=15)  # its response, 120 s ahead, is now within the window
        assert gateway.wait_for("devices.max_reading_age_seconds changed; applied")
        for index in range(workers):  # each worker process says when it has the new window
            assert gateway.wait_for(f"reading worker {index}: clock window now")
        ahead.publish_reading("energy", READING)  # by its clock: 120 s ahead
        now = int(time.time() * 1000)
        meter.publish_reading("energy", READING, ts_ms=now + 120_000)
        meter.publish_reading("energy", READING, ts_ms=now - 120_000)
        assert ahead.wait_acked(timeout=15) and meter.wait_acked(timeout=15)
        assert [a["status"] for a in ahead.acks] == ["accepted"]
        assert [a["status"] for a in list(meter.acks)[2:]] == ["accepted", "accepted"]
    finally:
        ahead.stop()
        meter.stop()
        assert gateway.stop() == 0, gateway.output
    assert len(records(gateway.state)) == 3


# -- the disk guard ------------------------------------------------------------------------------


def test_readings_are_refused_at_the_quota_and_nothing_is_lost(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    gw = gateway_did(didgw, gateway.state)
    device = make_device(tmp_path, mosquitto, "meter", gw)
    register(didgw, gateway.state, device.did, "meter")
    store = ChainStore(connect(gateway.state / "didgw.db"))
    try:  # 2 MB already on the record, then a quota of 1 MB
        store.append_batch([_note(gw, i) for i in range(512)], now_ms=int(time.time() * 1000))
        before = store.size
    finally:
        store.close()
    text = gateway.config.read_text().replace("[metrics]", "[gateway]\nquota_mb = 1\n\n[metrics]")
    gateway.config.write_text(text)
    gateway.start()
    try:
        device.start(timeout=15)
        device.publish_reading("energy", READING)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not device.acks:
            time.sleep(0.1)
        [ack] = list(device.acks)
        assert ack["status"] == "refused" and ack["reason"] == "storage_full"
        assert device.pending() == 1  # the device keeps it, to send again
        assert gateway.wait_for("refusing readings: the database is")
    finally:
        device.stop()
        assert gateway.stop() == 0
    assert records(gateway.state) == []
    store = ChainStore(connect(gateway.state / "didgw.db"))
    try:
        assert store.size == before  # nothing written, nothing lost
    finally:
        store.close()
    assert didgw("chain", "verify", "--state-dir", str(gateway.state)).returncode == 0


def _note(actor: str, i: int) -> Any:
    from gateway.chain.store import NewEntry

    return NewEntry("note", actor, os.urandom(4096), None)

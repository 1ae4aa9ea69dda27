"""``didgw demo``: the whole product for a minute, on loopback, from a checkout.

Everything a real installation has, started privately in a temporary directory:
a mosquitto with dynamic security and an anvil ledger on free loopback ports,
a gateway initialised from nothing, a fleet of MQTT sensors, a CoAP sensor,
three households with solar roofs whose P1 meters write to pseudo-terminals,
their credentials, their orders on the local market, anchors on the ledger.
Part way through, a few attacks (a forged reading, a replayed one, a revoked
device) are refused. At the end: a summary, the record verified, and one
household's receipt checked against the ledger as a household would.

The demo drives the real programs (``didgw run``, the simulators in
``firmware-sim/``, the ``didgw`` commands) as separate processes, and reads
progress from the gateway's metrics and database, as an integrator would.
Ctrl-C (or any failure) stops every process it started.
"""

from __future__ import annotations

import contextlib
import html
import importlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from gateway.errors import DidgwError
from gateway.ops.broker import PrivateBroker, free_port, free_ports
from gateway.ops.status import live_health

ROOT = Path(__file__).resolve().parents[2]
SIM = ROOT / "firmware-sim"
ANVIL = ROOT / "scripts" / "anvil" / "node_modules" / ".bin" / "anvil"
FLEET = 20  # MQTT sensors
INTERVAL = 10  # seconds per market interval
FORGED_SEQ, REPLAYED_SEQ = 7, 1  # the intruder's two attacks, told apart by their seq


class DemoError(DidgwError):
    code = "demo_failed"


class Demo:
    """The demo's processes and files; :meth:`close` stops and removes everything."""

    def __init__(self, seconds: float, keep: bool, state_dir: Path | None = None) -> None:
        self.seconds, self.keep = seconds, keep
        self.tmp = Path(tempfile.mkdtemp(prefix="didgw-demo-"))
        self.state = state_dir or self.tmp / "state"
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.logs: list[IO[bytes]] = []
        tcp = ("mqtt", "mqtt_accounts", "anvil", "metrics", "http")
        self.ports = dict(zip(tcp, free_ports(len(tcp)), strict=True))
        self.ports["coap"] = free_port(socket.SOCK_DGRAM)
        self.env = {**os.environ, "DIDGW_STATE_DIR": str(self.state), "PYTHONUNBUFFERED": "1"}
        self.broker = PrivateBroker(
            self.tmp / "mosquitto",
            port=self.ports["mqtt"],
            accounts_port=self.ports["mqtt_accounts"],
        )

    # -- processes ---------------------------------------------------------------------

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Any:
        log = (self.tmp / f"{name}.log").open("ab")
        self.logs.append(log)
        process = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, env=env or self.env, cwd=self.tmp
        )
        self.processes.append((name, process))
        return process

    def didgw(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.tmp,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise DemoError(f"didgw {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def stop(self, name: str) -> None:
        for who, process in self.processes:
            if who == name and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(30)

    def close(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, process in reversed(self.processes):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.broker.stop()
        for log in self.logs:
            log.close()
        if self.keep:
            say(f"files kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if not self.state.is_relative_to(self.tmp):
            say(f"the gateway's state kept in {self.state}")

    # -- the parts -----------------------------------------------------------------------

    def start_broker(self) -> None:
        """A private mosquitto with the gateway's policy and account (``gateway/ops/broker.py``)."""
        self.broker.setup()

    def start_ledger(self) -> str:
        if not ANVIL.exists():
            raise DemoError(f"anvil is missing ({ANVIL}): run scripts/setup.sh --demo")
        port = self.ports["anvil"]
        self.spawn(
            "anvil",
            [str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--block-time", "1",
             "--state", str(self.tmp / "anvil-state.json"), "--silent"],
        )  # fmt: skip
        wait_for_port(port, "anvil")
        return f"http://127.0.0.1:{port}"

    def fund(self, rpc: str, address: str) -> None:
        body = {"jsonrpc": "2.0", "id": 1, "method": "anvil_setBalance",
                "params": [address, hex(10**18)]}  # fmt: skip
        request = urllib.request.Request(
            rpc, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()

    def write_config(self, rpc: str) -> Path:
        from gateway.files import write_private

        # The broker password in a 0600 file rather than the environment: it then appears in
        # no process's environment (/proc/<pid>/environ), not even the gateway's own.
        password = self.tmp / "mqtt-password"
        write_private(password, self.broker.gateway_password.encode() + b"\n")
        config = self.tmp / "gateway.toml"
        config.write_text(
            f"[mqtt]\nport = {self.ports['mqtt']}\nsession_seconds = 600\n"
            f'password_file = "{password}"\ntoken_dir = "{self.broker.token_dir}"\n'
            f"[coap]\nenabled = true\nport = {self.ports['coap']}\n"
            f"[metrics]\nport = {self.ports['metrics']}\n"
            f"[http]\nport = {self.ports['http']}\ndemo_links = true\n"
            "[meter]\nenabled = true\nrecord_every_seconds = 1.0\n"
            f"[market]\nenabled = true\ninterval_seconds = {INTERVAL}\ntick_seconds = 0.2\n"
            f'[anchor]\nenabled = true\nrpc_url = "{rpc}"\nevery_seconds = 5.0\n'
            "confirmations = 1\n"
        )
        self.env["DIDGW_CONFIG"] = str(config)
        return config


def wait_for_port(port: int, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise DemoError(f"{what} did not start listening on port {port}")


def say(text: str) -> None:
    print(text, flush=True)


def sim(script: str, *args: str) -> list[str]:
    return [sys.executable, str(SIM / script), *args]


def run(seconds: float = 60.0, *, keep: bool = False, state_dir: Path | None = None) -> int:
    """The demo; returns the exit status (0: everything checked out).

    The gateway's state (keys, database) goes to a temporary directory removed afterwards,
    or to ``state_dir``, which must not yet hold a gateway and is kept.
    """
    if not SIM.is_dir():
        raise DemoError("the demo runs from a checkout of didgw (firmware-sim/ is missing)")
    if state_dir is not None and state_dir.exists() and any(state_dir.iterdir()):
        raise DemoError(
            f"{state_dir} is not empty: the demo initialises a gateway from nothing; "
            "give it a new or empty directory"
        )
    # Ctrl-C (and SIGTERM) interrupt the demo wherever it is, even when it was started with
    # SIGINT ignored (as a shell does for background jobs); `close` then stops everything.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    demo = Demo(seconds, keep, state_dir)
    try:
        return _run(demo)
    except KeyboardInterrupt:
        say("\ninterrupted: stopping every process the demo started")
        return 130
    finally:
        demo.close()


def _run(demo: Demo) -> int:  # noqa: PLR0915 - one story, told in order
    say(f"didgw demo: everything in {demo.tmp}, on loopback ports {demo.ports}")
    demo.start_broker()
    rpc = demo.start_ledger()
    say(
        f"  mosquitto (dynamic security) on :{demo.ports['mqtt']} (device accounts on "
        f":{demo.ports['mqtt_accounts']}), anvil on {rpc}"
    )
    init = demo.didgw("init")
    gateway_did = init.split("Gateway DID: ")[1].split()[0]
    ledger = init.split("Ledger account: ")[1].split()[0]
    demo.fund(rpc, ledger)
    demo.write_config(rpc)
    say(f"  gateway {gateway_did}\n  its ledger account {ledger} (funded on anvil)")
    say(
        f"  people's front door: http://localhost:{demo.ports['http']}/ (sign in with a wallet "
        "at /login; receive a credential with didgw cred offer)"
    )

    fleet_dir = demo.tmp / "fleet"
    dids = subprocess.run(
        sim("sensor.py", "--state", str(fleet_dir), "--fleet", str(FLEET), "--print-did"),
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.split()  # fmt: skip
    for i, did in enumerate(dids):
        demo.didgw("device", "register", did, "--name", f"sensor {i}", "--kind", "sensor")
    coap_dir = demo.tmp / "coap-sensor"
    coap_did = subprocess.run(
        sim("coap_sensor.py", "--state", str(coap_dir), "--print-did"),
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()[-1]  # fmt: skip
    demo.didgw("device", "register", coap_did, "--name", "cellar sensor (CoAP)", "--kind", "sensor")
    households = []
    for i, (name, solar) in enumerate((("Lindenhof", 9000), ("Birkenweg", 6000), ("Ahornpl.", 0))):
        key = demo.tmp / f"house{i}.pem"
        did = demo.didgw("did", "new", "-o", str(key)).split()[-1]
        demo.didgw("device", "register", did, "--name", name, "--kind", "household")
        link = demo.tmp / f"ttyP1-{i}"
        demo.spawn(
            f"meter{i}",
            sim("p1meter.py", "--pty", str(link), "--rate", "2", "--speed", "120",
                "--start", "2024-06-15T10:30", "--seed", str(i + 1),
                "--solar-peak-w", str(solar)),
        )  # fmt: skip
        for _ in range(50):
            if link.exists():
                break
            time.sleep(0.1)
        demo.didgw("meter", "enroll", "--household", did, "--name", f"P1 {name}", "--port",
                   str(link))  # fmt: skip
        role = "seller" if solar else "buyer"
        demo.didgw("cred", "issue", "household", "--subject", did, "--format", "sd-jwt",
                   "--claim", f"household={did}", "--claim", f"role={role}",
                   "-o", str(demo.tmp / f"house{i}.sdjwt"))  # fmt: skip
        households.append((name, did, key, role))
    manager_key = demo.tmp / "manager.pem"
    manager_did = demo.didgw("did", "new", "-o", str(manager_key)).split()[-1]
    demo.didgw("cred", "issue", "facility-manager", "--subject", manager_did,
               "--format", "sd-jwt", "--claim", "name=Frank",
               "-o", str(demo.tmp / "manager.sdjwt"))  # fmt: skip
    say(f"  registered {FLEET} MQTT sensors, 1 CoAP sensor, 3 households with P1 meters on")
    say("  ptys and household credentials (SD-JWT VC: household, role), a facility manager")

    gateway = demo.spawn("gateway", [sys.executable, "-m", "gateway", "run"])
    deadline = time.monotonic() + 60
    while live_health("127.0.0.1", demo.ports["metrics"]) is None:
        if gateway.poll() is not None or time.monotonic() > deadline:
            raise DemoError(f"didgw run did not start; see {demo.tmp / 'gateway.log'}")
        time.sleep(0.3)
    print_console_links(demo, households[0][2])
    broker = f"127.0.0.1:{demo.ports['mqtt']}"
    accounts = f"127.0.0.1:{demo.ports['mqtt_accounts']}"
    demo.spawn(
        "fleet",
        sim("sensor.py", "--broker", broker, "--account-broker", accounts,
            "--state", str(fleet_dir), "--fleet", str(FLEET),
            "--rate", "2", "--count", str(int(demo.seconds * 2) + 10), "--quiet",
            "--gateway-did", gateway_did),
    )  # fmt: skip
    demo.spawn(
        "coap",
        sim("coap_sensor.py", "--server", f"coap://127.0.0.1:{demo.ports['coap']}",
            "--state", str(coap_dir), "--count", str(int(demo.seconds)), "--rate", "1",
            "--gateway-did", gateway_did, "--quiet"),
    )  # fmt: skip
    say(f"\nrunning for {demo.seconds:.0f} s (market interval {INTERVAL} s, anchors every 5 s):")
    attacks: dict[str, str] = {}
    start = time.monotonic()
    next_orders = 0.0
    last_line = ""
    while (elapsed := time.monotonic() - start) < demo.seconds:
        if gateway.poll() is not None:
            raise DemoError(f"didgw run stopped; see {demo.tmp / 'gateway.log'}")
        if elapsed >= next_orders:
            next_orders = elapsed + INTERVAL
            place_orders(demo, households)
        if not attacks and elapsed > demo.seconds / 3:
            attacks = attack(demo, dids, gateway_did)
        line = progress(demo, elapsed)
        if line != last_line:
            say("  " + line)
            last_line = line
        time.sleep(2.0)
    for name in ("fleet", "coap"):
        demo.stop(name)
    summary = progress(demo, time.monotonic() - start)
    return finish(demo, rpc, households, attacks, summary)


def print_console_links(demo: Demo, household_key: Path) -> None:
    """The console's two one-time links: the facility manager's, a household member's."""
    wait_for_port(demo.ports["http"], "the front door")
    base = f"http://localhost:{demo.ports['http']}"
    for who, key, credential in (
        ("facility manager", demo.tmp / "manager.pem", demo.tmp / "manager.sdjwt"),
        ("household", household_key, demo.tmp / "house0.sdjwt"),
    ):
        say(f"console {who}: {console_link(base, key, credential)}")
    say("  (each link signs one browser in, once, within 10 minutes)")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _http(url: str, data: dict[str, str] | None = None, **headers: str) -> tuple[int, Any, str]:
    """One request, redirects not followed: (status, headers, body)."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, body, headers)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=30) as answer:
            return answer.status, answer.headers, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.headers, refused.read().decode(errors="replace")


def _cookie(headers: Any, name: str) -> str:
    for line in headers.get_all("Set-Cookie") or []:
        if line.startswith(f"{name}="):
            return str(line.split(";", 1)[0].split("=", 1)[1])
    raise DemoError(f"the front door set no {name} cookie")


def console_link(base: str, key: Path, credential: Path) -> str:
    """A one-time sign-in link for the holder of ``credential``: the demo signs her in at
    /login with the wallet of ``firmware-sim/web_wallet.py`` (OpenID4VP, as a phone would),
    then asks the front door (``[http] demo_links``) to hand that session to a browser."""
    if str(SIM) not in sys.path:
        sys.path.insert(0, str(SIM))
    wallet: Any = importlib.import_module("web_wallet")
    device_module: Any = importlib.import_module("device")
    status, headers, page = _http(base + "/login")
    link = re.search(r'href="(openid4vp://[^"]+)"', page)
    request_id = re.search(r'name="id" value="([^"]+)"', page)
    if status != 200 or link is None or request_id is None:
        raise DemoError(f"/login answered {status} without a sign-in request")
    login = _cookie(headers, "didgw_login")
    identity = device_module.Identity.from_key(device_module.load_or_create_key(key))
    answer = wallet.sign_in(html.unescape(link[1]), [credential.read_text().strip()], identity)
    if answer.status != 200:
        raise DemoError(f"the demo's wallet could not sign in: {answer.body}")
    status, headers, _ = _http(
        base + "/login/finish", {"id": request_id[1]}, Cookie=f"didgw_login={login}"
    )
    session = _cookie(headers, "didgw_session")
    _, _, home = _http(base + "/", Cookie=f"didgw_session={session}")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', home)
    if csrf is None:
        raise DemoError("the demo's sign-in opened no session")
    status, _, made = _http(
        base + "/demo/links", {}, Cookie=f"didgw_session={session}", **{"X-CSRF-Token": csrf[1]}
    )
    if status != 200:
        raise DemoError(f"/demo/links answered {status}: {made.strip()}")
    return str(json.loads(made)["link"])


def place_orders(demo: Demo, households: list[tuple[str, str, Path, str]]) -> None:
    """Each interval: the sunny households offer surplus, the one without panels bids."""
    # A seller may offer what its meter has shown it can export in one interval: at most
    # a few Wh in the demo's 10 s intervals (peak export power times 10 s).
    for i, (_, _, key, role) in enumerate(households):
        if role == "seller":
            demo.didgw("market", "offer", "--key", str(key), "--wh", str(8 + 4 * i),
                       "--price", str(90 + 20 * i), "--interval", "next", check=False)  # fmt: skip
        else:
            demo.didgw("market", "bid", "--key", str(key), "--wh", "15", "--price", "200",
                       "--interval", "next", check=False)  # fmt: skip


def attack(demo: Demo, dids: list[str], gateway_did: str) -> dict[str, str]:
    """A forged and a replayed reading from an intruder that owns a registered key, and a
    device revoked while it sends; each is refused, and the metrics count why."""
    # The simulators import each other by name, as scripts run from their folder do.
    if str(SIM) not in sys.path:
        sys.path.insert(0, str(SIM))
    device_module: Any = importlib.import_module("device")

    intruder = device_module.Device(
        f"127.0.0.1:{demo.ports['mqtt']}",
        account_broker=f"127.0.0.1:{demo.ports['mqtt_accounts']}",
        key_path=demo.tmp / "intruder.pem",
        state_dir=demo.tmp / "intruder",
        gateway_did=gateway_did,
        log=lambda _: None,
    )
    demo.didgw("device", "register", intruder.did, "--name", "intruder", "--kind", "sensor")
    outcome = {}
    try:
        intruder.start(timeout=15)
        intruder.publish_reading("energy", {"import_kwh": {"value": 1.0, "unit": "kWh"}})
        intruder.wait_acked(timeout=10)
        # Forged: a reading in another device's name, signed by the intruder's key.
        body = {"did": dids[0], "seq": FORGED_SEQ, "ts": int(time.time() * 1000), "type": "energy",
                "values": {"import_kwh": {"value": 0.0, "unit": "kWh"}}}  # fmt: skip
        token = intruder.identity.sign_jws(device_module.READING_TYP, json.dumps(body).encode())
        intruder.publish_raw(token)
        # Replayed: reading number 1 again, with other values.
        replay = device_module.make_reading(
            intruder.identity, seq=REPLAYED_SEQ, ts_ms=int(time.time() * 1000),
            reading_type="energy", values={"import_kwh": {"value": 9.9, "unit": "kWh"}},
        )  # fmt: skip
        intruder.publish_raw(replay)
        # Both are checked at once, by any of the gateway's reading workers: their refusals
        # may come back in either order, so each is told apart by its sequence number.
        refused: dict[int, str] = {}
        deadline = time.monotonic() + 10
        while len(refused) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            refused = {
                a["seq"]: str(a.get("reason"))
                for a in intruder.acks.copy()
                if a.get("status") == "refused" and a.get("seq") in (FORGED_SEQ, REPLAYED_SEQ)
            }
        outcome["forged reading (another device's DID)"] = refused.get(FORGED_SEQ, "no answer")
        outcome["replayed reading (seq 1 again)"] = refused.get(REPLAYED_SEQ, "no answer")
    finally:
        intruder.stop()
    demo.didgw("device", "revoke", dids[-1], "--reason", "reported stolen", "--by", "fm:demo")
    outcome["device revoked while sending"] = "account deleted; new sessions not_active"
    say("  attacks: " + "; ".join(f"{k}: {v}" for k, v in outcome.items()))
    return outcome


_last_progress: list[tuple[float, int]] = []


def progress(demo: Demo, elapsed: float) -> str:
    live = live_health("127.0.0.1", demo.ports["metrics"])
    db = sqlite3.connect(f"{(demo.state / 'didgw.db').as_uri()}?mode=ro", uri=True)
    try:
        trades = db.execute("SELECT count(*) FROM market_trades").fetchone()[0]
        anchors = db.execute(
            "SELECT count(*), max(size) FROM anchors WHERE state = 'confirmed'"
        ).fetchone()
        entries = db.execute("SELECT count(*) FROM chain_entries").fetchone()[0]
    finally:
        db.close()
    readings = refused = 0
    if live is not None:
        readings = int(sum(v for k, v in live.readings.items() if k in ("accepted", "duplicate")))
        refused = int(
            sum(v for k, v in live.readings.items() if k not in ("accepted", "duplicate"))
        )
    then, before = _last_progress[-1] if _last_progress else (0.0, 0)
    rate = (readings - before) / (elapsed - then) if elapsed - then > 0.5 else 0.0
    _last_progress.append((elapsed, readings))
    return (
        f"{elapsed:4.0f} s  readings {readings:,} ({rate:,.0f}/s)  refused {refused}  "
        f"trades {trades}  anchors {anchors[0]} "
        f"(covering {anchors[1] or 0:,} of {entries:,} entries)"
    )


def _latest_meter_reading(db_path: Path, household: str) -> int | None:
    db = sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT max(e.seq) FROM chain_entries e JOIN chain_actors a ON a.id = e.actor "
            "JOIN meters m ON m.did = a.did WHERE m.household = ? AND e.kind = 'vouched_reading'",
            [household],
        ).fetchone()
    finally:
        db.close()
    return None if row[0] is None else int(row[0])


def _anchored(db_path: Path) -> int | None:
    """The tree size of the newest confirmed anchor."""
    db = sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True)
    try:
        size = db.execute("SELECT max(size) FROM anchors WHERE state = 'confirmed'").fetchone()[0]
    finally:
        db.close()
    return None if size is None else int(size)


def finish(
    demo: Demo,
    rpc: str,
    households: list[tuple[str, str, Path, str]],
    attacks: dict[str, str],
    summary: str,
) -> int:
    live = live_health("127.0.0.1", demo.ports["metrics"])
    say("\nsummary")
    say(f"  {summary}")
    if live is not None:
        for outcome, n in sorted(live.readings.items()):
            if n:
                say(f"  readings {outcome:<14} {int(n):>7,}")
        for result, n in sorted(live.authentications.items()):
            if n:
                say(f"  authentications {result:<8} {int(n):>5,}")
    for what, why in attacks.items():
        say(f"  refused: {what} -> {why}")
    # One household's latest vouched meter reading, once an anchor covers it.
    name, did, _, _ = households[0]
    seq = _latest_meter_reading(demo.state / "didgw.db", did)
    deadline = time.monotonic() + 30
    while seq is not None and time.monotonic() < deadline:
        if (_anchored(demo.state / "didgw.db") or 0) > seq:
            break
        time.sleep(1.0)
    demo.stop("gateway")
    verified = subprocess.run(
        [sys.executable, "-m", "gateway", "chain", "verify"],
        env=demo.env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    say(f"  the record: {verified.stdout.strip() or verified.stderr.strip()}")
    if seq is None:
        say(f"  no anchored meter reading of {name} to make a receipt of")
        return 1
    receipt = demo.tmp / "receipt.json"
    demo.didgw("receipt", str(seq), "-o", str(receipt))
    say(f"\n{name}'s meter reading {seq}, checked against the ledger with nothing but the receipt:")
    check = subprocess.run(
        [sys.executable, "-m", "gateway", "verify-receipt", str(receipt), "--rpc", rpc],
        env=demo.env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    say("\n".join(f"  {line}" for line in check.stdout.strip().splitlines()))
    return 0 if check.returncode == 0 and verified.returncode == 0 else 1

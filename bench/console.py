"""The facility manager's devices table: how fast a page answers with 10,000 devices.

    python bench/console.py [--quick] [--devices N] [--readings N] [--requests N]

A real ``didgw run`` (HTTP only, pinned to one core with ``taskset``) with ``--devices``
registered devices (10,000) and ``--readings`` readings of each on the record, all appended
today (so "readings today" counts them), plus a few busy devices with 2,000 readings each.
A facility manager signs in for real (OpenID4VP, ``firmware-sim/web_wallet.py``); then
``GET /console/devices`` (50 rows, each with last seen and readings today from the record)
is asked ``--requests`` times per kind of page, one request in flight:

* the first page and pages all over the table (cursors) in registration order;
* sorted by name and by last seen (the latter looks up every matching device's newest
  reading); a search by name; filtered by status, by kind, by metadata;

and ``GET /api/devices?limit=100`` the same way; then every other page of the console a few
times (a device's page, people, record, health). The last line is one JSON object:
``devices_page_p95_ms`` (p95 over every console page asked), each kind's p95, the API's p95,
the gateway's resident memory after all that (``rss_mb``), the same gateway's with its HTTP
edge off (``rss_mb_without_http``: started on the same state, idle) and their difference,
what the front door with its console costs (``console_rss_mb``). ``--quick``: 2,000
devices, fewer requests.
"""

from __future__ import annotations

import os
import sys

# bench/http.py has the name of the standard library's http package: take this folder off
# the path before anything imports http.client.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

import argparse
import html
import json
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DIDGW = str(Path(sys.executable).with_name("didgw"))
sys.path.insert(0, str(ROOT / "firmware-sim"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


class Gateway:
    """``didgw run`` with only its HTTP edge."""

    def __init__(self, work: Path, *, http: bool = True) -> None:
        self.work = work
        self.state = work / "state"
        self.port = free_port()
        self.url = f"http://localhost:{self.port}"
        self.config = work / ("gateway.toml" if http else "gateway-no-http.toml")
        self.config.write_text(
            "[mqtt]\nenabled = false\n\n[coap]\nenabled = false\n\n[anchor]\nenabled = false\n\n"
            f"[metrics]\nenabled = false\n\n[http]\nenabled = {str(http).lower()}\n"
            f"port = {self.port}\nsource_rate = 1000000.0\nsource_burst = 100000\n"
        )
        self.env = {
            **os.environ,
            "DIDGW_STATE_DIR": str(self.state),
            "DIDGW_CONFIG": str(self.config),
            "PYTHONUNBUFFERED": "1",
        }
        self.process: subprocess.Popen[str] | None = None
        self.log = work / "gateway.log"

    def didgw(self, *args: str) -> str:
        done = subprocess.run(
            [DIDGW, *args], env=self.env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"didgw {' '.join(args)}: {done.stderr}")
        return done.stdout + done.stderr

    def start(self) -> None:
        one_core = shutil.which("taskset") and (os.cpu_count() or 1) > 1
        pin = ["taskset", "-c", "0"] if one_core else []
        self.process = subprocess.Popen(
            [*pin, DIDGW, "run"],
            env=self.env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while " running (state " not in self.log.read_text():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"the gateway did not start:\n{self.log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


def fill(gateway: Gateway, devices: int, readings: int) -> None:
    """Register the devices (kinds, statuses and a ``site`` member spread over them) and
    append their readings to the record, all today."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.chain.store import NewEntry
    from gateway.config import load_config
    from gateway.identity.signing import Signer
    from gateway.service import open_gateway

    kinds = ("meter", "sensor", "inverter")
    with open_gateway(load_config(gateway.config), gateway.state) as opened:
        dids = []
        for i in range(devices):
            did = Signer.for_did_key(Ed25519PrivateKey.generate()).did
            opened.registry.register(
                did, name=f"meter {i:05d}", kind=kinds[i % 3], actor="bench", now=time.time(),
                metadata={"site": f"site-{i % 20}", "floor": str(i % 7)},
            )  # fmt: skip
            if i % 50 == 0:
                opened.registry.suspend(did, actor="bench", reason="bench", now=time.time())
            dids.append(did)
        chain = opened.chain()
        batch: list[NewEntry] = []
        now_ms = int(time.time() * 1000)
        busy = dids[:: max(1, devices // 10)]  # ten devices with 2,000 readings each
        plan = [(did, readings) for did in dids] + [(did, 2000) for did in busy]
        sent: dict[str, int] = {}
        for round_ in range(max(readings, 2000)):
            for did, count in plan:
                if round_ < count and sent.get(did, 0) <= round_:
                    sent[did] = round_ + 1
                    batch.append(NewEntry("reading", did, b"r" * 180, round_ + 1))
            if len(batch) >= 5000:
                chain.append_batch(batch, now_ms=now_ms)
                batch = []
        if batch:
            chain.append_batch(batch, now_ms=now_ms)


def sign_in(gateway: Gateway) -> tuple[str, str]:
    """A facility manager's sign-in at /login (her credential issued by ``didgw cred
    issue``, her wallet ``web_wallet``): the session cookie and its anti-CSRF token."""
    import device
    import requests
    import web_wallet

    identity = device.Identity.from_key(device.load_or_create_key(gateway.work / "frank.pem"))
    out = gateway.work / "frank.sdjwt"
    gateway.didgw(
        "cred", "issue", "facility-manager", "--subject", identity.did, "--format", "sd-jwt",
        "--claim", "name=Frank", "-o", str(out),
    )  # fmt: skip
    page = requests.get(gateway.url + "/login", timeout=10)
    link = html.unescape(re.search(r'href="(openid4vp://[^"]+)"', page.text)[1])  # type: ignore[index]
    request_id = re.search(r'name="id" value="([^"]+)"', page.text)[1]  # type: ignore[index]
    answer = web_wallet.sign_in(link, [out.read_text().strip()], identity)
    if answer.status != 200:
        raise SystemExit(f"the wallet's answer was refused: {answer.body}")
    finish = requests.post(
        gateway.url + "/login/finish", data={"id": request_id}, allow_redirects=False,
        headers={"Cookie": f"didgw_login={page.cookies['didgw_login']}"}, timeout=10,
    )  # fmt: skip
    cookie = finish.cookies["didgw_session"]
    home = requests.get(gateway.url + "/", headers={"Cookie": f"didgw_session={cookie}"})
    return cookie, re.search(r'name="csrf_token" value="([^"]+)"', home.text)[1]  # type: ignore[index]


def timed(session: Any, url: str) -> tuple[float, str]:
    start = time.perf_counter()
    answer = session.get(url, timeout=30)
    took = (time.perf_counter() - start) * 1000
    if answer.status_code != 200:
        raise SystemExit(f"GET {url}: {answer.status_code} {answer.text[:300]}")
    return took, answer.text


def measure(gateway: Gateway, cookie: str, requests_each: int) -> dict[str, list[float]]:
    import requests

    session = requests.Session()
    session.headers["Cookie"] = f"didgw_session={cookie}"
    base = gateway.url + "/console/devices"
    # the cursors of the registration order, for pages all over the table
    cursors: list[str] = []
    url: str | None = base
    while url is not None:
        _, text = timed(session, url)
        found = re.search(r'href="(/console/devices\?[^"]*after=[^"]+)" rel="next"', text)
        url = gateway.url + html.unescape(found[1]) if found else None
        if found:
            cursors.append(url)
    kinds: dict[str, list[str]] = {
        "first_page": [base],
        "pages_all_over": cursors or [base],
        "by_name": [base + "?sort=name"],
        "by_last_seen": [base + "?sort=last_seen"],
        "search": [base + "?q=" + urllib.parse.quote(f"meter 0{i}") for i in range(10)],
        "status": [base + "?status=suspended", base + "?status=active"],
        "kind": [base + "?kind=inverter&sort=name"],
        "metadata": [base + "?meta=" + urllib.parse.quote(f"site=site-{i}") for i in range(20)],
    }
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for name, urls in kinds.items():
        for i in range(requests_each):
            times[name].append(timed(session, urls[(i * 7919) % len(urls)])[0])
    api = []
    for _ in range(requests_each):
        api.append(timed(session, gateway.url + "/api/devices?limit=100&sort=name")[0])
    times["api"] = api
    device = re.search(r'href="(/console/devices/did[^"]+)"', timed(session, base)[1])
    others = ["/console/people", "/console/record", "/console/health", "/my-data"]
    for path in [*others, *([html.unescape(device[1])] if device else [])]:
        for _ in range(5):
            timed(session, gateway.url + path)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--devices", type=int)
    parser.add_argument("--readings", type=int, default=20)
    parser.add_argument("--requests", type=int)
    args = parser.parse_args()
    devices = args.devices or (2000 if args.quick else 10_000)
    requests_each = args.requests or (30 if args.quick else 200)
    with tempfile.TemporaryDirectory(prefix="didgw-console-") as tmp:
        gateway = Gateway(Path(tmp))
        gateway.didgw("init")
        start = time.perf_counter()
        fill(gateway, devices, args.readings)
        filled = time.perf_counter() - start
        gateway.start()
        try:
            cookie, _ = sign_in(gateway)
            times = measure(gateway, cookie, requests_each)
            assert gateway.process is not None
            memory = rss_mb(gateway.process.pid)
        finally:
            gateway.stop()
        bare = Gateway(Path(tmp), http=False)
        bare.start()
        try:
            time.sleep(2)
            assert bare.process is not None
            without_http = rss_mb(bare.process.pid)
        finally:
            bare.stop()
    console = [t for k, v in times.items() if k != "api" for t in v]
    result: dict[str, Any] = {
        "devices": devices,
        "readings_per_device": args.readings,
        "fill_s": round(filled, 1),
        "devices_page_p95_ms": round(p95(console), 1),
        "devices_page_p50_ms": round(statistics.median(console), 1),
        **{f"{k}_p95_ms": round(p95(v), 1) for k, v in times.items() if k != "api"},
        "api_devices_100_p95_ms": round(p95(times["api"]), 1),
        "rss_mb": round(memory, 1),
        "rss_mb_without_http": round(without_http, 1),
        "console_rss_mb": round(memory - without_http, 1),
    }
    for key, value in result.items():
        print(f"{key:28} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

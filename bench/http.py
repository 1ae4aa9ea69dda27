"""People's front door: OpenID4VP sign-ins per second, the API's latency, the edge's memory.

    python bench/http.py [--quick] [--devices N] [--seconds S] [--clients N]

Everything runs on loopback against a real ``didgw run`` (HTTP on, MQTT, CoAP and anchoring
off), pinned to one core (``taskset``), the load generator in this process on the other:

* ``vp_login_per_s``: complete OpenID4VP sign-ins per second, each: ``GET /login`` (a new
  sign-in request and its page), ``GET`` its ``request_uri`` (the signed request object), a
  presentation of a household credential with key binding (made by
  ``firmware-sim/web_wallet.py``, the code the tests use) posted to the ``response_uri``
  (verified, its status checked, both record entries written, the request marked done),
  then the browser's ``POST /login/finish`` (the session opened); ``--clients`` load
  processes, each with one sign-in in flight on a keep-alive connection;
* ``api_p99_ms``: p99 of ``GET /api/devices?limit=100`` with ``--devices`` registered (10,000),
  an API token in the ``Authorization`` header, pages spread over the whole table, one
  request in flight;
* ``rss_mb_http``: the gateway's resident memory after that load, less the same gateway's
  with ``[http] enabled = false`` (the edge's own cost: its server, Jinja2, its thread, sessions).

The last line is one JSON object with the figures. ``--quick`` takes under a minute.
"""

from __future__ import annotations

import os
import sys

# This file has the name of the standard library's http package: take its folder off the
# path before anything imports http.client (aiohttp, requests and paho do).
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DIDGW = str(Path(sys.executable).with_name("didgw"))
sys.path.insert(0, str(ROOT / "firmware-sim"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Gateway:
    """``didgw run`` with only its HTTP edge, on one core."""

    def __init__(self, work: Path, *, http: bool = True) -> None:
        self.state = work / "state"
        self.port = free_port()
        self.url = f"http://localhost:{self.port}"
        self.config = work / "gateway.toml"
        self.config.write_text(
            "[mqtt]\nenabled = false\n\n[coap]\nenabled = false\n\n[anchor]\nenabled = false\n\n"
            f"[metrics]\nenabled = false\n\n[http]\nenabled = {'true' if http else 'false'}\n"
            f"port = {self.port}\nsource_rate = 1000000.0\nsource_burst = 100000\n"
            "max_pending_logins = 100000\n"
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
        return done.stdout

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

    def rss_mb(self) -> float:
        assert self.process is not None
        return rss_kb(self.process.pid) / 1024

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


def register_devices(gateway: Gateway, count: int) -> float:
    """Register ``count`` did:key devices through the library before the gateway runs."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.config import load_config
    from gateway.identity.signing import Signer
    from gateway.service import open_gateway

    start = time.perf_counter()
    with open_gateway(load_config(gateway.config), gateway.state) as opened:
        for i in range(count):
            did = Signer.for_did_key(Ed25519PrivateKey.generate()).did
            opened.registry.register(
                did, name=f"meter {i:05d}", kind="meter", actor="bench", now=time.time()
            )
    return count / (time.perf_counter() - start)


async def api_latency(gateway: Gateway, token: str, count: int, requests: int) -> list[float]:
    """Milliseconds of each ``GET /api/devices?limit=100``, pages all over the table."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"}
    times: list[float] = []
    async with aiohttp.ClientSession(headers=headers) as client:
        cursors: list[str | None] = [None]
        url: str | None = f"{gateway.url}/api/devices?limit=100"
        while url is not None and len(cursors) < count // 100 + 1:  # walk once for cursors
            async with client.get(url) as answer:
                page = await answer.json()
            after = page.get("next")
            cursors.append(after)
            url = f"{gateway.url}/api/devices?limit=100&after={after}" if after else None
        cursors = [c for c in cursors if c is not None] + [None]
        for i in range(requests):
            after = cursors[(i * 7919) % len(cursors)]
            query = f"?limit=100&after={after}" if after else "?limit=100"
            start = time.perf_counter()
            async with client.get(f"{gateway.url}/api/devices{query}") as answer:
                await answer.read()
                if answer.status != 200:
                    raise SystemExit(f"GET /api/devices: {answer.status}")
            times.append((time.perf_counter() - start) * 1000)
    return times


def _sign_in_loop(url: str, credential: str, key_pem: bytes, deadline: float, out: Any) -> None:
    """One load process: sign-ins back to back until ``deadline`` on one keep-alive
    connection, as a browser and its wallet would (the wallet's side made by
    ``web_wallet.respond``; it skips checking the request object's signature, which is the
    wallet's work, not the gateway's)."""
    import html
    import http.client
    import re
    import urllib.parse

    import device
    import web_wallet
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    identity = device.Identity.from_key(load_pem_private_key(key_pem, None))  # type: ignore[arg-type]
    where = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}

    def ask(method: str, path: str, body: str | None = None, **headers: str) -> Any:
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        answer.text = answer.read().decode()
        return answer

    done = 0
    try:
        while time.monotonic() < deadline:
            page = ask("GET", "/login")
            cookie = re.search(r"didgw_login=([^;]+)", page.getheader("Set-Cookie") or "")
            found = re.search(r'href="(openid4vp://[^"]+)"', page.text)
            ident = re.search(r'name="id" value="([^"]+)"', page.text)
            if page.status != 200 or not cookie or not found or not ident:
                raise SystemExit(f"GET /login: {page.status} {page.text[:200]}")
            client_id, request_uri = web_wallet.parse_link(html.unescape(found[1]))
            jwt = ask("GET", urllib.parse.urlsplit(request_uri).path).text.strip()
            claims = json.loads(device.b64u_decode(jwt.split(".")[1], "request object"))
            request = web_wallet.AuthorizationRequest(client_id, claims, jwt)
            form = web_wallet.respond(request, [credential], identity)
            posted = ask("POST", "/oid4vp/response", urllib.parse.urlencode(form), **form_type)
            if posted.status != 200:
                raise SystemExit(f"wallet response: {posted.status} {posted.text[:200]}")
            finish = ask(
                "POST", "/login/finish", urllib.parse.urlencode({"id": ident[1]}),
                Cookie=f"didgw_login={cookie[1]}", **form_type,
            )  # fmt: skip
            if finish.status != 303 or "didgw_session=" not in (
                finish.getheader("Set-Cookie") or ""
            ):
                raise SystemExit(f"POST /login/finish: {finish.status}")
            done += 1
    finally:
        out.put(done)


def vp_logins(
    gateway: Gateway, credential: str, key_pem: bytes, clients: int, seconds: float
) -> int:
    """Complete sign-ins within ``seconds`` by ``clients`` load processes, each one sign-in
    at a time; the load runs on the cores the gateway is not pinned to."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    out = context.Queue()
    deadline = time.monotonic() + seconds
    workers = [
        context.Process(
            target=_sign_in_loop, args=(gateway.url, credential, key_pem, deadline, out)
        )
        for _ in range(clients)
    ]
    for worker in workers:
        worker.start()
    counts = [out.get(timeout=seconds + 60) for _ in workers]
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise SystemExit(f"a load process failed (exit {worker.exitcode})")
    return sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=0.0, help="sign-in load duration")
    parser.add_argument(
        "--clients", type=int, default=4, help="load processes, one sign-in each in flight"
    )
    args = parser.parse_args()
    if (os.cpu_count() or 1) > 1:  # the gateway has core 0; the load the others
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))
    seconds = args.seconds or (8.0 if args.quick else 30.0)
    api_requests = 500 if args.quick else 3000

    import device

    with tempfile.TemporaryDirectory(prefix="didgw-bench-http-") as tmp:
        work = Path(tmp)
        (work / "on").mkdir()
        (work / "off").mkdir()
        gateway = Gateway(work / "on")
        gateway.didgw("init")
        rate = register_devices(gateway, args.devices)
        print(f"registered {args.devices:,} devices through the library ({rate:,.0f}/s)")
        token = gateway.didgw("api-token", "create", "bench", "--role", "reader").split()[-1]
        identity = device.Identity.from_key(device.load_or_create_key(work / "holder.pem"))
        key_pem = (work / "holder.pem").read_bytes()
        gateway.didgw(
            "cred",
            "issue",
            "household",
            "--subject",
            identity.did,
            "--format",
            "sd-jwt",
            "--claim",
            f"household={identity.did}",
            "--claim",
            "role=seller",
            "-o",
            str(work / "holder.sdjwt"),
        )
        credential = (work / "holder.sdjwt").read_text().strip()
        gateway.start()
        try:
            times = asyncio.run(api_latency(gateway, token, args.devices, api_requests))
            p99 = statistics.quantiles(times, n=100)[98]
            print(
                f"GET /api/devices?limit=100: median {statistics.median(times):.1f} ms, "
                f"p99 {p99:.1f} ms ({len(times)} requests)"
            )
            logins = vp_logins(gateway, credential, key_pem, args.clients, seconds)
            per_s = logins / seconds
            print(
                f"OpenID4VP sign-ins: {logins} in {seconds:.0f} s = {per_s:.0f}/s "
                f"({args.clients} in flight, gateway on one core)"
            )
            rss_on = gateway.rss_mb()
        finally:
            gateway.stop()
        baseline = Gateway(work / "off", http=False)
        baseline.didgw("init")
        register_devices(baseline, args.devices)
        baseline.start()
        try:
            time.sleep(1.0)
            rss_off = baseline.rss_mb()
        finally:
            baseline.stop()
        extra = rss_on - rss_off
        print(f"gateway memory: {rss_on:.1f} MB with the front door, {rss_off:.1f} MB without")
    print(
        json.dumps(
            {
                "vp_login_per_s": round(per_s, 1),
                "api_p99_ms": round(p99, 2),
                "rss_mb_http": round(extra, 1),
                "devices": args.devices,
                "clients": args.clients,
                "quick": args.quick,
            }
        )
    )


if __name__ == "__main__":
    main()

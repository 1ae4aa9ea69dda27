"""Devices over CoAP: aiocoap's raw rate against the gateway's rate of recorded readings.

    python bench/coap.py [--quick] [--devices N] [--seconds S]

Everything runs on loopback, the servers each in their own process, the load
generator in this one (one aiocoap client context per simulated device: a
context keeps one confirmable request in flight, so N contexts keep N):

* ``raw_per_s``: confirmable POSTs per second, each answered 2.04, to a trivial
  aiocoap resource (it returns an empty 2.04), with payloads the size of a
  signed reading;
* ``gateway_per_s``: readings per second through ``didgw run`` (``[coap]`` on,
  MQTT off): devices that authenticated through the protocol POST readings
  signed beforehand (COSE_Sign1, made by ``firmware-sim/coap_sensor.py``); 2.04
  acks received per second, each one after the reading was verified and
  durably committed (SQLite WAL, ``synchronous=FULL``);
* ``ratio``: ``gateway_per_s / raw_per_s``;
* the server's CPU per request (µs, user + system of the server process) and the
  load generator's CPU (percent of one core) for both.

Both servers are up at once and measured in alternating rounds (3; ``--quick``:
1), the best round of each kept, so that a busy moment on a shared machine does
not fall on one side only. The first second of each run is a warm-up and not
counted. ``--quick`` takes about 30 seconds. The last line is one JSON object
with the figures.
"""

from __future__ import annotations

import os
import sys

# bench/http.py has the name of the standard library's http package: this folder comes off
# the import path before anything imports http.client (paho, aiohttp, requests, web3 do).
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

import argparse
import asyncio
import contextlib
import json
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DIDGW = str(Path(sys.executable).with_name("didgw"))

RAW_SERVER = """
import asyncio, sys
import aiocoap, aiocoap.resource as resource

class Trivial(resource.Resource):
    async def render_post(self, request):
        return aiocoap.Message(code=aiocoap.CHANGED)

async def main():
    site = resource.Site()
    site.add_resource(["r"], Trivial())
    await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", int(sys.argv[1])))
    print("ready", flush=True)
    await asyncio.get_running_loop().create_future()

asyncio.run(main())
"""


def load_sensor() -> Any:
    """firmware-sim/coap_sensor.py, imported by name as the simulators import each other."""
    sys.path.insert(0, str(ROOT / "firmware-sim"))
    import coap_sensor

    return coap_sensor


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(uri: str, payloads: list[list[bytes]], seconds: float) -> tuple[int, int, float]:
    """Each device POSTs its payloads one after the other (CON); returns (answered 2.04
    after the warm-up, refused, measured seconds)."""
    from aiocoap import POST, Context, Message

    contexts = [await Context.create_client_context() for _ in payloads]
    start = time.monotonic()
    warm, end = start + 1.0, start + 1.0 + seconds
    counted = refused = 0

    async def device(ctx: Any, mine: list[bytes]) -> None:
        nonlocal counted, refused
        for payload in mine:
            now = time.monotonic()
            if now >= end:
                return
            answer = await ctx.request(Message(code=POST, uri=uri, payload=payload)).response
            if not answer.code.is_successful():
                refused += 1
            elif time.monotonic() >= warm:
                counted += 1

    await asyncio.gather(*(device(c, p) for c, p in zip(contexts, payloads, strict=True)))
    elapsed = min(time.monotonic(), end) - warm
    for ctx in contexts:
        await ctx.shutdown()
    return counted, refused, elapsed


def measure(pid: int, uri: str, payloads: list[list[bytes]], seconds: float) -> dict[str, float]:
    server0, client0 = cpu_seconds(pid), time.process_time()
    wall0 = time.monotonic()
    counted, refused, elapsed = asyncio.run(load(uri, payloads, seconds))
    wall = time.monotonic() - wall0
    server, client = cpu_seconds(pid) - server0, time.process_time() - client0
    rate = counted / elapsed
    return {
        "per_s": round(rate, 1),
        "refused": refused,
        # every request of the run (the warm-up's too) over the server's CPU of the run
        "server_cpu_us_per_request": round(server / max(1, rate * wall) * 1e6, 1),
        "server_cpu_percent": round(100 * server / wall, 1),
        "client_cpu_percent": round(100 * client / wall, 1),
    }


@contextlib.contextmanager
def raw_server() -> Iterator[tuple[int, str]]:
    """The trivial aiocoap server: (its pid, the URI of its resource)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", RAW_SERVER, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield server.pid, f"coap://127.0.0.1:{port}/r"
    finally:
        server.terminate()
        server.communicate()


@contextlib.contextmanager
def gateway_server(
    identities: list[Any], workdir: Path, sensor: Any
) -> Iterator[tuple[int, str, Path]]:
    """``didgw run`` with the devices registered and authenticated: (pid, URI, state)."""
    state = workdir / "state"
    env = {**os.environ, "DIDGW_STATE_DIR": str(state)}
    subprocess.run([DIDGW, "init"], env=env, check=True, capture_output=True)
    for i, identity in enumerate(identities):
        subprocess.run(
            [DIDGW, "device", "register", identity.did, "--name", f"bench {i}", "--kind", "sensor"],
            env=env,
            check=True,
            capture_output=True,
        )
    port = free_port()
    config = workdir / "gateway.toml"
    config.write_text(
        "[mqtt]\nenabled = false\n[coap]\nenabled = true\n"
        f"port = {port}\npeer_rate = 1000000.0\npeer_burst = 1000000\n"
    )
    uri = f"coap://127.0.0.1:{port}"
    gateway = subprocess.Popen(
        [DIDGW, "run", "--config", str(config)],
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert gateway.stdout is not None
        for line in gateway.stdout:
            if " running (state " in line:
                break
        else:
            raise SystemExit("the gateway did not start")

        async def authenticate_all() -> None:
            from aiocoap import Context

            ctx = await Context.create_client_context()
            for identity in identities:
                await sensor.CoapDevice(identity, _NoOutbox(), uri).authenticate(ctx)
            await ctx.shutdown()

        asyncio.run(authenticate_all())
        yield gateway.pid, f"{uri}/r", state
    finally:
        gateway.terminate()
        gateway.communicate(timeout=30)


def recorded_readings(state: Path) -> int:
    from gateway.chain.store import ChainStore
    from gateway.db import connect

    store = ChainStore(connect(state / "didgw.db"))
    try:
        return sum(1 for e in store.entries() if e.kind == "reading")
    finally:
        store.close()


class _NoOutbox:
    """Authentication only: the bench's readings are signed beforehand."""

    def remove(self, seq: int) -> bool:
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of 3 s, about 30 s")
    parser.add_argument("--devices", type=int, default=16, help="client contexts (default 16)")
    parser.add_argument("--seconds", type=float, help="measured seconds per run (5; quick: 3)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (3; quick: 1)")
    args = parser.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 5.0)
    rounds = args.rounds or (1 if args.quick else 3)
    sensor = load_sensor()
    base = os.environ.get("DIDGW_BENCH_DIR")
    raws: list[dict[str, float]] = []
    gateways: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        work = Path(tmp)
        identities = [
            sensor.Identity.from_key(sensor.load_or_create_key(work / f"dev-{i}.pem"))
            for i in range(args.devices)
        ]
        per_round = int(4000 * (seconds + 1) / args.devices) + 10
        now = int(time.time() * 1000)
        signed = [
            [sensor.make_reading(ident, seq, now) for seq in range(1, per_round * rounds + 1)]
            for ident in identities
        ]
        size = len(signed[0][0])
        filler = [[os.urandom(size)] * per_round * 2 for _ in identities]
        with gateway_server(identities, work, sensor) as gw, raw_server() as raw:
            for r in range(rounds):  # alternating, so that a busy moment hits both
                raws.append(measure(raw[0], raw[1], filler, seconds))
                mine = [d[r * per_round : (r + 1) * per_round] for d in signed]
                gateways.append(measure(gw[0], gw[1], mine, seconds))
                print(f"round {r + 1}: raw {raws[-1]}\n         gateway {gateways[-1]}")
            state = gw[2]
        recorded = recorded_readings(state)
    best_raw = max(raws, key=lambda m: m["per_s"])
    best_gw = max(gateways, key=lambda m: m["per_s"])
    print(
        f"payload {size} bytes, {args.devices} devices (one client context each), "
        f"{rounds} rounds of {seconds} s, best of each kept"
    )
    summary = {
        "raw_per_s": best_raw["per_s"],
        "gateway_per_s": best_gw["per_s"],
        "ratio": round(best_gw["per_s"] / best_raw["per_s"], 3),
        "payload_bytes": size,
        "devices": args.devices,
        "raw_server_cpu_us": best_raw["server_cpu_us_per_request"],
        "gateway_server_cpu_us": best_gw["server_cpu_us_per_request"],
        "raw_client_cpu_percent": best_raw["client_cpu_percent"],
        "gateway_client_cpu_percent": best_gw["client_cpu_percent"],
        "gateway_refused": sum(g["refused"] for g in gateways),
        "recorded": recorded,
        "rounds": rounds,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""The load generator's own cost: CPU per simulated device, paho's threads against one event loop.

    python bench/loadgen.py [--devices N] [--rate R] [--seconds S]

A real mosquitto (gateway/ops/broker.py ``PrivateBroker``); ``--devices`` (150: what one paho
process can hold, see device.Fleet) anonymous clients each publish QoS 1 messages of 400 bytes
(a reading's size) to the authentication topic (which anonymous clients may use; nobody
subscribes) at ``--rate`` messages per second in all (150), for ``--seconds`` (20). Once with
paho-mqtt clients, each with its network thread (``loop_start``, as device.py and the
benchmarks used to), once with firmware-sim/fleet.py's ``Connection`` (one asyncio loop). Each
runs in a process of its own; its CPU time (user + system) over the sending is reported in
percent of one core, and per device. No signing: this is the transport alone (signing a
reading costs the same either way). The last line is one JSON object.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import queue
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "firmware-sim")]

import fleet
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.ops.broker import PrivateBroker

PAYLOAD = b"x" * 400


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def with_paho(host: str, port: int, topic: str, s: dict) -> float:
    clients = []
    for i in range(s["devices"]):
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"didgw-paho-{os.getpid()}-{i}")
        connected = threading.Event()
        c.on_connect = lambda *_a, e=connected: e.set()
        c.connect(host, port, keepalive=120)
        c.loop_start()
        if not connected.wait(10):
            raise RuntimeError("paho client did not connect")
        clients.append(c)
    before, start = cpu(), time.monotonic()
    sent = 0
    while (now := time.monotonic()) < start + s["seconds"]:
        for _ in range(int((now - start) * s["rate"]) - sent):
            clients[sent % len(clients)].publish(topic, PAYLOAD, qos=1)
            sent += 1
        time.sleep(0.005)
    used = cpu() - before
    for c in clients:
        c.loop_stop()
        c.disconnect()
    return used


def with_fleet(host: str, port: int, topic: str, s: dict) -> float:
    async def main() -> float:
        links = [
            await fleet.Connection.open(host, port, client_id=f"didgw-loop-{os.getpid()}-{i}")
            for i in range(s["devices"])
        ]
        before, start = cpu(), time.monotonic()
        sent = 0
        while (now := time.monotonic()) < start + s["seconds"]:
            for _ in range(int((now - start) * s["rate"]) - sent):
                links[sent % len(links)].publish(topic, PAYLOAD)
                sent += 1
            await asyncio.sleep(0.005)
        used = cpu() - before
        for link in links:
            await link.close()
        return used

    return asyncio.run(main())


def child(kind: str, host: str, port: int, topic: str, s: dict, out) -> None:  # noqa: PLR0917
    out.put((with_paho if kind == "paho" else with_fleet)(host, port, topic, s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=150)
    parser.add_argument("--rate", type=float, default=150.0, help="messages per second in all")
    parser.add_argument("--seconds", type=float, default=20.0)
    s = vars(parser.parse_args())
    load = os.getloadavg()
    result: dict = {"bench": "loadgen", **s, "load_before": [round(x, 2) for x in load]}
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(dir=os.environ.get("DIDGW_BENCH_DIR")) as tmp:
        broker = PrivateBroker(Path(tmp) / "mosquitto")
        broker.setup()
        try:
            for kind in ("paho", "fleet"):  # run the bench twice to alternate them
                out = ctx.Queue()
                p = ctx.Process(
                    target=child,
                    args=(kind, broker.host, broker.port, f"{broker.prefix}/auth/req", s, out),
                )
                p.start()
                used = None
                while used is None and (p.is_alive() or not out.empty()):
                    with contextlib.suppress(queue.Empty):
                        used = out.get(timeout=1)
                p.join()
                if used is None:
                    raise SystemExit(f"the {kind} load process failed (exit {p.exitcode})")
                percent = 100 * used / s["seconds"]
                result.setdefault(f"{kind}_cpu_pct", []).append(round(percent, 1))
                print(f"{kind}: {percent:.1f} % of a core", flush=True)
        finally:
            broker.stop()
    for kind in ("paho", "fleet"):
        best = min(result[f"{kind}_cpu_pct"])
        result[f"{kind}_ms_cpu_per_device_s"] = round(10 * best / s["devices"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

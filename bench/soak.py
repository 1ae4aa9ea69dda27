"""Soak: many devices at a steady rate for minutes; memory growth, ack latency, loss.

    python bench/soak.py [--minutes N] [--quick] [--devices N] [--rate R]

The set-up of ``bench/ingest.py`` (a real mosquitto with dynamic security, the
real ``didgw run`` with its defaults, devices speaking the wire protocol of
docs/protocol/mqtt.md with the device simulator's message builders): ``--devices`` devices
(1,000) authenticate through the protocol, then send signed readings
(signed as they go) at ``--rate`` readings per second in all (1,000), each
device in turn, for ``--minutes`` (10), from one load process: every device on one asyncio
event loop (firmware-sim/fleet.py), so that the gateway gets the machine's cycles. The CPU of
the gateway, mosquitto and the load process is reported (``cpu``, percent of one core).

* ``rss_growth_pct``: the gateway's memory (the PSS of all its processes,
  sampled every 5 s) at the end against its value after the first minute (or
  after the first fifth of a shorter run), in percent;
* ``p99_ack_ms``: publish → ack latency, 99th percentile, over the whole run;
* ``lost``: readings sent and never acknowledged, plus readings acknowledged
  as accepted that are not on the record (checked in the database at the end).

``--quick`` runs 300 devices at 300 readings/s for 30 s. The last line is one
JSON object with the figures.
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
import importlib.util
import json
import multiprocessing as mp
import tempfile
import time
from collections import Counter
from pathlib import Path

# Its neighbour bench/storm.py, loaded from its file (this folder is off the path); it loads
# bench/ingest.py and sets the paths it needs itself.
_spec = importlib.util.spec_from_file_location("storm", os.path.join(HERE, "storm.py"))
assert _spec is not None and _spec.loader is not None
storm = importlib.util.module_from_spec(_spec)
sys.modules["storm"] = storm
_spec.loader.exec_module(storm)

ingest, fleet, dev = storm.ingest, storm.fleet, storm.ingest.dev


def soak_main(conn: dict, keys: list[bytes], control, results) -> None:
    """Process: every device on one event loop (firmware-sim/fleet.py), then the schedule."""
    storm.load_process(_soak, conn, keys, control, results)


async def _soak(conn: dict, keys: list[bytes], control, results) -> dict:
    loop = asyncio.get_running_loop()
    devices = storm.devices_of(conn, keys)
    up = await asyncio.gather(*(d.bring_up(until=time.monotonic() + 600) for d in devices))
    if not all(up):
        failed = Counter(f for d in devices for f in d.failures)
        raise RuntimeError(f"{up.count(False)} devices could not authenticate: {failed}")
    results.put(("ready", None))
    _, start, end, rate = await loop.run_in_executor(None, control.get)
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    sent = 0
    while (now := time.monotonic()) < end:  # reading k goes to device k mod n at start + k/rate
        for _ in range(int((now - start) * rate) - sent):
            devices[sent % len(devices)].send_reading(ingest.VALUES)
            sent += 1
        await asyncio.sleep(0.005)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(d.sent_at for d in devices):
        await asyncio.sleep(0.1)
    out = {
        "latencies": [t for d in devices for t in d.latencies],
        "sent": sent,
        "accepted": {d.did: d.statuses["accepted"] for d in devices},
        "unacked": sum(len(d.sent_at) for d in devices),
        "devices_unacked": sum(1 for d in devices if d.sent_at),
        "disconnected": Counter(d.link.why for d in devices if d.link and not d.connected),
        "refused": Counter(
            {k: v for d in devices for k, v in d.statuses.items() if k != "accepted"}
        ),
    }
    await asyncio.gather(*(d.close() for d in devices), return_exceptions=True)
    return out


def recorded(state: Path) -> dict[str, int]:
    """Readings on the record, per device."""
    from gateway.db import DB_NAME, open_read_only

    conn = open_read_only(state / DB_NAME)
    try:
        rows = conn.execute(
            "SELECT a.did, count(*) FROM chain_entries e JOIN chain_actors a ON a.id = e.actor "
            "WHERE e.kind = 'reading' GROUP BY a.did"
        ).fetchall()
    finally:
        conn.close()
    return {str(did): int(n) for did, n in rows}


def run(s: dict, tmp: Path) -> dict:  # noqa: PLR0915 - one timeline, top to bottom
    load_before = os.getloadavg()
    missing = ingest.brokers.missing_tools()
    if missing:
        raise SystemExit(f"{missing}: run scripts/setup.sh")
    broker = ingest.brokers.PrivateBroker(tmp / "mosquitto")
    gateway = None
    try:
        broker.setup()
        s = {**s, "registered": s["devices"]}
        state, config, private_keys = ingest.prepare(broker, s, tmp)
        identities = [dev.Identity.from_key(k) for k in private_keys]
        keys = [k.private_bytes_raw() for k in private_keys]
        ingest.register_all(state, config, identities)
        gateway = ingest.Gateway(state, config, broker.gateway_password, tmp / "gateway.log")
        gateway.start()
        conn = {
            "host": broker.host,
            "port": broker.port,
            "accounts_port": broker.accounts_port,
            "prefix": broker.prefix,
            "gateway_did": ingest.gateway_did_of(state, config),
            "nodelay": True,
        }
        ctx = mp.get_context("spawn")
        control, out = ctx.Queue(), ctx.Queue()
        load = ctx.Process(target=soak_main, args=(conn, keys, control, out))
        load.start()
        try:
            storm.expect(out, "ready", 900, load.is_alive)
            print(f"{s['devices']:,} devices authenticated; sending {s['rate']:,}/s in all")
            start = time.monotonic() + 1.0
            seconds = s["minutes"] * 60
            end = start + seconds
            control.put(("go", start, end, s["rate"]))
            cpu = ingest.CpuMeter(
                {"gateway": [gateway.pid], "mosquitto": [broker.pid], "load": [load.pid]}
            )
            samples = []  # (seconds since start, PSS of the gateway's processes in MB)
            settle = min(60.0, seconds / 5)
            while time.monotonic() < end:
                time.sleep(5)
                at = time.monotonic() - start
                samples.append((at, ingest.memory(gateway.pid)[1]))
                print(f"  {at:5.0f} s: gateway PSS {samples[-1][1]:.1f} MB", flush=True)
            usage = cpu.stop()
            results = [storm.expect(out, "done", 120, load.is_alive)]
        finally:
            load.join(timeout=30)
            if load.is_alive():
                load.kill()
    finally:
        code = gateway.stop() if gateway is not None else None
        broker.stop()
    on_record = recorded(state)
    latencies = [t for r in results for t in r["latencies"]]
    accepted = {did: n for r in results for did, n in r["accepted"].items()}
    missing_from_record = sum(max(0, n - on_record.get(did, 0)) for did, n in accepted.items())
    unacked = sum(r["unacked"] for r in results)
    baseline = next((mb for at, mb in samples if at >= settle), samples[0][1])
    final = samples[-1][1]
    refused = sum((r["refused"] for r in results), Counter())
    return {
        "bench": "soak",
        "minutes": s["minutes"],
        "devices": s["devices"],
        "rate_per_s": s["rate"],
        "sent": sum(r["sent"] for r in results),
        "rss_growth_pct": round(100 * (final - baseline) / baseline, 1),
        "pss_mb_after_settling": round(baseline, 1),
        "pss_mb_end": round(final, 1),
        "p99_ack_ms": round(1000 * ingest.percentile(latencies, 99), 1),
        "p50_ack_ms": round(1000 * ingest.percentile(latencies, 50), 1),
        "lost": unacked + missing_from_record,
        "unacknowledged": unacked,
        "devices_with_unacknowledged": sum(r["devices_unacked"] for r in results),
        "devices_disconnected": dict(sum((r["disconnected"] for r in results), Counter())),
        "acknowledged_not_recorded": missing_from_record,
        "refused": dict(refused),
        "cpu": usage,
        "load_before": [round(x, 2) for x in load_before],
        "gateway_exit": code,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 devices, 300/s, 30 s")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to send")
    parser.add_argument("--devices", type=int, default=1000, help="devices sending")
    parser.add_argument("--rate", type=int, default=1000, help="readings per second in all")
    parser.add_argument(
        "--verify-workers",
        type=int,
        help="the gateway's [mqtt] verify_workers (default: the gateway's own default)",
    )
    args = parser.parse_args()
    s = vars(args)
    if args.quick:
        s.update(minutes=0.5, devices=300, rate=300)
    with tempfile.TemporaryDirectory() as tmp:
        summary = run(s, Path(tmp))
    print(
        f"memory {summary['pss_mb_after_settling']} → {summary['pss_mb_end']} MB "
        f"({summary['rss_growth_pct']:+} %); ack p50 {summary['p50_ack_ms']} ms, "
        f"p99 {summary['p99_ack_ms']} ms; lost {summary['lost']} of {summary['sent']:,}"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""Soak: many devices at a steady rate for minutes; memory growth, ack latency, loss.

    python bench/soak.py [--minutes N] [--quick] [--devices N] [--rate R]

The set-up of ``bench/ingest.py`` (a real mosquitto with dynamic security, the
real ``didgw run`` with its defaults, devices speaking the wire protocol of
docs/protocol/mqtt.md with the device simulator's message builders): ``--devices`` devices
(1,000) authenticate through the protocol, then send signed readings
(signed as they go) at ``--rate`` readings per second in all (1,000), each
device in turn, for ``--minutes`` (10), from ``--load-processes`` (150 devices each).

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
import importlib.util
import json
import math
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

# Its neighbour bench/ingest.py, loaded from its file (this folder is off the path; it sets
# the paths it needs itself).
_spec = importlib.util.spec_from_file_location("ingest", os.path.join(HERE, "ingest.py"))
assert _spec is not None and _spec.loader is not None
ingest = importlib.util.module_from_spec(_spec)
sys.modules["ingest"] = ingest  # its dataclasses and pickled objects look it up by name
_spec.loader.exec_module(ingest)

PER_PROCESS = 150  # devices per load process: each holds three descriptors in paho
dev = ingest.dev


class SoakDevice:
    """One authenticated device: signs and sends its next reading on demand, times the ack."""

    def __init__(self, conn: dict, identity, grant) -> None:
        self.identity, self.topic = identity, grant.readings
        self.seq = 0
        self.lock = threading.Lock()
        self.sent_at: dict[int, float] = {}
        self.latencies: list[float] = []
        self.accepted: set[int] = set()
        self.refused: Counter[str] = Counter()
        self.client = ingest.new_client("soak", grant.username, grant.password)
        self.client.on_message = self._ack
        self.lost_because = ""
        self.client.on_disconnect = self._gone
        ingest.open_client(self.client, conn, [grant.acks], timeout=60, account=True)

    def send(self) -> None:
        self.seq += 1
        token = dev.make_reading(
            self.identity,
            seq=self.seq,
            ts_ms=int(time.time() * 1000),
            reading_type="energy",
            values=ingest.VALUES,
        )
        with self.lock:
            self.sent_at[self.seq] = time.monotonic()
        self.client.publish(self.topic, token, qos=1)

    def _gone(self, _c, _u, _flags, reason, _p) -> None:
        self.lost_because = str(reason)

    def _ack(self, _c, _u, message) -> None:
        now = time.monotonic()
        ack = json.loads(message.payload)
        with self.lock:
            sent = self.sent_at.pop(ack.get("seq"), None)
            if ack.get("status") == "accepted":
                self.accepted.add(ack["seq"])
            else:
                self.refused[str(ack.get("reason"))] += 1
            if sent is not None:
                self.latencies.append(now - sent)


def soak_worker(ready, go, conn, plan):
    """Authenticate this worker's devices, then send on the shared schedule until the end."""
    identities = [ingest.identity_of(k) for k in plan["keys"]]
    auth = ingest.Authenticator(conn, identities, connections=4)
    try:
        done = auth.run(time.monotonic(), timeout=300)
    finally:
        auth.close()
    failed = [a.get("error", "no grant") for a in done if "grant" not in a]
    if failed:
        raise RuntimeError(f"{len(failed)} devices could not authenticate: {failed[:3]}")
    devices = [SoakDevice(conn, a["identity"], a["grant"]) for a in done]
    try:
        ready(None)
        _, start, end, rate, first, step, total = go()
        k = 0
        while True:  # device g of all (g = first + i·step) sends its k-th at (k·total + g)/rate
            for i, device in enumerate(devices):
                moment = start + (k * total + first + i * step) / rate
                if moment > end:
                    break
                ingest.sleep_until(moment)
                device.send()
            else:
                k += 1
                continue
            break
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(d.sent_at for d in devices):
            time.sleep(0.1)
        return {
            "latencies": [t for d in devices for t in d.latencies],
            "sent": sum(d.seq for d in devices),
            "accepted": {d.identity.did: sorted(d.accepted) for d in devices},
            "unacked": sum(len(d.sent_at) for d in devices),
            "devices_unacked": sum(1 for d in devices if d.sent_at),
            "disconnected": Counter(d.lost_because for d in devices if not d.client.is_connected()),
            "refused": sum((d.refused for d in devices), Counter()),
        }
    finally:
        for d in devices:
            ingest.close_client(d.client)


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


def run(s: dict, tmp: Path) -> dict:
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
        step = s["load_processes"]
        halves = [keys[i::step] for i in range(step)]
        with ingest.Workers() as workers:
            for half in halves:
                workers.start(soak_worker, conn, {"keys": half})
            workers.gather("ready", timeout=600)
            print(f"{s['devices']:,} devices authenticated; sending {s['rate']:,}/s in all")
            start = time.monotonic() + 1.0
            seconds = s["minutes"] * 60
            end = start + seconds
            for wid, control in enumerate(workers.controls):
                control.put(("go", start, end, s["rate"], wid, len(halves), s["devices"]))
            samples = []  # (seconds since start, PSS of the gateway's processes in MB)
            settle = min(60.0, seconds / 5)
            while time.monotonic() < end:
                time.sleep(5)
                at = time.monotonic() - start
                samples.append((at, ingest.memory(gateway.pid)[1]))
                print(f"  {at:5.0f} s: gateway PSS {samples[-1][1]:.1f} MB", flush=True)
            results = workers.gather("done", timeout=120)
    finally:
        code = gateway.stop() if gateway is not None else None
        broker.stop()
    on_record = recorded(state)
    latencies = [t for r in results for t in r["latencies"]]
    accepted = {did: seqs for r in results for did, seqs in r["accepted"].items()}
    missing_from_record = sum(
        max(0, len(seqs) - on_record.get(did, 0)) for did, seqs in accepted.items()
    )
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
    parser.add_argument(
        "--load-processes",
        type=int,
        help="processes the devices are spread over (default: 150 devices each, at least 2)",
    )
    args = parser.parse_args()
    s = vars(args)
    if args.quick:
        s.update(minutes=0.5, devices=300, rate=300)
    if s["load_processes"] is None:  # paho's select() cannot watch descriptors past 1,023
        s["load_processes"] = max(2, math.ceil(s["devices"] / PER_PROCESS))
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

"""Anchoring's figures on a local anvil: anchor lag, receipt generation, receipt verification.

    python bench/anchor.py [--quick] [--rate 1000] [--cadence 10] [--seconds 60]

* ``anchor_lag_s``: for each anchor, the time from the append of the oldest entry it
  newly covers to the moment the gateway saw the anchor confirmed (1 confirmation,
  anvil mining a block every second); the worst over the run. Entries are appended
  at ``--rate`` per second (batches every 0.1 s, 560-byte signed readings) by this
  process while the real ``didgw run`` (MQTT off, ``[anchor]`` on) anchors every
  ``--cadence`` seconds. Target: at most cadence + 2 s.
* ``receipt_ms``: building one receipt from the database (``didgw receipt`` without
  the process start), median over random entries. Target: at most 5 ms.
* ``verify_receipt_ms``: checking one receipt, reading the transaction from the node
  over JSON-RPC included (``didgw verify-receipt`` without the process start), median.
  Target: at most 50 ms.

``--quick`` runs 30 s of load (under a minute in all). The last line is one JSON object.
"""

from __future__ import annotations

import os
import sys

# bench/http.py has the name of the standard library's http package: this folder comes off
# the import path before anything imports http.client (paho, aiohttp, requests, web3 do).
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

import argparse
import json
import random
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.anchor.queue import AnchorQueue
from gateway.anchor.receipt import receipt_for
from gateway.anchor.verify_receipt import check_receipt
from gateway.chain.store import ChainStore, NewEntry
from gateway.config import Config
from gateway.db import connect
from gateway.identity import keystore
from gateway.identity.signing import Signer, sign_jws
from gateway.service import init_gateway, open_gateway
from gateway.transports.evm import read_ledger_view

ROOT = Path(__file__).resolve().parents[1]
ANVIL = ROOT / "scripts" / "anvil" / "node_modules" / ".bin" / "anvil"
DIDGW = Path(sys.executable).with_name("didgw")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rpc(url: str, method: str, *params: object) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())["result"]


def start_anvil(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--block-time", "1",
         "--state", str(tmp / "anvil.json"), "--silent"],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            rpc(url, "eth_chainId")
            return proc, url
        except OSError:
            time.sleep(0.05)
    raise SystemExit("anvil did not start (run scripts/setup.sh)")


def readings(count: int) -> list[tuple[str, bytes]]:
    """Signed readings of a few devices, like the ones devices send (about 560 bytes)."""
    out = []
    for i in range(count):
        device = Signer.for_did_key(keystore.generate_key())
        body = {
            "did": device.did, "seq": 1, "ts": 1_700_000_000_000, "type": "energy",
            "values": {"import_kwh": {"value": 1234.567, "unit": "kWh"},
                       "power_w": {"value": 812 + i, "unit": "W"}},
        }  # fmt: skip
        out.append((device.did, sign_jws(json.dumps(body).encode(), device).encode()))
    return out


def bench_receipts(state: Path, url: str, anchored: int) -> tuple[float, float]:
    """Median ms to build a receipt, and to verify one against the node."""
    with open_gateway(Config(), state) as gw:
        chain, q, binding = gw.chain(), AnchorQueue(gw.db), gw.ledger_binding()
        seqs = [random.randrange(anchored) for _ in range(300)]
        receipt_for(chain, q, gateway=gw.did, binding=binding, seq=seqs[0])  # warm
        times = []
        for seq in seqs:
            t = time.perf_counter()
            receipt_for(chain, q, gateway=gw.did, binding=binding, seq=seq)
            times.append((time.perf_counter() - t) * 1000)
        receipt_ms = statistics.median(times)
        receipts = [
            receipt_for(chain, q, gateway=gw.did, binding=binding, seq=s) for s in seqs[:60]
        ]
    print(f"receipt generation:         {receipt_ms:.3f} ms (median of {len(times)})")
    times = []
    for receipt in receipts:
        t = time.perf_counter()
        tx_hash = bytes.fromhex(receipt["ledger"]["tx_hash"][2:])
        report = check_receipt(receipt, read_ledger_view(url, tx_hash))
        times.append((time.perf_counter() - t) * 1000)
        assert report.ok, report.checks
    verify_ms = statistics.median(times[10:])  # the first ones warm the caches up
    print(f"receipt verification:       {verify_ms:.2f} ms (median of {len(times) - 10})")
    return receipt_ms, verify_ms


def append_load(store: ChainStore, rate: int, seconds: float) -> None:
    """Append ``rate`` signed readings per second, in batches every 0.1 s, for ``seconds``."""
    samples = readings(20)
    batch = max(1, rate // 10)
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < seconds:
        items = [NewEntry("reading", *samples[(tick + i) % len(samples)]) for i in range(batch)]
        store.append_batch(items, now_ms=int(time.time() * 1000))
        tick += 1
        time.sleep(max(0.0, start + tick * 0.1 - time.monotonic()))


def main() -> None:  # noqa: PLR0915 - one run, told in order
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rate", type=int, default=1000, help="appends per second")
    parser.add_argument("--cadence", type=float, default=10.0, help="[anchor] every_seconds")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of load")
    args = parser.parse_args()
    seconds = 30.0 if args.quick else args.seconds

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        anvil, url = start_anvil(tmp)
        gateway = None
        try:
            state = tmp / "state"
            init = init_gateway(Config(), state, {})
            rpc(url, "anvil_setBalance", init.ledger_address, hex(10**20))
            config = tmp / "gateway.toml"
            config.write_text(
                f'[mqtt]\nenabled = false\n[anchor]\nenabled = true\nrpc_url = "{url}"\n'
                f"every_seconds = {args.cadence}\nevery_entries = 100000000\n"
                "confirmations = 1\npoll_seconds = 0.5\n"
            )
            env = {**os.environ, "DIDGW_STATE_DIR": str(state), "DIDGW_CONFIG": str(config)}
            gateway = subprocess.Popen(
                [str(DIDGW), "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            samples = readings(20)
            store = ChainStore(connect(state / "didgw.db"))
            batch = max(1, args.rate // 10)
            print(f"appending {args.rate}/s for {seconds:.0f} s, anchoring every {args.cadence} s")
            start = time.monotonic()
            tick = 0
            while time.monotonic() - start < seconds:
                items = [
                    NewEntry("reading", *samples[(tick + i) % len(samples)]) for i in range(batch)
                ]
                store.append_batch(items, now_ms=int(time.time() * 1000))
                tick += 1
                time.sleep(max(0.0, start + tick * 0.1 - time.monotonic()))
            size = store.size
            print(f"{size:,} entries appended; waiting for the last anchor")
            queue = AnchorQueue(connect(state / "didgw.db"))
            deadline = time.monotonic() + args.cadence + 30
            while time.monotonic() < deadline:
                last = queue.last_confirmed()
                if last is not None and last.size >= size:
                    break
                time.sleep(0.2)
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=30)
            gateway = None

            confirmed = [a for a in reversed(list(queue.recent(10_000))) if a.state == "confirmed"]
            lags, previous = [], 0
            for anchor in confirmed:
                oldest = store.get(previous).ts
                lags.append((anchor.confirmed_ms - oldest) / 1000)
                previous = anchor.size
            lag = max(lags) if lags else float("nan")
            print(
                f"anchors confirmed:          {len(confirmed)} (last covers {previous:,} entries)"
            )
            median = statistics.median(lags)
            print(f"anchor lag:                 worst {lag:.2f} s, median {median:.2f} s")

            receipt_ms, verify_ms = bench_receipts(state, url, previous)
        finally:
            if gateway is not None:
                gateway.kill()
            anvil.send_signal(signal.SIGTERM)
            anvil.wait(timeout=10)

    print(
        json.dumps(
            {
                "bench": "anchor",
                "rate_per_s": args.rate,
                "cadence_s": args.cadence,
                "load_s": seconds,
                "anchors": len(confirmed),
                "anchor_lag_s": round(lag, 2),
                "anchor_lag_median_s": round(median, 2),
                "receipt_ms": round(receipt_ms, 3),
                "verify_receipt_ms": round(verify_ms, 2),
            }
        )
    )


if __name__ == "__main__":
    main()

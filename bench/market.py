"""The market and the meter: clearing 10,000 orders in one interval, P1 telegrams parsed per second.

Last line: one JSON object with ``clear_10k_orders_ms`` (median, target <= 100) and
``p1_telegrams_per_s`` (target >= 5,000). ``--quick`` runs in a few seconds.
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
import statistics
import subprocess
import time
from pathlib import Path

from gateway.energy.p1 import P1Splitter
from gateway.market.auction import BUY, SELL, Order, OrderId, clear

ROOT = Path(__file__).parents[1]


def book(n: int, seed: int) -> list[Order]:
    rnd = random.Random(seed)
    houses = [f"did:key:z6MkHouse{i:05d}" for i in range(n // 4)]
    return [
        Order(
            OrderId(rnd.choice(houses), i),
            rnd.choice([SELL, BUY]),
            rnd.randint(100, 5000),
            rnd.randint(40, 400),
        )
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs = 5 if args.quick else 30
    times = []
    for r in range(runs):
        orders = book(10_000, r)
        start = time.perf_counter()
        result = clear(orders)
        times.append((time.perf_counter() - start) * 1000)
    print(
        f"clear 10,000 orders: median {statistics.median(times):.1f} ms, "
        f"{len(result.trades)} trades",
        file=sys.stderr,
    )
    count = 2_000 if args.quick else 20_000
    data = subprocess.run(
        [
            sys.executable,
            str(ROOT / "firmware-sim" / "p1meter.py"),
            "--count",
            str(count),
            "--rate",
            "0",
            "--speed",
            "10",
        ],
        capture_output=True,
        check=True,
    ).stdout
    rates = []
    for _ in range(3):
        splitter = P1Splitter()
        start = time.perf_counter()
        for i in range(0, len(data), 4096):  # as a serial port delivers it: in chunks
            splitter.feed(data[i : i + 4096])
        elapsed = time.perf_counter() - start
        assert splitter.counts["telegrams"] == count, splitter.counts
        rates.append(count / elapsed)
    print(
        f"P1: {statistics.median(rates):,.0f} telegrams/s ({len(data) // count} bytes each)",
        file=sys.stderr,
    )
    print(
        json.dumps(
            {
                "clear_10k_orders_ms": round(statistics.median(times), 1),
                "p1_telegrams_per_s": round(statistics.median(rates)),
                "p1_telegram_bytes": len(data) // count,
            }
        )
    )


if __name__ == "__main__":
    main()

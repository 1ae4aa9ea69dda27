"""The record's figures: durable append rate, verification rate, proof time, bytes per entry.

    python bench/chain.py [--quick] [--entries N]

* ``append_per_s``: durable appends through the recorder (group commit: many
  producers, one transaction and one fsync per batch), with asyncio producers
  as the transports will use it;
* ``append_batch_per_s``: the store alone, 1,000 entries per transaction;
* ``verify_per_s``: ``didgw chain verify`` speed (everything recomputed);
* ``proof_ms_at_1m``: one inclusion proof at the bench's record size (1,000,000
  entries; ``--quick`` builds 200,000 and says so);
* ``bytes_per_entry``: database file size minus payload bytes, per entry.

Payloads are 200-byte stand-ins for a signed reading. The last line is one
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
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.chain.check import check_database
from gateway.chain.store import ChainStore, NewEntry
from gateway.chain.verify import verify_inclusion
from gateway.db import connect, migrate
from gateway.run.recorder import Recorder

DEVICES = [f"did:key:z6Mk{'abcdefghijk'[i % 11]}{i:040d}" for i in range(50)]
PAYLOAD = b"x" * 200


def fresh(path: Path) -> None:
    db = connect(path)
    migrate(db, now=0)
    db.close()


def bench_recorder(path: Path, total: int, producers: int) -> tuple[float, float]:
    recorder = Recorder(lambda: ChainStore(connect(path)), clock_ms=lambda: int(time.time() * 1000))

    async def producer(n: int, device: str) -> None:
        for _ in range(n):
            await recorder.append_async("reading", device, PAYLOAD)

    async def run() -> None:
        each = total // producers
        await asyncio.gather(*(producer(each, DEVICES[i % len(DEVICES)]) for i in range(producers)))

    start = time.perf_counter()
    asyncio.run(run())
    elapsed = time.perf_counter() - start
    batches = recorder.batches
    recorder.close()
    return (total // producers * producers) / elapsed, total / max(batches, 1)


def bench_batches(path: Path, total: int, batch: int = 1000) -> float:
    store = ChainStore(connect(path))
    items = [NewEntry("reading", DEVICES[i % len(DEVICES)], PAYLOAD) for i in range(batch)]
    start = time.perf_counter()
    for i in range(total // batch):
        store.append_batch(items, now_ms=1_700_000_000_000 + i)
    elapsed = time.perf_counter() - start
    store.close()
    return total // batch * batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller record, under a minute")
    parser.add_argument("--entries", type=int, help="record size for proof, verify and storage")
    args = parser.parse_args()
    size = args.entries or (200_000 if args.quick else 1_000_000)
    append_n = 20_000 if args.quick else 100_000

    with tempfile.TemporaryDirectory(dir=os.environ.get("DIDGW_BENCH_DIR")) as tmp:
        rec_path = Path(tmp) / "recorder.db"
        fresh(rec_path)
        append_rate, mean_batch = bench_recorder(rec_path, append_n, producers=256)
        print(
            f"recorder, 256 asyncio producers: {append_rate:,.0f} durable appends/s "
            f"(mean batch {mean_batch:.0f})"
        )

        path = Path(tmp) / "record.db"
        fresh(path)
        batch_rate = bench_batches(path, size)
        print(f"store, 1,000 per transaction:    {batch_rate:,.0f} appends/s ({size:,} entries)")

        conn = sqlite3.connect(path)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        start = time.perf_counter()
        report = check_database(conn)
        verify_rate = report.size / (time.perf_counter() - start)
        conn.close()
        assert report.ok, report.problem
        print(f"verify (everything recomputed):  {verify_rate:,.0f} entries/s")

        store = ChainStore(connect(path))
        times = []
        root = store.root()
        for seq in range(0, size, max(1, size // 50)):
            start = time.perf_counter()
            proof = store.inclusion_proof(seq)
            leaf = store.leaf(seq)
            times.append((time.perf_counter() - start) * 1000)
            verify_inclusion(leaf, seq, size, proof, root)
        store.close()
        proof_ms = statistics.median(times)
        print(f"inclusion proof at {size:,}:      {proof_ms:.3f} ms (median of {len(times)})")

        file_bytes = sum(p.stat().st_size for p in Path(tmp).glob("record.db*"))
        per_entry = (file_bytes - size * len(PAYLOAD)) / size
        print(f"storage beyond the payload:      {per_entry:.0f} bytes/entry")

    print(
        json.dumps(
            {
                "bench": "chain",
                "entries": size,
                "append_per_s": round(append_rate),
                "append_mean_batch": round(mean_batch, 1),
                "append_batch_per_s": round(batch_rate),
                "verify_per_s": round(verify_rate),
                "proof_ms_at_1m": round(proof_ms, 3),
                "proof_at_entries": size,
                "bytes_per_entry": round(per_entry, 1),
            }
        )
    )


if __name__ == "__main__":
    main()

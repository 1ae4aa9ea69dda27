"""Bulk registration: 10,000 devices from one CSV file with ``didgw device import``.

    python bench/device_import.py [--quick] [--devices N]

A fresh gateway (``didgw init``), N new did:key devices (10,000; 1,000 with ``--quick``)
written to a CSV file with a name, a kind and two metadata pairs each, then:

* ``check_s``: ``didgw device import FILE --dry-run`` (the whole command, process start
  included): parse and check every row, every DID resolved, nothing written;
* ``import_s``: ``didgw device import FILE``: the same checks, then every device
  registered, audited and appended to the record (SQLite WAL, ``synchronous=FULL``) in
  one transaction;
* ``devices_per_s``: ``devices / import_s``;
* ``one_by_one_s_per_device``: for comparison, ``didgw device register`` for 20 other
  devices, one command each (as a shell loop does), seconds per device.

Temporary files go to ``$DIDGW_BENCH_DIR`` if set. The last line is one JSON object.
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
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from gateway.identity.keystore import generate_key
from gateway.identity.signing import Signer

DIDGW = str(Path(sys.executable).with_name("didgw"))
KINDS = ("sensor", "meter", "inverter", "battery", "charger")


def run(env: dict[str, str], *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([DIDGW, *args], env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"didgw {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return elapsed, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 devices")
    parser.add_argument("--devices", type=int, help="how many devices (default 10,000)")
    args = parser.parse_args()
    count = args.devices or (1000 if args.quick else 10_000)
    with tempfile.TemporaryDirectory(dir=os.environ.get("DIDGW_BENCH_DIR")) as tmp:
        work = Path(tmp)
        env = {**os.environ, "DIDGW_STATE_DIR": str(work / "state"), "DIDGW_CONFIG": ""}
        env.pop("DIDGW_CONFIG")
        run(env, "init")
        rows = ["did,name,kind,metadata"]
        for i in range(count):
            did = Signer.for_did_key(generate_key()).did
            rows.append(f"{did},bench device {i},{KINDS[i % len(KINDS)]},site=b{i % 7};row={i}")
        csv = work / "devices.csv"
        csv.write_text("\r\n".join(rows) + "\r\n")
        print(f"{count} devices, {csv.stat().st_size} bytes", file=sys.stderr)
        check_s, _ = run(env, "device", "import", str(csv), "--dry-run")
        print(f"dry run: {check_s:.2f} s", file=sys.stderr)
        import_s, out = run(env, "device", "import", str(csv))
        print(f"import: {import_s:.2f} s ({out.strip()})", file=sys.stderr)
        _, listed = run(env, "device", "list", "--json")
        registered = len(json.loads(listed))
        assert registered == count, (registered, count)
        singles = 20
        start = time.perf_counter()
        for i in range(singles):
            did = Signer.for_did_key(generate_key()).did
            run(env, "device", "register", did, "--name", f"single {i}", "--kind", "sensor")
        one_by_one = (time.perf_counter() - start) / singles
    result = {
        "devices": count,
        "check_s": round(check_s, 3),
        "import_s": round(import_s, 3),
        "devices_per_s": round(count / import_s),
        "one_by_one_s_per_device": round(one_by_one, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

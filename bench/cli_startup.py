"""How long the ``didgw`` command takes to start: ``--help`` and a did:key resolution.

Target: ``didgw --help`` under 0.3 s on a Raspberry Pi-class machine (heavy
modules are imported lazily). Runs the installed command as a user would.

    python bench/cli_startup.py [--quick]

The last line is one JSON object with the figures.
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
import statistics
import subprocess
import time
from pathlib import Path

DIDGW = str(Path(sys.executable).with_name("didgw"))
DID = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"


def timed(args: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        out.append(time.perf_counter() - start)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "median_s": round(statistics.median(samples), 4),
        "p90_s": round(samples[int(0.9 * (len(samples) - 1))], 4),
        "min_s": round(samples[0], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (under a minute)")
    runs = 10 if parser.parse_args().quick else 40
    timed([DIDGW, "--help"], 2)  # warm the page cache
    baseline = timed([sys.executable, "-c", "pass"], runs)
    help_times = timed([DIDGW, "--help"], runs)
    resolve_times = timed([DIDGW, "did", "resolve", DID], runs)
    result = {
        "bench": "cli_startup",
        "runs": runs,
        "python_startup": summary(baseline),
        "didgw_help": summary(help_times),
        "didgw_did_resolve": summary(resolve_times),
        "target_help_s": 0.3,
    }
    print(f"python -c pass      median {result['python_startup']['median_s'] * 1000:.0f} ms")
    print(f"didgw --help        median {result['didgw_help']['median_s'] * 1000:.0f} ms")
    print(f"didgw did resolve   median {result['didgw_did_resolve']['median_s'] * 1000:.0f} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""How long the ``didgw`` command takes to start, and what ``didgw run`` costs to be up.

* ``didgw --help`` and a did:key resolution, run as a user would. Target: ``--help``
  under 0.3 s on a Raspberry Pi-class machine (heavy modules are imported lazily).
* ``run_import_ms``: the imports of a real ``didgw run`` with everything on (MQTT through
  a private mosquitto, CoAP, the HTTP front door, metrics, meters, the market, anchoring to
  a local anvil; ``verify_workers = 0``, so the one process holds every part), summed over
  its top-level imports as ``python -X importtime`` reports them. Target: at most 400 ms.
* ``run_rss_mb``: that process's resident memory (VmRSS, MiB) two seconds after it told
  systemd's notify socket ``READY=1`` (a socket of this bench's). Target: at most 60 (MiB,
  as measured; 60 MB would be 57.2 MiB, and the output says whether that is met too).
* ``workers_*``: the same gateway with the default reading workers (``verify_workers = -1``,
  one process per core, started with ``spawn``): how many, each one's VmRSS, and the
  proportional set size (PSS, shared pages divided among the processes sharing them) of the
  main process and the workers together, what the gateway really costs the machine.
* ``http_off_import_ms``, ``http_off_rss_mb``: the same two figures with the people's front
  door off (``[http] enabled = false``): what the HTTP edge costs ``didgw run``.
* ``targets_met``: each target, met or not.

    python bench/cli_startup.py [--quick] [--details DIR]

``--details DIR`` keeps what the figures come from: the last ``-X importtime`` output of
each configuration (``importtime-gateway.txt`` with everything on, ``-gateway-no-http``
without the front door, ``-gateway-workers``) and the gateway's memory map when its RSS was
read (``smaps-<the same>.txt``, from ``/proc/<pid>/smaps``), to see which import or which
mapping a change moves.

Needs ``scripts/setup.sh --dev`` (mosquitto, anvil). The last line is one JSON object.

The bench first compiles ``gateway/``'s bytecode (``compileall``), as the Debian package's
postinst does: with ``PYTHONDONTWRITEBYTECODE`` set in the environment nothing else would
write it, and every start would compile the gateway's modules from source again (in this
measure, some hundreds of milliseconds that no installed gateway pays).
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
import re
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ANVIL = ROOT / "scripts" / "anvil" / "node_modules" / ".bin" / "anvil"

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


def _rpc(url: str, method: str, *params: object) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())["result"]


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _top_level_import_ms(stderr: str) -> float:
    """The sum of the cumulative times of top-level imports (``-X importtime`` lines)."""
    total = 0
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if m and not m.group(2).startswith(" "):
            total += int(m.group(1))
    return total / 1000


def _kib(path: str, field: str) -> int:
    text = Path(path).read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))  # type: ignore[union-attr]


def _children(pid: int) -> list[int]:
    """The processes started by ``pid`` (from any of its threads)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _workers(pid: int) -> list[int]:
    """The reading workers among ``pid``'s children (multiprocessing's spawned processes)."""
    workers = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            workers.append(child)
    return workers


def _smaps(pid: int) -> str:
    return Path(f"/proc/{pid}/smaps").read_text()


#: --details: where the last run's import times and memory map are kept (None: nowhere).
DETAILS: Path | None = None


def run_once(
    tmp: Path, url: str, config: Path, state: Path, importtime: bool, *, workers: int = 0
) -> dict[str, float]:
    """Start ``didgw run``, wait for READY=1, measure, stop it with SIGTERM."""
    notify_path = tmp / f"notify-{time.monotonic_ns()}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(1.0)
    env = {**os.environ, "DIDGW_STATE_DIR": str(state), "DIDGW_CONFIG": str(config),
           "NOTIFY_SOCKET": str(notify_path)}  # fmt: skip
    flags = ["-X", "importtime"] if importtime else []
    err = (tmp / "run.err").open("w+")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *flags, "-m", "gateway", "run"], env=env,
        stdout=subprocess.DEVNULL, stderr=err,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        ready = None
        while ready is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                if b"READY=1" in notify.recv(4096):
                    ready = time.perf_counter() - start
            except TimeoutError:
                pass
        if ready is None:
            err.seek(0)
            raise SystemExit(f"didgw run did not get ready:\n{err.read()[-3000:]}")
        time.sleep(2.0)
        rss_kb = _kib(f"/proc/{proc.pid}/status", "VmRSS")
        if DETAILS is not None:
            (DETAILS / f"smaps-{config.stem}.txt").write_text(_smaps(proc.pid))
        extra: dict[str, float] = {}
        if workers:
            deadline = time.monotonic() + 30
            while len(pids := _workers(proc.pid)) < workers and time.monotonic() < deadline:
                time.sleep(0.2)
            if len(pids) < workers:
                raise SystemExit(f"expected {workers} reading workers, found {len(pids)}")
            time.sleep(2.0)  # each worker up and subscribed
            rss = [_kib(f"/proc/{p}/status", "VmRSS") / 1024 for p in pids]
            pss = sum(_kib(f"/proc/{p}/smaps_rollup", "Pss") for p in [proc.pid, *pids])
            extra = {"workers": len(pids), "worker_rss_mb": statistics.median(rss),
                     "total_pss_mb": pss / 1024}  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(30)
        notify.close()
    err.seek(0)
    out = {"ready_s": ready, "rss_mb": rss_kb / 1024, **extra}
    if importtime:
        text = err.read()
        out["import_ms"] = _top_level_import_ms(text)
        if DETAILS is not None:
            (DETAILS / f"importtime-{config.stem}.txt").write_text(text)
    err.close()
    return out


def bench_run(runs: int) -> dict[str, float]:
    """``didgw run`` with everything on: import time and resident memory, medians."""
    from gateway.config import Config
    from gateway.files import write_private
    from gateway.ops.broker import PrivateBroker
    from gateway.service import init_gateway

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        broker = PrivateBroker(tmp / "mosquitto")
        anvil_port = _free_port()
        anvil = subprocess.Popen(
            [str(ANVIL), "--host", "127.0.0.1", "--port", str(anvil_port), "--silent"]
        )
        try:
            broker.setup()
            url = f"http://127.0.0.1:{anvil_port}"
            for _ in range(200):
                try:
                    _rpc(url, "eth_chainId")
                    break
                except OSError:
                    time.sleep(0.05)
            state = tmp / "state"
            init = init_gateway(Config(), state, {})
            _rpc(url, "anvil_setBalance", init.ledger_address, hex(10**18))
            password = tmp / "mqtt-password"
            write_private(password, broker.gateway_password.encode() + b"\n")
            config = tmp / "gateway.toml"
            config.write_text(
                f"[mqtt]\n{broker.gateway_settings()}verify_workers = 0\n"
                f'password_file = "{password}"\n'
                f"[coap]\nenabled = true\nport = {_free_port(socket.SOCK_DGRAM)}\n"
                f"[metrics]\nport = {_free_port()}\n"
                f"[http]\nport = {_free_port()}\n"
                "[meter]\nenabled = true\n[market]\nenabled = true\n"
                f'[anchor]\nenabled = true\nrpc_url = "{url}"\nevery_seconds = 5.0\n'
            )
            run_once(tmp, url, config, state, importtime=False)  # warm the page cache
            imports = [run_once(tmp, url, config, state, True)["import_ms"] for _ in range(runs)]
            plain = [run_once(tmp, url, config, state, False) for _ in range(runs)]
            cores = os.cpu_count() or 1
            with_workers = config.with_name("gateway-workers.toml")
            with_workers.write_text(config.read_text().replace("verify_workers = 0\n", ""))
            pooled = [
                run_once(tmp, url, with_workers, state, False, workers=cores if cores > 1 else 0)
                for _ in range(max(1, runs // 2))
            ]
            # The same without the people's front door: what the edge costs.
            no_http = config.with_name("gateway-no-http.toml")
            no_http.write_text(config.read_text().replace("[http]\n", "[http]\nenabled = false\n"))
            bare_imports = [
                run_once(tmp, url, no_http, state, True)["import_ms"] for _ in range(runs)
            ]
            bare = [run_once(tmp, url, no_http, state, False) for _ in range(runs)]
        finally:
            broker.stop()
            anvil.terminate()
            anvil.wait(10)
    return {
        "run_import_ms": round(statistics.median(imports), 1),
        "run_rss_mb": round(statistics.median(p["rss_mb"] for p in plain), 1),
        "run_ready_s": round(statistics.median(p["ready_s"] for p in plain), 3),
        "workers": int(pooled[0].get("workers", 0)),
        "workers_main_rss_mb": round(statistics.median(p["rss_mb"] for p in pooled), 1),
        "worker_rss_mb": round(statistics.median(p.get("worker_rss_mb", 0) for p in pooled), 1),
        "workers_total_pss_mb": round(
            statistics.median(p.get("total_pss_mb", 0) for p in pooled), 1
        ),
        "http_off_import_ms": round(statistics.median(bare_imports), 1),
        "http_off_rss_mb": round(statistics.median(p["rss_mb"] for p in bare), 1),
    }


def _said(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (under a minute)")
    parser.add_argument("--details", type=Path, help="keep importtime-*.txt and smaps-*.txt here")
    args = parser.parse_args()
    quick = args.quick
    global DETAILS  # noqa: PLW0603 - one setting for the whole run
    DETAILS = args.details
    if DETAILS is not None:
        DETAILS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "gateway")], check=True)
    runs = 10 if quick else 40
    timed([DIDGW, "--help"], 2)  # warm the page cache
    baseline = timed([sys.executable, "-c", "pass"], runs)
    help_times = timed([DIDGW, "--help"], runs)
    resolve_times = timed([DIDGW, "did", "resolve", DID], runs)
    run = bench_run(3 if quick else 7)
    result = {
        "bench": "cli_startup",
        "runs": runs,
        "python_startup": summary(baseline),
        "didgw_help": summary(help_times),
        "didgw_did_resolve": summary(resolve_times),
        "target_help_s": 0.3,
        **run,
        "target_run_import_ms": 400,
        "target_run_rss_mb": 60,
        "load_average": round(os.getloadavg()[0], 2),
    }
    result["targets_met"] = {
        "help_s": result["didgw_help"]["median_s"] <= result["target_help_s"],
        "run_import_ms": run["run_import_ms"] <= result["target_run_import_ms"],
        "run_rss_mib": run["run_rss_mb"] <= result["target_run_rss_mb"],
        "run_rss_mb_decimal": run["run_rss_mb"] * 1.048576 <= result["target_run_rss_mb"],
    }
    met = result["targets_met"]
    print(f"python -c pass      median {result['python_startup']['median_s'] * 1000:.0f} ms")
    print(f"didgw --help        median {result['didgw_help']['median_s'] * 1000:.0f} ms")
    print(f"didgw did resolve   median {result['didgw_did_resolve']['median_s'] * 1000:.0f} ms")
    print(f"didgw --help        target ≤ 300 ms: {_said(met['help_s'])}")
    print(
        f"didgw run imports   median {run['run_import_ms']:.0f} ms (everything on), "
        f"target ≤ 400 ms: {_said(met['run_import_ms'])}"
    )
    print(
        f"didgw run RSS       median {run['run_rss_mb']:.1f} MiB, ready in {run['run_ready_s']} s; "
        f"target ≤ 60 MiB: {_said(met['run_rss_mib'])}, "
        f"≤ 60 MB (57.2 MiB): {_said(met['run_rss_mb_decimal'])}"
    )
    print(
        f"without the front door ([http] off): imports {run['http_off_import_ms']:.0f} ms, "
        f"RSS {run['http_off_rss_mb']:.1f} MiB"
    )
    print(
        f"with {run['workers']} reading workers: main {run['workers_main_rss_mb']:.1f} MiB, "
        f"each worker {run['worker_rss_mb']:.1f} MiB RSS; all together "
        f"{run['workers_total_pss_mb']:.1f} MiB PSS"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Reconnect storm: every device back at once after a power cut, and whether the broker stalls.

    python bench/storm.py [--quick] [--devices N] [--timeout S] [--churn-seconds S]

A real mosquitto (gateway/ops/broker.py ``PrivateBroker``, the shipped policy), ``didgw run``
with its defaults, the devices registered in bulk (``didgw device import``), and the
load generator of firmware-sim/fleet.py (all devices in one event loop, in one process).

1. **Stream**: 20 devices authenticate first and then send 1,000 signed readings/s in all
   (QoS 1) for the whole run, from a process of their own; a subscriber with the gateway's
   broker account (in that process) timestamps every reading the broker delivers to it. The
   longest gap between consecutive deliveries (``stream_gap_ms_*``) holds any stall of the
   broker, and also whatever the stream's own process lost while it signs and sends (its
   longest late tick: ``stream_late_ms_max``).
   **Probe**: what the broker alone holds up. A process of its own (bench/broker_tokens.py's
   ``Stream``: raw sockets, a thread to send and one to receive, nothing else to do) sends
   1,000 small messages/s through the broker from one gateway-account connection to another,
   each stamped with its send time; ``broker_stall_ms_max`` is the longest any of them took
   from send to delivery during the storm (``idle_stall_ms_max`` before it,
   ``churn_stall_ms_max`` during the churn). A broker that blocks for X ms holds the message
   sent as the block began for X ms. The probe measures the broker, not itself: its sockets
   have TCP_NODELAY (else Nagle's algorithm holds each message behind the broker's delayed
   ACK of the one before, up to 40 ms), it keeps its times in flat arrays with the garbage
   collector off (a collection over a list of tuples held it for 5 ms), and it runs just
   below the broker's priority (below).
   **The broker's priority** (``--broker-priority``): by default mosquitto runs as the shipped
   drop-in (systemd/mosquitto.service.d/didgw.conf) puts it, every thread under SCHED_RR 10,
   and the probe under SCHED_RR 9 (before every ordinary process, never before the broker:
   at the same priority its two threads could hold both cores while the broker waited);
   ``normal`` leaves both at the normal priority, where the broker
   waits for a core behind the gateway's checks and the devices' load (what it measured
   before the drop-in did this). Setting SCHED_RR takes root; without it the run says so in
   ``broker_priority`` and goes on at the normal priority.
2. **Storm**: ``--devices`` registered devices (10,000; 2,000 with ``--quick``) all start their
   handshake within one second (each at a random moment of it). Each authenticates (DID
   challenge-response on the authentication listener), connects with its session, and sends
   one reading; it is done when the reading is acknowledged. A device never gives up: after a
   refusal or a time-out it backs off with jitter and tries again. ``reconnect_all_s``: from
   the start of the storm until the last device is done (null if some were not done within
   ``--timeout``; ``done`` says how many were); ``auth_per_s``: authentications completed per
   second over that time (or over the time-out).
3. **Churn** (``--churn-seconds``, 30; 15 with ``--quick``): once a renewal goes through again
   (the storm's backlog drained: ``churn_settle_s``), with the stream still running, connected
   devices renew their session (authenticate again: a new session token) at
   ``--renew-rate`` per second (10), and devices are revoked at
   ``--revoke-rate`` per second (1; through the registry, as ``didgw device revoke`` does):
   the longest gap again (``churn_stall_ms_max``), and how long each revoked device stayed
   connected after its revocation (``revoke_cutoff_ms_max``).

4. **Restart**: the broker restarts with every device that was not revoked connected; each
   connects again with the session token it has (no new handshake: ``restart_handshakes``)
   and gets a reading acknowledged: ``restart_back`` of ``restart_devices`` within
   ``restart_back_s``.

The stream's publish -> ack p99 is reported per phase (``stream_p99_ack_ms_idle``,
``_storm``, ``_churn``): whether the gateway keeps acknowledging readings meanwhile.
``--nice-load`` runs the two load processes (the storm's devices and the stream's) at nice
10: on a real site the devices' work is done by the devices, and here it would otherwise
take the cores from the gateway and the broker at the moments measured. The idle figures
are the 5 s before the storm, with nothing else going on (the floor this machine gives).
The CPU used by the gateway, mosquitto, the storm's load generator and the stream (percent
of one core) is reported per phase, and on a virtual machine the time its host took from
it (``steal_ms_storm``, ``steal_ms_churn``: a host that pauses the machine stalls the broker
whatever its priority). ``verify_us_before`` and ``verify_us_after``: one bare libsodium
Ed25519 verification before and after the run, in µs: the machine's speed, which on this
virtual machine halves for periods. ``broker_stalls_storm`` and ``broker_stalls_churn``
list each hold over 5 ms in those phases: when (``at_s``, seconds after the phase's start),
how long (``ms``), and what a trace sampled every 10 ms saw meanwhile: the most time the
host took from one core (``steal_ms``) and how long mosquitto waited for a core
(``broker_wait_ms``; over the whole storm: ``broker_wait_ms_storm``). A hold with neither
is the broker's own work. ``trace_gap_ms_max``: the trace's own longest gap (a pause of the
whole machine holds it too). The last line is one JSON object. Temporary files go to
``$DIDGW_BENCH_DIR`` if set.
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
import bisect
import contextlib
import importlib.util
import itertools
import json
import multiprocessing as mp
import random
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

# Its neighbour bench/ingest.py, loaded from its file (it sets the paths it needs itself).
_spec = importlib.util.spec_from_file_location("ingest", os.path.join(HERE, "ingest.py"))
assert _spec is not None and _spec.loader is not None
ingest = importlib.util.module_from_spec(_spec)
sys.modules["ingest"] = ingest
_spec.loader.exec_module(ingest)

import fleet  # firmware-sim/, on the path ingest set

dev = ingest.dev

# bench/broker_tokens.py's probe stream, loaded from its file as ingest is.
_spec = importlib.util.spec_from_file_location(
    "broker_tokens_bench", os.path.join(HERE, "broker_tokens.py")
)
assert _spec is not None and _spec.loader is not None
probe = importlib.util.module_from_spec(_spec)
sys.modules["broker_tokens_bench"] = probe  # the probe's process finds run_stream by name
_spec.loader.exec_module(probe)
STREAM_DEVICES = 20
STREAM_RATE = 1_000  # readings per second, in all
VALUES = ingest.VALUES


# ----------------------------------------------------------------------------- load processes


def load_process(work, *args) -> None:
    """The body of a load process (this bench's and soak.py's): run the coroutine
    ``work(*args)`` on an event loop of its own; its result, if any, goes to ``results``
    (the last argument) as ``("done", result)``, a failure as ``("error", …)``."""
    results = args[-1]
    try:
        out = asyncio.run(work(*args))
    except BaseException as exc:
        results.put(("error", repr(exc)))
        raise
    if out is not None:
        results.put(("done", out))


def devices_of(conn: dict, keys: list[bytes], backoff=None) -> list:
    """A fleet device (firmware-sim/fleet.py) per private key, all through one broker;
    ``backoff()`` gives each its own backoff (default: fleet's)."""
    broker = fleet.Broker(conn["host"], conn["port"], conn["accounts_port"], conn["prefix"])
    extra = (lambda: {}) if backoff is None else (lambda: {"backoff": backoff()})
    return [
        fleet.FleetDevice(ingest.identity_of(k), broker, gateway_did=conn["gateway_did"], **extra())
        for k in keys
    ]


# ----------------------------------------------------------------------------- the stream


def stream_main(conn: dict, keys: list[bytes], control, results) -> None:
    """Process: 20 devices sending 1,000 readings/s, and a subscriber timing deliveries."""
    load_process(_stream, conn, keys, control, results)


async def _stream(conn: dict, keys: list[bytes], control, results) -> dict:
    loop = asyncio.get_running_loop()
    devices = devices_of(conn, keys)
    until = time.monotonic() + 120
    if not all(await asyncio.gather(*(d.bring_up(until=until) for d in devices))):
        raise RuntimeError("the stream's devices could not authenticate")
    arrivals: list[float] = []
    tap = await fleet.Connection.open(
        conn["host"],
        conn["port"],
        client_id=f"didgw-bench-tap-{os.getpid()}",
        username=conn["gateway_username"],
        password=conn["gateway_password"].encode(),
        on_message=lambda _t, _p: arrivals.append(time.monotonic()),
    )
    await tap.subscribe(f"{conn['prefix']}/d/+/readings")
    results.put(("ready", None))
    stop = asyncio.Event()
    loop.run_in_executor(None, lambda: (control.get(), loop.call_soon_threadsafe(stop.set)))
    start = time.monotonic()
    sent, late_max, tick = 0, 0.0, 0.005
    while not stop.is_set():
        now = time.monotonic()
        due = int((now - start) * STREAM_RATE) - sent
        if due > 1:
            late_max = max(late_max, (due - 1) / STREAM_RATE)
        for _ in range(due):
            d = devices[sent % len(devices)]
            d.send_reading(VALUES)
            sent += 1
        await asyncio.sleep(tick)
    await asyncio.sleep(2)  # the last acks
    await tap.close()
    for d in devices:
        await d.close()
    return {
        "arrivals": arrivals,
        "sent": sent,
        "late_ms_max": round(1000 * late_max, 1),
        "unacked": sum(len(d.sent_at) for d in devices),
        "acks": [
            (t, lat) for d in devices for t, lat in zip(d.latency_sent, d.latencies, strict=True)
        ],
        "statuses": dict(sum((d.statuses for d in devices), Counter())),
    }


# ----------------------------------------------------------------------------- the storm


def storm_main(conn: dict, keys: list[bytes], s: dict, control, results) -> None:
    """Process: the storm's devices, then the churn, on one event loop."""
    load_process(_storm, conn, keys, s, control, results)


async def _storm(conn: dict, keys: list[bytes], s: dict, control, results) -> None:  # noqa: PLR0915
    loop = asyncio.get_running_loop()
    rng = random.Random(19)
    devices = devices_of(
        conn,
        keys,
        lambda: fleet.Backoff(base=1.0, cap=30.0, rng=random.Random(rng.random())),
    )

    async def command() -> tuple:
        return await loop.run_in_executor(None, control.get)

    results.put(("ready", None))
    _, start = await command()
    until = start + s["timeout"]
    done_at: dict[int, float] = {}

    async def one(i: int, device: fleet.FleetDevice) -> None:
        await asyncio.sleep(max(0.0, start + rng.random() - time.monotonic()))
        if await device.bring_up(until=until):
            ack = await device.send_until_acked(VALUES, until=until)
            if ack is not None:
                done_at[i] = time.monotonic()

    await asyncio.gather(*(one(i, d) for i, d in enumerate(devices)))
    authenticated = sorted(d.authenticated_at for d in devices if d.authenticated_at)
    results.put(
        (
            "storm",
            {
                "done": len(done_at),
                "last_done": max(done_at.values(), default=None),
                "authenticated": authenticated,
                "attempts": sum(d.attempts for d in devices),
                "refusals": dict(sum((d.refusals for d in devices), Counter())),
                "failures": dict(sum((d.failures for d in devices), Counter())),
                "latencies": [t for d in devices for t in d.latencies],
            },
        )
    )
    # The churn: once a renewal goes through again (the storm's backlog drained), renew
    # connected devices at a steady rate until told to stop.
    _, revoke_n = await command()
    connected = [d for d in devices if d.connected]
    doomed = connected[len(connected) - min(revoke_n, len(connected) // 2) :]
    renewing = connected[: len(connected) - len(doomed)]
    settled_after = None
    began = time.monotonic()
    for probe in renewing[:1] * 20:
        with contextlib.suppress(dev.DeviceError, fleet.MqttError, OSError, TimeoutError):
            await probe.renew()
            settled_after = time.monotonic() - began
            break
    results.put(("settled", (settled_after, [d.did for d in doomed])))
    _, rate = await command()
    stop = asyncio.Event()
    loop.run_in_executor(None, lambda: (control.get(), loop.call_soon_threadsafe(stop.set)))
    renewed, failed, k, begin = 0, 0, 0, time.monotonic()
    pending: set[asyncio.Task] = set()

    async def renew(device: fleet.FleetDevice) -> None:
        nonlocal renewed, failed
        try:
            await device.renew()
            renewed += 1
        except (dev.DeviceError, fleet.MqttError, OSError, TimeoutError):
            failed += 1

    while not stop.is_set() and renewing:
        due = int((time.monotonic() - begin) * rate) - k
        for _ in range(due):
            task = asyncio.create_task(renew(renewing[k % len(renewing)]))
            pending.add(task)
            task.add_done_callback(pending.discard)
            k += 1
        await asyncio.sleep(0.02)
    if pending:
        await asyncio.wait(pending, timeout=30)
    lost = {d.did: d.lost_at for d in devices if d.lost_at is not None}
    results.put(
        (
            "churn",
            {"renewed": renewed, "renew_failed": failed, "lost": lost, "settled_s": settled_after},
        )
    )
    # The broker restarts (the main process restarts it once we are ready): every device
    # not revoked connects again with the token it has and gets a reading acknowledged.
    survivors = [d for d in devices if d.did not in lost and d.grant is not None]
    results.put(("restart ready", len(survivors)))
    _, restarted_at = await command()
    back_at: list[float] = []
    again_until = restarted_at + s["timeout"]

    async def back(device: fleet.FleetDevice) -> None:
        while time.monotonic() < again_until:
            try:
                await device.connect()
                break
            except (OSError, fleet.MqttError, TimeoutError, dev.DeviceError):
                await asyncio.sleep(0.2 + rng.random())
        if device.connected and await device.send_until_acked(VALUES, until=again_until):
            back_at.append(time.monotonic())

    handshakes = sum(d.attempts for d in devices)
    await asyncio.gather(*(back(d) for d in survivors))
    results.put(
        (
            "restarted",
            {
                "back": len(back_at),
                "last": max(back_at, default=None),
                "handshakes": sum(d.attempts for d in devices) - handshakes,
            },
        )
    )
    await command()
    await asyncio.gather(*(d.close() for d in devices), return_exceptions=True)
    results.put(("closed", None))


# ----------------------------------------------------------------------------- the bench


def expect(results, kind: str, timeout: float, alive) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got, value = results.get(timeout=1)
        except Exception:  # queue.Empty
            if not alive():
                raise RuntimeError(f"a load process died before {kind!r}") from None
            continue
        if got == "error":
            raise RuntimeError(f"a load process failed: {value}")
        if got != kind:
            raise RuntimeError(f"expected {kind!r} from a load process, got {got!r}")
        return value
    raise RuntimeError(f"no {kind!r} from a load process within {timeout:.0f} s")


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest gap between consecutive deliveries within [start, end], in ms."""
    inside = [t for t in times if start <= t <= end]
    if len(inside) < 2:
        return float("nan")
    return round(1000 * max(b - a for a, b in itertools.pairwise(inside)), 1)


def p99_between(acks: list[tuple[float, float]], start: float, end: float) -> float:
    """p99 publish -> ack (ms) of the readings sent within [start, end]."""
    return round(1000 * ingest.percentile([lat for t, lat in acks if start <= t <= end], 99), 1)


def revoker(state: Path, config: Path, dids: list[str], rate: float, stop, out: dict) -> None:  # noqa: PLR0917
    """Thread: revoke ``dids`` at ``rate`` per second through the registry (another process
    than the gateway's, as ``didgw device revoke`` is)."""
    from gateway.config import load_config
    from gateway.service import open_gateway

    with open_gateway(load_config(config), state) as gateway:
        begin = time.monotonic()
        for i, did in enumerate(dids):
            ingest.sleep_until(begin + i / rate)
            if stop.is_set():
                return
            gateway.registry.revoke(did, actor="bench", reason="storm churn", now=time.time())
            out[did] = time.time()


def register(state: Path, config: Path, tmp: Path, identities: list) -> float:
    """``didgw device import`` of every DID; seconds."""
    csv = tmp / "devices.csv"
    rows = ["did,name,kind"] + [f"{d.did},storm {i},sensor" for i, d in enumerate(identities)]
    csv.write_text("\n".join(rows) + "\n")
    env = {**os.environ, "DIDGW_STATE_DIR": str(state), "DIDGW_CONFIG": str(config)}
    begin = time.perf_counter()
    subprocess.run(
        [ingest.DIDGW, "device", "import", str(csv)],
        check=True,
        capture_output=True,
        timeout=600,
        env=env,
    )
    return time.perf_counter() - begin


class SchedTrace:
    """Every 10 ms, what could hold the broker besides its own work: the time the host took
    from each core (``steal`` in ``/proc/stat``) and how long mosquitto waited for a core
    (its run-queue wait in ``/proc/<pid>/schedstat``). Each hold of the probe is then
    put down to the host, to the broker waiting for a core, or to neither: the broker's
    own work. A thread of the bench's own process, under SCHED_RR below the broker and the
    probe (where permitted: it delays neither); if it is held too, ``gap_ms_max`` says."""

    def __init__(self, broker_pid: int, interval: float = 0.01) -> None:
        self._schedstat = f"/proc/{broker_pid}/schedstat"
        self._interval = interval
        self._tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
        #: (time.monotonic(), steal per core in clock ticks, the broker's run-queue wait in ns)
        self.samples: list[tuple[float, list[int], int]] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> tuple[float, list[int], int]:
        lines = Path("/proc/stat").read_text().splitlines()
        steal = [int(line.split()[8]) for line in lines if line[:3] == "cpu" and line[3].isdigit()]
        try:
            wait_ns = int(Path(self._schedstat).read_text().split()[1])
        except (OSError, IndexError, ValueError):  # the broker has gone (its restart)
            wait_ns = self.samples[-1][2] if self.samples else 0
        return time.monotonic(), steal, wait_ns

    def _run(self) -> None:
        with contextlib.suppress(PermissionError):  # before every ordinary process
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(5))
        while not self._halt.wait(self._interval):
            self.samples.append(self._sample())

    def stop(self) -> None:
        self._halt.set()
        self._thread.join()

    def during(self, begin: float, end: float) -> dict[str, float]:
        """Between the samples just before ``begin`` and just after ``end``: the most time
        the host took from one core (``steal_ms``), and the broker's run-queue wait
        (``broker_wait_ms``)."""
        times = [t for t, _, _ in self.samples]
        i = max(0, bisect.bisect_right(times, begin) - 1)
        j = min(len(times) - 1, bisect.bisect_left(times, end))
        if j <= i:
            return {"steal_ms": 0.0, "broker_wait_ms": 0.0}
        (_, steal_a, wait_a), (_, steal_b, wait_b) = self.samples[i], self.samples[j]
        stolen = max(b - a for a, b in zip(steal_a, steal_b, strict=True))
        return {
            "steal_ms": round(stolen * self._tick_ms, 1),
            "broker_wait_ms": round((wait_b - wait_a) / 1e6, 1),
        }

    def gap_ms_max(self, begin: float, end: float) -> float:
        """The longest time between two samples in the window: the sampler's own holds."""
        times = [t for t, _, _ in self.samples if begin <= t <= end]
        return round(1000 * max((b - a for a, b in itertools.pairwise(times)), default=0.0), 1)


def stalls(
    probed: list[tuple[int, float]], begin: float, end: float, trace: SchedTrace
) -> list[dict[str, float]]:
    """Each time the probe was held over 5 ms between ``begin`` and ``end``: when (seconds
    after ``begin`` the first held message was sent), the longest hold (ms), and what the
    trace saw meanwhile (:meth:`SchedTrace.during`). Messages held by one pause come in a
    run (each sent 1 ms after the last, held 1 ms less): one entry a run."""
    runs: list[list[float]] = []
    last = -1.0
    for sent_ns, latency in probed:
        at = sent_ns / 1e9
        if begin <= at <= end and latency > 5.0:
            if runs and at - last < 0.02:
                runs[-1][1] = max(runs[-1][1], latency)
            else:
                runs.append([at, latency])
            last = at
    return [
        {"at_s": round(at - begin, 3), "ms": round(ms, 1), **trace.during(at, at + ms / 1000)}
        for at, ms in runs
    ]


def verify_us(seconds: float = 0.3) -> float:
    """One bare libsodium Ed25519 verification, in microseconds (``bench/jws_verify.py``'s
    ``bare_libsodium_us``): how fast the machine is at the moment. This virtual machine runs
    at half its usual speed for periods, and every figure here moves with it."""
    from nacl.bindings import crypto_sign, crypto_sign_keypair, crypto_sign_open

    public, secret = crypto_sign_keypair()
    signed = crypto_sign(b"x" * 200, secret)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(100):
            crypto_sign_open(signed, public)
        count += 100
    return round(1e6 * (time.perf_counter() - start) / count, 1)


def steal_ms() -> int:
    """CPU time the hypervisor took from this virtual machine so far, all cores (ms): a
    host that stops the machine for 100 ms stops the broker too, whatever its priority."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) * 1000 // os.sysconf("SC_CLK_TCK")


def realtime(pid: int, priority: int = 10) -> bool:
    """Every thread of ``pid`` under SCHED_RR at ``priority``: 10 as the shipped mosquitto
    drop-in's ``ExecStartPost`` (``chrt``) puts the broker. False where not permitted."""
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setscheduler(int(tid), os.SCHED_RR, os.sched_param(priority))
    except PermissionError:
        return False
    return True


def run(s: dict, tmp: Path) -> dict:  # noqa: PLR0915 - one timeline, read top to bottom
    broker = ingest.brokers.PrivateBroker(tmp / "mosquitto")
    gateway = None
    ctx = mp.get_context("spawn")
    processes: list = []
    try:
        broker.setup()
        total = s["devices"] + STREAM_DEVICES
        state, config, private_keys = ingest.prepare(
            broker, {"registered": total, "verify_workers": None}, tmp
        )
        free = ingest.brokers.free_port
        config.write_text(
            f"[metrics]\nport = {free()}\n\n[http]\nport = {free()}\n\n" + config.read_text()
        )
        identities = [dev.Identity.from_key(k) for k in private_keys]
        keys = [k.private_bytes_raw() for k in private_keys]
        import_s = register(state, config, tmp, identities)
        print(f"{total:,} devices imported in {import_s:.1f} s", flush=True)
        gateway = ingest.Gateway(state, config, broker.gateway_password, tmp / "gateway.log")
        gateway.start()
        conn = {
            "host": broker.host,
            "port": broker.port,
            "accounts_port": broker.accounts_port,
            "prefix": broker.prefix,
            "gateway_did": ingest.gateway_did_of(state, config),
            "gateway_username": broker.gateway_username,
            "gateway_password": broker.gateway_password,
        }
        stream_ctl, stream_out = ctx.Queue(), ctx.Queue()
        stream = ctx.Process(
            target=stream_main, args=(conn, keys[:STREAM_DEVICES], stream_ctl, stream_out)
        )
        probe_conn, probe_end = ctx.Pipe()
        prober = ctx.Process(
            target=probe.run_stream,
            args=(broker.host, broker.port, broker.gateway_username, broker.gateway_password),
            kwargs={"conn": probe_end},
        )
        storm_ctl, storm_out = ctx.Queue(), ctx.Queue()
        storm_keys = keys[STREAM_DEVICES:]
        storm = ctx.Process(target=storm_main, args=(conn, storm_keys, s, storm_ctl, storm_out))
        processes = [stream, storm, prober]
        for p in processes:
            p.start()
        if s["nice_load"]:  # the devices' CPU is not the gateway's: theirs yields first
            for p in (stream, storm):
                os.setpriority(os.PRIO_PROCESS, p.pid, 10)
        # The probe just below the broker: before every ordinary process, and its two threads
        # (which could hold both cores at once) never keep the broker waiting.
        broker_rt = (
            s["broker_priority"] == "shipped"
            and realtime(broker.pid)
            and realtime(prober.pid, priority=9)
        )
        if s["broker_priority"] == "shipped":
            s["broker_priority"] = "SCHED_RR 10" if broker_rt else "normal (SCHED_RR not permitted)"
        if not probe_conn.poll(60) or probe_conn.recv() != "ready":
            raise RuntimeError("the probe did not start")
        expect(stream_out, "ready", 180, stream.is_alive)
        expect(storm_out, "ready", 180, storm.is_alive)
        print(f"stream of {STREAM_RATE:,}/s running; storm of {s['devices']:,} devices", flush=True)
        idle_from = time.monotonic()
        time.sleep(5)
        roots = {
            "gateway": [gateway.pid],
            "mosquitto": [broker.pid],
            "storm_load": [storm.pid],
            "stream_load": [stream.pid],
            "probe": [prober.pid],
        }
        cpu = ingest.CpuMeter(roots, detail=gateway.pid)
        trace = SchedTrace(broker.pid)
        stolen = steal_ms()
        start = time.monotonic() + 0.2
        storm_ctl.put(("go", start))
        result = expect(storm_out, "storm", s["timeout"] + 120, storm.is_alive)
        storm_end = time.monotonic()
        steal_storm = steal_ms() - stolen
        storm_cpu = cpu.stop()
        authenticated = result["authenticated"]
        all_done = result["done"] == s["devices"]
        span = (result["last_done"] - start) if all_done else s["timeout"]
        auth_span = (authenticated[-1] - start) if authenticated else span
        print(
            f"storm: {result['done']:,}/{s['devices']:,} done in {span:.1f} s, "
            f"{len(authenticated):,} authenticated; refusals {result['refusals']}; "
            f"CPU {ingest.cpu_text(storm_cpu)}",
            flush=True,
        )
        # The churn: renewals by the storm's devices, revocations through the registry.
        revoke_n = max(1, int(s["revoke_rate"] * s["churn_seconds"]))
        revoked: dict[str, float] = {}
        halt = threading.Event()
        storm_ctl.put(("settle", revoke_n))  # connected devices to revoke: up to half of them
        settled, revoke_dids = expect(storm_out, "settled", 3600, storm.is_alive)
        print(f"the gateway answers renewals again after {settled} s; churn", flush=True)
        cpu = ingest.CpuMeter(roots)
        churn_start = time.monotonic()
        stolen = steal_ms()
        storm_ctl.put(("churn", s["renew_rate"]))
        thread = threading.Thread(
            target=revoker,
            args=(state, config, revoke_dids, s["revoke_rate"], halt, revoked),
            daemon=True,
        )
        thread.start()
        time.sleep(s["churn_seconds"])
        halt.set()
        thread.join()
        storm_ctl.put(("stop",))
        churn = expect(storm_out, "churn", 120, storm.is_alive)
        churn_end = time.monotonic()
        churn_cpu = cpu.stop()
        steal_churn = steal_ms() - stolen
        time.sleep(2)  # revocations of the last second take effect
        stream_ctl.put(("stop",))
        streamed = expect(stream_out, "done", 120, stream.is_alive)
        probe_conn.send("stop")
        probed = probe_conn.recv() if probe_conn.poll(60) else []
        trace.stop()
        # The broker restarts with every device connected: they all come back.
        survivors = expect(storm_out, "restart ready", 120, storm.is_alive)
        broker.restart()
        if broker_rt:
            realtime(broker.pid)  # as the unit's ExecStartPost does at every start
        restarted_at = time.monotonic()
        storm_ctl.put(("restart", restarted_at))
        restart = expect(storm_out, "restarted", s["timeout"] + 120, storm.is_alive)
        print(
            f"broker restarted: {restart['back']:,} of {survivors:,} devices back, "
            f"{restart['handshakes']} new handshakes",
            flush=True,
        )
        storm_ctl.put(("close",))
        expect(storm_out, "closed", 120, storm.is_alive)
    finally:
        for p in processes:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        code = gateway.stop() if gateway is not None else None
        broker.stop()
    arrivals = streamed["arrivals"]

    def worst(begin: float, end: float) -> float:
        return round(probe.worst_between(probed, int(begin * 1e9), int(end * 1e9)), 1)

    cutoffs = [
        1000 * (churn["lost"][did] - at) for did, at in revoked.items() if did in churn["lost"]
    ]
    return {
        "bench": "storm",
        "registered": total,
        "devices": s["devices"],
        "done": result["done"],
        "authenticated": len(authenticated),
        "auth_per_s": round(len(authenticated) / auth_span, 1) if auth_span > 0 else None,
        "reconnect_all_s": round(span, 1) if all_done else None,
        "timeout_s": s["timeout"],
        "broker_stall_ms_max": worst(start, storm_end),
        "idle_stall_ms_max": worst(idle_from, start),
        "churn_stall_ms_max": worst(churn_start, churn_end),
        "probe_messages": len(probed),
        "broker_stalls_storm": stalls(probed, start, storm_end, trace),
        "broker_stalls_churn": stalls(probed, churn_start, churn_end, trace),
        "broker_wait_ms_storm": trace.during(start, storm_end)["broker_wait_ms"],
        "trace_gap_ms_max": trace.gap_ms_max(start, churn_end),
        "stream_gap_ms_max": longest_gap(arrivals, start, storm_end),
        "stream_gap_ms_idle": longest_gap(arrivals, idle_from, start),
        "stream_gap_ms_churn": longest_gap(arrivals, churn_start, churn_end),
        "stream_late_ms_max": streamed["late_ms_max"],
        "stream_p99_ack_ms_idle": p99_between(streamed["acks"], idle_from, start),
        "stream_p99_ack_ms_storm": p99_between(streamed["acks"], start, storm_end),
        "stream_p99_ack_ms_churn": p99_between(streamed["acks"], churn_start, churn_end),
        "stream_unacked": streamed["unacked"],
        "storm_p99_first_ack_ms": round(1000 * ingest.percentile(result["latencies"], 99), 1),
        "auth_attempts": result["attempts"],
        "auth_refusals": result["refusals"],
        "auth_failures": result["failures"],
        "churn_settle_s": None if settled is None else round(settled, 1),
        "renewed": churn["renewed"],
        "renew_failed": churn["renew_failed"],
        "renew_per_s": round(churn["renewed"] / (churn_end - churn_start), 1),
        "revoked": len(revoked),  # connected devices, revoked while connected
        "revoked_cut_off": len(cutoffs),
        "revoke_cutoff_ms_max": round(max(cutoffs), 0) if cutoffs else None,
        "restart_devices": survivors,
        "restart_back": restart["back"],
        "restart_back_s": None
        if restart["last"] is None
        else round(restart["last"] - restarted_at, 1),
        "restart_handshakes": restart["handshakes"],
        "cpu_storm": storm_cpu,
        "cpu_churn": churn_cpu,
        "steal_ms_storm": steal_storm,
        "steal_ms_churn": steal_churn,
        "import_s": round(import_s, 1),
        "gateway_exit": code,
        "nice_load": s["nice_load"],
        "broker_priority": s["broker_priority"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 devices, 15 s of churn")
    parser.add_argument("--devices", type=int, help="devices in the storm (10,000)")
    parser.add_argument("--timeout", type=float, help="seconds the storm may take (600)")
    parser.add_argument("--churn-seconds", type=float, help="seconds of churn (30)")
    parser.add_argument("--renew-rate", type=float, default=10.0, help="renewals per second")
    parser.add_argument("--revoke-rate", type=float, default=1.0, help="revocations per second")
    parser.add_argument(
        "--nice-load",
        action="store_true",
        help="run the load generators (the devices) at nice 10, as if on machines of their own",
    )
    parser.add_argument(
        "--broker-priority",
        choices=("shipped", "normal"),
        default="shipped",
        help="the broker (and the probe) under SCHED_RR as the shipped unit runs it (default), "
        "or at the normal priority",
    )
    args = parser.parse_args()
    s = vars(args)
    defaults = (2000, 60.0, 15.0) if args.quick else (10_000, 600.0, 30.0)
    for name, value in zip(("devices", "timeout", "churn_seconds"), defaults, strict=True):
        if s[name] is None:
            s[name] = value
    load = os.getloadavg()
    speed = verify_us()
    with tempfile.TemporaryDirectory(dir=os.environ.get("DIDGW_BENCH_DIR")) as tmp:
        summary = run(s, Path(tmp))
    summary["load_before"] = [round(x, 2) for x in load]
    summary["verify_us_before"], summary["verify_us_after"] = speed, verify_us()
    print(
        f"storm of {summary['devices']:,}: {summary['done']:,} done, "
        f"reconnect_all_s {summary['reconnect_all_s']}, {summary['auth_per_s']} auth/s; "
        f"longest stall of the broker {summary['broker_stall_ms_max']} ms (idle "
        f"{summary['idle_stall_ms_max']} ms, churn {summary['churn_stall_ms_max']} ms); longest "
        f"gap in the readings {summary['stream_gap_ms_max']} ms (idle "
        f"{summary['stream_gap_ms_idle']} ms, churn {summary['stream_gap_ms_churn']} ms)"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

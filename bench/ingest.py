"""Devices over MQTT, end to end: broker rate, gateway rate, ack latency, auth rate, memory.

    python bench/ingest.py [--quick] [--devices N] [--workers N] [--window N] [--rate R]
                           [--registered N] [--verify-workers N] [--nagle] [--no-tls]

Everything runs on loopback: a real mosquitto with dynamic security (the test
suite's broker helper, tests/integration/broker.py), ``didgw run`` started as a
user starts it (the gateway's own defaults, unless ``--verify-workers``), and
load generator processes that speak the wire protocol of docs/protocol/mqtt.md
with the device simulator's message builders
(``firmware-sim/device.py``). ``--quick`` takes about 45 s (half a minute with
``--no-tls``), the full run about two and a half minutes.

* ``raw_qos1_per_s``: what the broker alone carries: one paho client publishes
  signed readings (QoS 1, at most 1,000 unacknowledged) to one paho subscriber
  (QoS 1); messages received per second (after a warm-up);
* ``gateway_per_s``: signed readings per second through the gateway: devices
  (20) that authenticated through the protocol publish readings signed
  beforehand (QoS 1, each with a window of readings awaiting their ack);
  ``accepted`` acks received per second after a warm-up (publish → verified →
  on the record → ack received);
* ``ratio``: ``gateway_per_s / raw_qos1_per_s``;
* ``p99_ack_ms_at_1000``: publish → ack latency, 99th percentile, at a paced
  offered load of 1,000 readings/s spread evenly over the same devices;
* ``auth_per_s``: authentications per second, from the first hello to the last
  grant received and its broker password decrypted, 200 (``--quick``) or 1,000
  devices at once over a few anonymous connections; the gateway creates each
  device's broker account before it grants;
* ``raw_tls_qos1_per_s``, ``gateway_tls_per_s``, ``p99_ack_ms_at_1000_tls``: the same
  raw and gateway figures with the clients on the broker's TLS listener (TLS 1.3, ECDSA
  P-256 from the gateway's own CA, ``didgw tls issue``), as devices on a LAN connect; the
  gateway's own connection stays on the plain loopback listener, as shipped. Other devices
  than the plain phase's, so that every TLS reading is new. ``--no-tls`` skips them;
* ``rss_mb_10k_devices``: the gateway process's resident memory (VmRSS) with
  10,000 registered devices (registered through the library before the gateway
  starts): the largest of after start-up, after the authentications and after
  the readings. The PSS of all the gateway's processes is reported beside it.

The record is durable as always (SQLite WAL, ``synchronous=FULL``). The load
generators share the machine with the broker and the gateway: the CPU each one
used (percent of one core) is printed and reported, the gateway's per process
and per thread of its main process. The load generators set TCP_NODELAY on
their sockets, as the device simulator does, and the broker runs with
``set_tcp_nodelay`` as the shipped configuration has it; ``--nagle`` leaves
Nagle's algorithm on in both (small acks then wait 20-40 ms for delayed
acknowledgements). The gateway's own sockets are as the gateway makes them. Temporary files go to
``$DIDGW_BENCH_DIR`` if set. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import os
import sys

# bench/http.py has the name of the standard library's http package: this folder comes off
# the import path before anything imports http.client (paho, aiohttp, requests, web3 do).
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import queue
import secrets
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
# The gateway from this checkout; firmware-sim/ holds scripts that import each other by name.
sys.path[:0] = [str(ROOT), str(ROOT / "firmware-sim")]

# The device side: only what a device vendor has (firmware-sim shares no code with gateway/).
import device as dev

# The broker: the gateway's private-broker launcher (dynamic security, its policy and account).
from gateway.ops import broker as brokers

DIDGW = str(Path(sys.executable).with_name("didgw"))
WINDOW = 1_000  # unacknowledged QoS 1 publishes per client at most (paho allows 65,535)
VALUES = {"import_kwh": {"value": 1234.567, "unit": "kWh"}, "power_w": {"value": 812, "unit": "W"}}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- /proc


def children(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cpu_s(stat_path: Path) -> float:
    """utime + stime of one process or thread, in seconds (0 once it is gone)."""
    try:
        fields = stat_path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pss_mb(pid: int) -> float:
    """Proportional set size: shared pages split between the processes sharing them."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return rss_mb(pid)


def memory(pid: int) -> tuple[float, float]:
    """The process's VmRSS, and the PSS of it and all its child processes, in MB."""
    return rss_mb(pid), sum(pss_mb(p) for p in children(pid))


class CpuMeter:
    """CPU used by named process trees between start and stop, in percent of one core.

    ``detail`` (the gateway) is also itemised: each of its processes, and the busiest
    threads of its main process (the main thread runs the event loop).
    """

    def __init__(self, roots: dict[str, list[int]], detail: int | None = None) -> None:
        self.roots, self.detail = roots, detail
        self.before = self._sample()
        self.started = time.monotonic()

    def _sample(self) -> dict[str, float]:
        sample = {
            name: sum(cpu_s(Path(f"/proc/{p}/stat")) for r in roots for p in children(r))
            for name, roots in self.roots.items()
        }
        if self.detail is not None:
            for pid in children(self.detail):
                sample[f"process {pid}"] = cpu_s(Path(f"/proc/{pid}/stat"))
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{self.detail}/task").iterdir():
                    sample[f"thread {task.name}"] = cpu_s(task / "stat")
        return sample

    def stop(self) -> dict:
        elapsed = time.monotonic() - self.started
        after = self._sample()
        usage = {
            name: round(100 * (after[name] - self.before.get(name, 0.0)) / elapsed, 1)
            for name in after
        }
        out: dict = {k: v for k, v in usage.items() if not k.startswith(("process ", "thread "))}
        if self.detail is not None:
            main = f"{self.detail}"
            out["gateway_processes"] = {
                ("main" if k == f"process {main}" else k.split()[1]): v
                for k, v in usage.items()
                if k.startswith("process ")
            }
            threads = sorted(
                ((v, k.split()[1]) for k, v in usage.items() if k.startswith("thread ")),
                reverse=True,
            )
            out["gateway_main_threads"] = {
                ("event loop" if tid == main else tid): v for v, tid in threads[:4]
            }
        return out


def cpu_text(usage: dict) -> str:
    parts = []
    for name, value in usage.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k} {v:.0f}" for k, v in value.items())
            parts.append(f"{name.replace('_', ' ')} ({inner})")
        else:
            parts.append(f"{name} {value:.0f}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- helpers


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else float("nan")


def sleep_until(moment: float) -> None:
    while (left := moment - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))


def identity_of(raw: bytes):
    return dev.Identity.from_key(Ed25519PrivateKey.from_private_bytes(raw))


def raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def new_client(name: str, username: str | None = None, password: str | bytes | None = None):
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        # The broker takes only ids with its prefix (configs/mosquitto/mosquitto.conf).
        client_id=f"{dev.CLIENT_ID_PREFIX}bench-{name}-{secrets.token_hex(16)}",
        protocol=mqtt.MQTTv311,
        clean_session=True,
        reconnect_on_failure=False,
    )
    if username is not None:
        client.username_pw_set(username, password)
    # Every sender here keeps its own window (at most WINDOW unacknowledged). paho's own
    # limit would cost a scan of every message in flight at each PUBACK (paho 2.2's
    # _update_inflight): with 1,000 in flight that alone halves the rate it can publish.
    client.max_inflight_messages_set(0)
    return client


def open_client(
    client, conn: dict, topics: list[str], timeout: float = 10.0, *, account: bool = False
) -> None:
    """Connect (over TLS when ``conn`` names a CA file), subscribe (QoS 1, 100 topics a
    packet) and wait for every SUBACK. A device's account connects to the accounts listener
    (``account``), as the protocol says."""
    if conn.get("ca_file"):
        client.tls_set_context(ssl.create_default_context(cafile=conn["ca_file"]))
    ready, failed = threading.Event(), []
    waiting: set[int] = set()
    lock = threading.Lock()

    def on_connect(c, _u, _f, code, _p) -> None:
        if code.is_failure:
            failed.append(f"CONNACK {code}")
            ready.set()
            return
        with lock:
            for i in range(0, len(topics), 100):
                _, mid = c.subscribe([(t, 1) for t in topics[i : i + 100]])
                waiting.add(mid)
            if not waiting:
                ready.set()

    def on_subscribe(_c, _u, mid, codes, _p) -> None:
        if any(code.is_failure for code in codes):
            failed.append("subscription refused")
        with lock:
            waiting.discard(mid)
            if not waiting:
                ready.set()

    client.on_connect, client.on_subscribe = on_connect, on_subscribe
    port = conn["accounts_port"] if account else conn["port"]
    client.connect(conn["host"], port, keepalive=60)
    if conn.get("nodelay"):
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.loop_start()
    if not ready.wait(timeout) or failed:
        raise RuntimeError(f"broker {conn['host']}:{port}: {failed or 'no answer'}")


def close_client(client) -> None:
    with contextlib.suppress(Exception):
        client.disconnect()
    client.loop_stop()


# ----------------------------------------------------------------------------- workers
#
# Each worker is a process: it reports ("ready", id, info), waits for ("go", …) on its own
# control queue, runs, and reports ("done", id, result) or ("error", id, traceback).


def worker_main(target, wid: int, control, results, *args) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench's main process stops workers

    def go() -> tuple:
        return control.get(timeout=600)

    try:
        results.put(
            ("done", wid, target(lambda info: results.put(("ready", wid, info)), go, *args))
        )
    except Exception:
        results.put(("error", wid, traceback.format_exc()))


def raw_subscriber(ready, go, conn):
    stamps: list[float] = []
    client = new_client("raw-sub", conn["username"], conn["password"])
    client.on_message = lambda _c, _u, _m: stamps.append(time.monotonic())
    open_client(client, conn, [conn["topic"]])
    ready(None)
    _, start, end = go()
    sleep_until(end + 1.0)  # what was in flight at the end arrives (and is not counted)
    close_client(client)
    return {"times": [t for t in stamps if start <= t <= end], "received": len(stamps)}


def raw_publisher(ready, go, conn):
    client = new_client("raw-pub", conn["username"], conn["password"])
    state = {"sent": 0, "acked": 0, "end": 0.0}
    lock = threading.Lock()

    def send() -> None:
        with lock:
            if time.monotonic() >= state["end"]:
                return
            state["sent"] += 1
        client.publish(conn["topic"], conn["payload"], qos=1)

    def on_publish(_c, _u, _mid, _code, _p) -> None:
        state["acked"] += 1
        send()  # one PUBACK frees one place in the window

    client.on_publish = on_publish
    open_client(client, conn, [])
    ready(None)
    _, start, end = go()
    state["end"] = end
    sleep_until(start)
    for _ in range(WINDOW):
        send()
    sleep_until(end + 0.5)
    close_client(client)
    return {"sent": state["sent"], "acked": state["acked"]}


class Authenticator:
    """Many devices authenticating at once, each with its own reply topic, over a few
    anonymous connections: hello → challenge → signed response → grant, decrypted."""

    def __init__(self, conn: dict, identities: list, *, connections: int = 4) -> None:
        prefix = self.prefix = conn["prefix"]
        self.gateway_did = conn["gateway_did"]
        self.request = f"{prefix}/auth/req"
        self.clients = [new_client("auth") for _ in range(min(connections, len(identities)))]
        self.auths: dict[str, dict] = {}
        for i, identity in enumerate(identities):
            reply = secrets.token_urlsafe(24)
            self.auths[reply] = {
                "identity": identity,
                "client": self.clients[i % len(self.clients)],
            }
        self.left = len(self.auths)
        self.lock = threading.Lock()
        self.finished = threading.Event()
        for client in self.clients:
            client.on_message = self._message
            topics = [
                f"{prefix}/auth/res/{r}" for r, a in self.auths.items() if a["client"] is client
            ]
            open_client(client, conn, topics, timeout=30)

    def run(self, start: float, timeout: float) -> list[dict]:
        sleep_until(start)
        for reply, auth in self.auths.items():
            auth["hello"] = time.monotonic()
            auth["client"].publish(self.request, dev.make_hello(auth["identity"].did, reply), qos=1)
        self.finished.wait(timeout)
        return list(self.auths.values())

    def close(self) -> None:
        for client in self.clients:
            close_client(client)

    def _done(self, auth: dict, **outcome) -> None:
        auth.update(outcome)
        with self.lock:
            self.left -= 1
            if self.left == 0:
                self.finished.set()

    def _message(self, client, _u, message) -> None:
        auth = self.auths.get(message.topic.rpartition("/")[2])
        if auth is None or "end" in auth:
            return
        payload = message.payload
        try:
            if payload[:1] == b"{":
                body = json.loads(payload)
                if body.get("type") != "challenge":
                    self._done(auth, end=time.monotonic(), error=str(body.get("reason", body)))
                    return
                identity = auth["identity"]
                gateway, auth["nonce"] = dev.check_challenge(
                    body, did=identity.did, gateway_did=self.gateway_did
                )
                auth["epk"] = X25519PrivateKey.generate()
                response = dev.make_auth_response(
                    identity,
                    nonce=body["nonce"],
                    gateway=gateway,
                    epk=raw_public(auth["epk"]),
                    reply=message.topic.rpartition("/")[2],
                    ts_ms=int(time.time() * 1000),
                )
                client.publish(self.request, response, qos=1)
            else:
                grant = dev.open_grant(
                    payload,
                    gateway_did=self.gateway_did,
                    did=auth["identity"].did,
                    nonce=auth["nonce"],
                    device_epk=auth["epk"],
                    prefix=self.prefix,
                )
                self._done(auth, end=time.monotonic(), grant=grant)
        except Exception as exc:
            self._done(auth, end=time.monotonic(), error=f"{type(exc).__name__}: {exc}")


def auth_worker(ready, go, conn, keys, timeout):
    auth = Authenticator(conn, [identity_of(k) for k in keys])
    ready(None)
    _, start = go()
    try:
        done = auth.run(start, timeout)
    finally:
        auth.close()
    return [
        {"hello": a["hello"], "end": a.get("end"), "error": a.get("error")}
        for a in done
        if "hello" in a
    ]


class LoadDevice:
    """One authenticated device publishing pre-signed readings and timing their acks."""

    def __init__(self, conn: dict, grant, tokens: list[str], window: int) -> None:
        self.topic, self.tokens, self.window = grant.readings, tokens, window
        self.lock = threading.Lock()
        self.next = 0  # index of the next token to send (its seq is index + 1)
        self.stop_at = len(tokens)
        self.deadline = 0.0
        self.paced = False
        self.sent_at: dict[int, float] = {}
        self.ack_times: list[float] = []
        self.latencies: list[float] = []
        self.refused: Counter[str] = Counter()
        self.client = new_client("dev", grant.username, grant.password)
        self.client.on_message = self._ack
        open_client(self.client, conn, [grant.acks], account=True)

    def burst(self, stop_at: int, deadline: float) -> None:
        """Send up to ``stop_at`` as fast as the window allows until ``deadline``."""
        self.stop_at, self.deadline, self.paced = stop_at, deadline, False
        for _ in range(self.window):
            self.send()

    def send(self) -> bool:
        with self.lock:
            now = time.monotonic()
            if self.next >= self.stop_at or (not self.paced and now >= self.deadline):
                return False
            index, self.next = self.next, self.next + 1
            self.sent_at[index + 1] = now
        self.client.publish(self.topic, self.tokens[index], qos=1)
        return True

    def outstanding(self) -> int:
        return len(self.sent_at)

    def _ack(self, _c, _u, message) -> None:
        now = time.monotonic()
        ack = json.loads(message.payload)
        with self.lock:
            sent = self.sent_at.pop(ack.get("seq"), None)
            if ack.get("status") != "accepted":
                self.refused[str(ack.get("reason"))] += 1
            elif self.paced:
                if sent is not None:
                    self.latencies.append(now - sent)
            else:
                self.ack_times.append(now)
        if not self.paced:
            self.send()


def readings_worker(ready, go, conn, plan):
    """Authenticate ``plan["keys"]``, pre-sign, then run the throughput and the paced phase."""
    identities = [identity_of(k) for k in plan["keys"]]
    auth = Authenticator(conn, identities, connections=1)
    try:
        done = auth.run(time.monotonic(), timeout=60)
    finally:
        auth.close()
    failed = [a.get("error", "no grant") for a in done if "grant" not in a]
    if failed:
        raise RuntimeError(f"{len(failed)} devices could not authenticate: {failed[:3]}")
    burst_n, paced_n = plan["burst_per_device"], plan["paced_per_device"]
    devices = []
    for a in done:
        now_ms = int(time.time() * 1000)
        tokens = [
            dev.make_reading(
                a["identity"], seq=s, ts_ms=now_ms, reading_type="energy", values=VALUES
            )
            for s in range(1, burst_n + paced_n + 1)
        ]
        devices.append(LoadDevice(conn, a["grant"], tokens, plan["window"]))
    try:
        ready(None)
        _, start, deadline = go()
        sleep_until(start)
        for d in devices:
            d.burst(burst_n, deadline)
        wait_drained(devices, deadline + 30)
        burst = {"ack_times": [t for d in devices for t in d.ack_times]}
        ready(None)
        _, start, rate, first_slot, slots = go()
        sent = paced(devices, start, rate, (first_slot, slots), (burst_n, paced_n))
        wait_drained(devices, time.monotonic() + 30)
        return {
            "burst": burst,
            "paced_latencies": [t for d in devices for t in d.latencies],
            "paced_sent": sent,
            "paced_lost": sum(d.outstanding() for d in devices),
            "refused": sum((d.refused for d in devices), Counter()),
        }
    finally:
        for d in devices:
            close_client(d.client)


def wait_drained(devices, until: float) -> None:
    while any(d.outstanding() for d in devices) and time.monotonic() < until:
        time.sleep(0.02)


def paced(devices, start, rate, slot, block) -> list[float]:
    """Send readings ``burst_n + 1 …`` of each device on a schedule: device ``first_slot + i``
    of ``slots`` (over all workers) sends its k-th at start + (k·slots + first_slot + i) / rate,
    so that all devices together offer ``rate`` readings per second."""
    (first_slot, slots), (burst_n, paced_n) = slot, block
    for d in devices:
        d.paced, d.next, d.stop_at = True, burst_n, burst_n + paced_n
    schedule = sorted(
        (start + (k * slots + first_slot + i) / rate, i)
        for i in range(len(devices))
        for k in range(paced_n)
    )
    sent = []
    for moment, i in schedule:
        sleep_until(moment)
        if devices[i].send():
            sent.append(time.monotonic())
    return sent


# ----------------------------------------------------------------------------- orchestration


class Workers:
    """Worker processes (spawned, so no thread of this process is copied into them)."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self.results = self.ctx.Queue()
        self.controls: list = []
        self.processes: list = []

    def start(self, target, *args) -> None:
        control = self.ctx.Queue()
        process = self.ctx.Process(
            target=worker_main,
            args=(target, len(self.processes), control, self.results, *args),
            daemon=True,
        )
        process.start()
        self.controls.append(control)
        self.processes.append(process)

    def gather(self, kind: str, timeout: float, alive=lambda: None) -> list:
        """One ``kind`` message from every worker, in worker order; raise on an error.

        ``alive`` is called twice a second and raises when something the workers need
        (the broker, the gateway) is gone.
        """
        got: dict[int, object] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self.processes):
            try:
                what, wid, value = self.results.get(timeout=0.5)
            except queue.Empty:
                alive()
                gone = [
                    i for i, p in enumerate(self.processes) if i not in got and not p.is_alive()
                ]
                if gone:
                    raise RuntimeError(f"load generator {gone[0]} ended without a result") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"workers not {kind} within {timeout:.0f} s") from None
                continue
            if what == "error":
                raise RuntimeError(f"load generator {wid} failed:\n{value}")
            if what != kind:
                raise RuntimeError(f"load generator {wid}: expected {kind}, got {what}")
            got[wid] = value
        return [got[i] for i in range(len(self.processes))]

    def go(self, *args) -> None:
        for control in self.controls:
            control.put(("go", *args))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, exc_type, *_: object) -> None:
        """Let finished workers exit; on an error or Ctrl-C, end them at once."""
        for process in self.processes:
            if exc_type is None:
                process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


class Gateway:
    """``didgw run`` as a user runs it, its output in a log file."""

    def __init__(self, state: Path, config: Path, password: str, log: Path) -> None:
        self.state, self.config, self.password, self.log = state, config, password, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        env = {
            **os.environ,
            "DIDGW_STATE_DIR": str(self.state),
            "DIDGW_CONFIG": str(self.config),
            "DIDGW_MQTT_PASSWORD": self.password,
            "PYTHONUNBUFFERED": "1",
        }
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [DIDGW, "run"], stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
            )
        deadline = time.monotonic() + timeout
        while " running (state " not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"didgw run did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> int | None:
        """SIGTERM (as systemd stops it), SIGKILL after 30 s; then any of its processes left."""
        if self.process is None:
            return None
        helpers = children(self.process.pid)[1:]
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pid in helpers:
            with contextlib.suppress(OSError):
                if running(pid) and os.getsid(pid) == os.getsid(0):  # still one of ours
                    os.kill(pid, signal.SIGKILL)
        return self.process.returncode


def register_all(state: Path, config: Path, identities: list) -> float:
    """Register every DID through the library, before the gateway runs; returns devices/s."""
    from gateway.config import load_config
    from gateway.service import open_gateway

    start = time.perf_counter()
    with open_gateway(load_config(config), state) as gateway:
        for i, identity in enumerate(identities):
            gateway.registry.register(
                identity.did, name=f"bench {i}", kind="sensor", actor="bench", now=time.time()
            )
    return len(identities) / (time.perf_counter() - start)


def gateway_did_of(state: Path, config: Path) -> str:
    from gateway.config import load_config
    from gateway.service import open_gateway

    with open_gateway(load_config(config), state) as gateway:
        return gateway.did


def bench_raw(broker, payload: bytes, s: dict, ca_file: str = "") -> tuple[float, dict]:
    """The broker alone: plain, or on its TLS listener when ``ca_file`` is given."""
    conn = {
        "host": broker.host,
        "port": broker.tls_port if ca_file else broker.port,
        "ca_file": ca_file,
        "username": broker.gateway_username,  # allowed everything under the prefix
        "password": broker.gateway_password,
        "topic": f"{broker.prefix}/bench/raw",
        "payload": payload,
        "nodelay": s["tcp_nodelay"],
    }
    with Workers() as workers:
        workers.start(raw_subscriber, conn)
        workers.start(raw_publisher, conn)
        workers.gather("ready", 60)
        start = time.monotonic() + 0.3
        sub_pid, pub_pid = workers.pids
        meter = CpuMeter(
            {"mosquitto": [broker.pid], "subscriber": [sub_pid], "publisher": [pub_pid]}
        )
        workers.go(start, start + s["raw_seconds"])
        sub, pub = workers.gather("done", s["raw_seconds"] + 30)
        cpu = meter.stop()
    counted = [t for t in sub["times"] if t >= start + s["warmup"]]
    rate = len(counted) / (s["raw_seconds"] - s["warmup"])
    return rate, {"sent": pub["sent"], "received": sub["received"], "cpu_pct": cpu}


def bench_auth(conn: dict, pids: dict, keys: list[bytes], s: dict, alive) -> tuple[float, dict]:
    with Workers() as workers:
        for i in range(s["workers"]):
            workers.start(auth_worker, conn, keys[i :: s["workers"]], 120)
        workers.gather("ready", 120, alive)
        start = time.monotonic() + 0.3
        meter = CpuMeter({**pids, "load generators": workers.pids}, detail=pids["gateway"][0])
        workers.go(start)
        outcomes = [o for part in workers.gather("done", 180, alive) for o in part]
        cpu = meter.stop()
    ok = [o for o in outcomes if o["error"] is None and o["end"] is not None]
    errors = Counter(o["error"] or "no answer" for o in outcomes if o not in ok)
    elapsed = max(o["end"] for o in ok) - min(o["hello"] for o in outcomes) if ok else math.inf
    latency = [o["end"] - o["hello"] for o in ok]
    return len(ok) / elapsed, {
        "devices": len(keys),
        "granted": len(ok),
        "errors": dict(errors),
        "seconds": round(elapsed, 3),
        "p50_ms": round(percentile(latency, 50) * 1000, 1),
        "max_ms": round(max(latency, default=math.nan) * 1000, 1),
        "cpu_pct": cpu,
    }


def bench_readings(conn: dict, pids: dict, keys: list[bytes], s: dict, alive) -> dict:
    """The throughput phase, then the paced phase, with the same authenticated devices."""
    n = len(keys)
    every = s["workers"]
    slices = [part for part in (list(range(n))[i::every] for i in range(every)) if part]
    with Workers() as workers:
        for indices in slices:
            plan = {
                "keys": [keys[i] for i in indices],
                "burst_per_device": s["burst_per_device"],
                "paced_per_device": s["paced_per_device"],
                "window": s["window"],
            }
            workers.start(readings_worker, conn, plan)
        workers.gather("ready", 180, alive)  # authenticated, connected, readings signed
        start = time.monotonic() + 0.3
        deadline = start + s["burst_seconds"]
        meter = CpuMeter({**pids, "load generators": workers.pids}, detail=pids["gateway"][0])
        workers.go(start, deadline)
        workers.gather("ready", s["burst_seconds"] + 60, alive)
        cpu = meter.stop()
        paced_start, first = time.monotonic() + 0.5, 0
        for control, indices in zip(workers.controls, slices, strict=True):
            control.put(("go", paced_start, s["rate"], first, n))
            first += len(indices)
        results = workers.gather("done", s["paced_per_device"] * n / s["rate"] + 90, alive)
    ack_times = sorted(t for r in results for t in r["burst"]["ack_times"])
    end = min(deadline, ack_times[-1]) if ack_times else deadline
    counted = [t for t in ack_times if start + s["warmup"] <= t <= end]
    sent = sorted(t for r in results for t in r["paced_sent"])
    return {
        "rate": len(counted) / max(end - start - s["warmup"], 1e-9),
        "accepted": len(ack_times),
        "counted": len(counted),
        "seconds": round(end - start - s["warmup"], 2),
        "cpu_pct": cpu,
        "latencies_ms": [t * 1000 for r in results for t in r["paced_latencies"]],
        "offered": (len(sent) - 1) / (sent[-1] - sent[0]) if len(sent) > 1 else 0.0,
        "paced_sent": len(sent),
        "paced_lost": sum(r["paced_lost"] for r in results),
        "refused": dict(sum((r["refused"] for r in results), Counter())),
    }


def bench_tls(broker, payload: bytes, conn: dict, pids: dict, keys: list, s: dict, alive) -> dict:  # noqa: PLR0917
    """The broker alone and the gateway with every client on the TLS listener."""
    ca_file = str(Path(broker.tls_files[0]).with_name("ca.crt"))
    raw, raw_stats = bench_raw(broker, payload, s, ca_file)
    print(f"broker alone over TLS, same clients: {raw:,.0f} messages/s")
    print(f"  CPU, % of one core: {cpu_text(raw_stats['cpu_pct'])}")
    readings = bench_readings(
        # the private broker's one TLS listener serves authentication and accounts alike
        {**conn, "port": broker.tls_port, "accounts_port": broker.tls_port, "ca_file": ca_file},
        pids,
        keys,
        s,
        alive,
    )
    print("devices over TLS:")
    report_readings(s, readings)
    return {"raw_tls": raw, "readings_tls": readings}


def prepare(broker, s: dict, tmp: Path) -> tuple[Path, Path, list]:
    """The gateway's state (``didgw init``; with TLS, the broker's certificate from its CA),
    its config, and the devices' keys."""
    state, config = tmp / "state", tmp / "gateway.toml"
    config.write_text(
        "[mqtt]\n"
        + broker.gateway_settings()
        + ("" if s["verify_workers"] is None else f"verify_workers = {s['verify_workers']}\n")
    )
    subprocess.run(
        [DIDGW, "init", "--state-dir", str(state)], check=True, capture_output=True, timeout=60
    )
    if s.get("tls"):  # bench/soak.py prepares without
        issue = [DIDGW, "tls", "issue", "--ip", broker.host, "--state-dir", str(state)]
        subprocess.run(issue, check=True, capture_output=True, timeout=60)
    return state, config, [Ed25519PrivateKey.generate() for _ in range(s["registered"])]


def private_broker(s: dict, tmp: Path):
    """The broker, with a TLS listener whose files prepare() has ``didgw tls issue`` write."""
    missing = brokers.missing_tools()
    if missing:
        raise SystemExit(f"{missing}: run scripts/setup.sh")
    certs = tmp / "state" / "tls"
    return brokers.PrivateBroker(
        tmp / "mosquitto",
        tcp_nodelay=s["tcp_nodelay"],
        tls_files=(certs / "broker.crt", certs / "broker.key") if s["tls"] else None,
    )


def run(s: dict, tmp: Path) -> dict:
    broker = private_broker(s, tmp)
    gateway: Gateway | None = None
    out: dict = {}
    try:
        state, config, private_keys = prepare(broker, s, tmp)
        broker.setup()
        identities = [dev.Identity.from_key(k) for k in private_keys]
        keys = [k.private_bytes_raw() for k in private_keys]
        now_ms = int(time.time() * 1000)
        payload = dev.make_reading(
            identities[0], seq=1, ts_ms=now_ms, reading_type="energy", values=VALUES
        ).encode()
        out["payload_bytes"] = len(payload)
        print(f"payload: a signed reading (compact JWS) of {len(payload)} bytes")

        out["raw"], raw = bench_raw(broker, payload, s)
        print(f"broker alone, QoS 1, 1 publisher → 1 subscriber: {out['raw']:,.0f} messages/s")
        print(f"  CPU, % of one core: {cpu_text(raw['cpu_pct'])}")

        rate = register_all(state, config, identities)
        print(f"registered {s['registered']:,} devices through the library ({rate:,.0f}/s)")
        gateway = Gateway(state, config, broker.gateway_password, tmp / "gateway.log")
        started = time.monotonic()
        gateway.start()
        time.sleep(1.0)  # its verification processes finish starting
        memories = {"after start": memory(gateway.pid)}
        print(f"didgw run up in {time.monotonic() - started:.1f} s")

        conn = {
            "host": broker.host,
            "port": broker.port,
            "accounts_port": broker.accounts_port,
            "prefix": broker.prefix,
            "gateway_did": gateway_did_of(state, config),
            "nodelay": s["tcp_nodelay"],
        }
        pids = {"gateway": [gateway.pid], "mosquitto": [broker.pid]}

        def alive() -> None:
            for name, pid in (("didgw run", gateway.pid), ("mosquitto", broker.pid)):
                if not running(pid):
                    raise RuntimeError(f"{name} is gone")

        auth_keys = keys[s["devices"] : s["devices"] + s["auth_devices"]]
        out["auth"], auth = bench_auth(conn, pids, auth_keys, s, alive)
        memories["after authentications"] = memory(gateway.pid)
        report_auth(out["auth"], auth)

        readings = bench_readings(conn, pids, keys[: s["devices"]], s, alive)
        memories["after readings"] = memory(gateway.pid)
        report_readings(s, readings)
        if s["tls"]:
            tls_keys = keys[-s["devices"] :]  # devices of their own: every reading new
            out.update(bench_tls(broker, payload, conn, pids, tls_keys, s, alive))
        out["rss"] = {k: v[0] for k, v in memories.items()}
        out["pss_tree"] = {k: v[1] for k, v in memories.items()}
        print(
            f"gateway memory with {s['registered']:,} devices registered, MB: "
            + "; ".join(f"{k} RSS {v[0]:.1f} (all its processes: PSS {v[1]:.1f})"
                        for k, v in memories.items())
        )  # fmt: skip
    finally:
        code = gateway.stop() if gateway is not None else None
        broker.stop()
    log = (tmp / "gateway.log").read_text(errors="replace").splitlines()
    out["log_warnings"] = sum(" WARNING " in line or " ERROR " in line for line in log)
    if code not in (0, None) or out["log_warnings"]:
        print(f"didgw run exited with status {code}; the end of its log:")
        print("\n".join(f"  {line}" for line in log[-10:]))
    return result(s, out, raw, auth, readings)


def report_auth(rate: float, auth: dict) -> None:
    print(
        f"authentications: {rate:,.0f}/s ({auth['granted']:,} of {auth['devices']:,} "
        f"granted in {auth['seconds']} s; hello → grant p50 {auth['p50_ms']} ms, "
        f"max {auth['max_ms']} ms)"
    )
    print(f"  CPU, % of one core: {cpu_text(auth['cpu_pct'])}")
    if auth["errors"]:
        print(f"  authentication errors: {auth['errors']}")


def report_readings(s: dict, readings: dict) -> None:
    p50, p99 = (percentile(readings["latencies_ms"], p) for p in (50, 99))
    print(
        f"gateway, {s['devices']} devices, window {s['window']} each: "
        f"{readings['rate']:,.0f} accepted readings/s "
        f"({readings['counted']:,} acks in {readings['seconds']} s after {s['warmup']} s warm-up)"
    )
    print(f"  CPU, % of one core: {cpu_text(readings['cpu_pct'])}")
    print(
        f"paced at {s['rate']:,}/s (offered {readings['offered']:,.0f}/s, "
        f"{readings['paced_sent']:,} readings): publish → ack p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms, unacknowledged {readings['paced_lost']}"
    )
    if readings["refused"]:
        print(f"  refused readings: {readings['refused']}")


def tls_result(out: dict, readings: dict) -> dict:
    """The TLS figures beside the plain ones (empty with ``--no-tls``)."""
    if "raw_tls" not in out:
        return {}
    tls = out["readings_tls"]
    return {
        "raw_tls_qos1_per_s": round(out["raw_tls"]),
        "gateway_tls_per_s": round(tls["rate"]),
        "tls_vs_plain_gateway": round(tls["rate"] / readings["rate"], 3),
        "p99_ack_ms_at_1000_tls": round(percentile(tls["latencies_ms"], 99), 1),
        "p50_ack_ms_at_1000_tls": round(percentile(tls["latencies_ms"], 50), 1),
        "gateway_tls_cpu_pct": tls["cpu_pct"],
        "refused_tls": tls["refused"],
        "paced_unacknowledged_tls": tls["paced_lost"],
    }


def result(s: dict, out: dict, raw: dict, auth: dict, readings: dict) -> dict:
    latencies = readings["latencies_ms"]
    return {
        "bench": "ingest",
        "quick": s["quick"],
        "raw_qos1_per_s": round(out["raw"]),
        "gateway_per_s": round(readings["rate"]),
        "ratio": round(readings["rate"] / out["raw"], 3),
        "p99_ack_ms_at_1000": round(percentile(latencies, 99), 1),
        **tls_result(out, readings),
        "auth_per_s": round(out["auth"], 1),
        "rss_mb_10k_devices": round(max(out["rss"].values()), 1),
        "payload_bytes": out["payload_bytes"],
        "registered_devices": s["registered"],
        "raw_seconds": s["raw_seconds"] - s["warmup"],
        "raw_cpu_pct": raw["cpu_pct"],
        "reading_devices": s["devices"],
        "window_per_device": s["window"],
        "load_processes": s["workers"],
        "verify_workers": s["verify_workers"],
        "tcp_nodelay": s["tcp_nodelay"],
        "gateway_seconds": readings["seconds"],
        "gateway_counted": readings["counted"],
        "gateway_accepted": readings["accepted"],
        "gateway_cpu_pct": readings["cpu_pct"],
        "paced_rate": s["rate"],
        "paced_offered_per_s": round(readings["offered"]),
        "paced_readings": readings["paced_sent"],
        "paced_unacknowledged": readings["paced_lost"],
        "p50_ack_ms_at_1000": round(percentile(latencies, 50), 1),
        "refused": readings["refused"],
        "auth_devices": auth["devices"],
        "auth_granted": auth["granted"],
        "auth_seconds": auth["seconds"],
        "auth_p50_ms": auth["p50_ms"],
        "auth_cpu_pct": auth["cpu_pct"],
        "rss_mb": {k: round(v, 1) for k, v in out["rss"].items()},
        "pss_mb_all_processes": {k: round(v, 1) for k, v in out["pss_tree"].items()},
        "gateway_log_warnings": out["log_warnings"],
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, under a minute")
    parser.add_argument("--devices", type=int, default=20, help="devices publishing readings")
    parser.add_argument("--workers", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--window", type=int, default=250, help="readings awaiting an ack per device"
    )
    parser.add_argument("--rate", type=int, default=1000, help="paced load, readings/s in all")
    parser.add_argument("--registered", type=int, default=10_000, help="devices in the registry")
    parser.add_argument(
        "--verify-workers",
        type=int,
        help="the gateway's [mqtt] verify_workers (default: the gateway's own default)",
    )
    parser.add_argument(
        "--no-tls",
        dest="tls",
        action="store_false",
        help="skip the phases with the clients on the broker's TLS listener",
    )
    parser.add_argument(
        "--nagle",
        action="store_true",
        help="leave Nagle's algorithm on in the broker and the load generators",
    )
    args = parser.parse_args()
    quick = args.quick
    s = {
        **vars(args),
        "tcp_nodelay": not args.nagle,
        "raw_seconds": 3.0 if quick else 10.0,
        "warmup": 0.5 if quick else 1.0,
        "auth_devices": 200 if quick else 1000,
        "burst_seconds": 5.0 if quick else 20.0,
        # enough for the time above at 5,000/s; the phase ends at whichever comes first
        "burst_per_device": (25_000 if quick else 100_000) // args.devices,
        "paced_per_device": math.ceil(args.rate * (3 if quick else 10) / args.devices),
    }
    if not 1 <= args.window <= WINDOW:
        parser.error(f"--window must be between 1 and {WINDOW}")
    needed = args.devices * (2 if args.tls else 1) + s["auth_devices"]
    if args.registered < needed:
        parser.error(f"--registered must be at least {needed}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up as on Ctrl-C
    try:
        with tempfile.TemporaryDirectory(dir=os.environ.get("DIDGW_BENCH_DIR")) as tmp:
            summary = run(s, Path(tmp))
    except KeyboardInterrupt:
        print("interrupted; the broker and the gateway were stopped", file=sys.stderr)
        sys.exit(130)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

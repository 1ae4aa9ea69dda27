"""mosquitto's didgw plugin: token connections per second, and what they cost the routing.

    python bench/broker_tokens.py [--quick] [--clients N] [--accept N] [--deny N]

A private mosquitto 2.0 with the didgw plugin before dynamic security (gateway/ops/broker.py),
driven over raw sockets (MQTT 3.1.1 packets written here: no client library, no thread per
client, so that the load generator stays cheap):

* ``connects_per_s``: ``--clients`` (2,000) devices connect to the accounts listener with
  their tokens, 100 CONNECTs in flight at a time, and stay connected; the rate at which
  CONNACKs come back (every one must accept). Tokens are minted beforehand
  (``mint_per_s`` says what minting costs the gateway).
* ``stall_ms_max``: while a stream of 1,000 messages/s runs through the broker (the
  gateway's account publishing, another of its connections subscribed; each message
  carries its send time, the stream runs in a process of its own), ``--accept`` (1,000)
  more tokens are accepted (``stall_ms_accept``) and then ``--deny`` (100) connected DIDs
  are listed in the deny file, which kicks them (``stall_ms_deny``; ``deny_to_disconnect_ms``:
  from the file's rename to the last of them seeing its connection closed); each is the longest
  delivery latency of the stream from 0.2 s before the action to 0.5 s after it. To
  compare: the same stream while nothing happens (``stall_ms_idle``), while as many
  anonymous clients connect the same way (``stall_ms_same_connects_anonymous``: what the
  connections cost mosquitto without any token), and while dynamic security, holding
  ``--dynsec-accounts`` (1,000) accounts, creates and deletes 20 accounts the way the
  gateway does today (``stall_ms_dynsec``). The phases run in alternation, twice.
  ``--window``: CONNECTs in flight at once (100): mosquitto handles every connection that
  is ready in one pass of its loop, so a burst of N token logins delays routing by N
  token checks (an HMAC each).

The last line is one JSON object.
"""

from __future__ import annotations

import os
import sys

# bench/http.py has the name of the standard library's http package: take this folder off
# the path before anything imports http.client.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

import argparse
import array
import contextlib
import functools
import gc
import json
import multiprocessing
import secrets
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from gateway.auth import broker_tokens as bt
from gateway.ops.broker import PrivateBroker
from gateway.transports.dynsec import DynsecAdmin

PREFIX = "didgw"
STREAM = f"{PREFIX}/bench/stream"


# -- MQTT 3.1.1 packets ---------------------------------------------------------------


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def _packet(kind: int, body: bytes) -> bytes:
    length, encoded = len(body), bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            return bytes([kind]) + bytes(encoded) + body


def connect_packet(client_id: str, username: str, password: str) -> bytes:
    """A CONNECT with a username and password; anonymous with an empty username."""
    flags = 0xC2 if username else 0x02
    header = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", 60)
    login = _string(username) + _string(password) if username else b""
    return _packet(0x10, header + _string(client_id) + login)


def subscribe_packet(topic: str) -> bytes:
    return _packet(0x82, struct.pack("!H", 1) + _string(topic) + b"\x00")


def publish_packet(topic: str, payload: bytes) -> bytes:
    return _packet(0x30, _string(topic) + payload)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def read_packet(sock: socket.socket) -> tuple[int, bytes]:
    kind = recv_exact(sock, 1)[0]
    length, shift = 0, 0
    while True:
        byte = recv_exact(sock, 1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return kind, recv_exact(sock, length)


def open_client(host: str, port: int, username: str, password: str) -> socket.socket:
    """A connection for the probe stream. TCP_NODELAY, as the gateway and the broker set it:
    without it Nagle's algorithm holds each small message until the broker's delayed ACK
    of the one before (up to 40 ms), and the probe would measure its own socket."""
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(f"didgw-bench-{secrets.token_hex(8)}", username, password))
    kind, body = read_packet(sock)
    assert kind == 0x20 and body[1] == 0, f"refused: {body!r}"
    return sock


# -- token connections --------------------------------------------------------------------


def connect_many(
    host: str, port: int, creds: list[tuple[str, str]], window: int = 100
) -> tuple[list[socket.socket], float]:
    """Connect every (did, token), ``window`` CONNECTs in flight; all must be accepted."""
    socks: list[socket.socket] = []
    start = time.perf_counter()
    for i in range(0, len(creds), window):
        batch = []
        for did, token in creds[i : i + window]:
            sock = socket.create_connection((host, port))
            sock.sendall(connect_packet(f"didgw-b{secrets.token_hex(6)}", did, token))
            batch.append(sock)
        for sock in batch:
            kind, body = read_packet(sock)
            assert kind == 0x20 and body[1] == 0, f"token refused: {body!r}"
        socks.extend(batch)
    return socks, time.perf_counter() - start


# -- the stream ----------------------------------------------------------------------------


class Stream:
    """1,000 messages/s from one gateway connection to another; records each latency."""

    def __init__(self, host: str, port: int, username: str, password: str) -> None:
        self.sub = open_client(host, port, username, password)
        self.sub.sendall(subscribe_packet(STREAM))
        kind, _ = read_packet(self.sub)
        assert kind == 0x90
        self.pub = open_client(host, port, username, password)
        # Send and delivery times in flat arrays: no object per message, nothing for the
        # garbage collector to walk (a full collection over a list of tuples held the
        # receiving thread, and the GIL, for 5 ms at a time: the probe measured itself).
        self._sent, self._delivered = array.array("q"), array.array("q")
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._send, self._recv)]

    @property
    def latencies(self) -> list[tuple[int, float]]:
        """(sent ns, latency ms) of every message delivered."""
        return [(t, (d - t) / 1e6) for t, d in zip(self._sent, self._delivered, strict=True)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._threads[0].join()
        self.pub.close()
        # shutdown() wakes the receiving thread's blocked recv(); close() alone may not.
        with contextlib.suppress(OSError):
            self.sub.shutdown(socket.SHUT_RDWR)
        self._threads[1].join()
        self.sub.close()

    def _send(self) -> None:
        next_at = time.perf_counter()
        while not self._stop.is_set():
            self.pub.sendall(publish_packet(STREAM, struct.pack("!q", time.monotonic_ns())))
            next_at += 0.001
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    def _recv(self) -> None:
        try:
            while True:
                kind, body = read_packet(self.sub)
                if kind >> 4 == 3:
                    (sent,) = struct.unpack("!q", body[-8:])
                    self._delivered.append(time.monotonic_ns())
                    self._sent.append(sent)
        except (ConnectionError, OSError):
            return


def run_stream(host: str, port: int, username: str, password: str, conn: Connection) -> None:
    """The stream in a process of its own (the load generator's GIL must not be measured):
    runs until told to stop, then sends back every (sent ns, latency ms). The collector is
    off meanwhile: the probe allocates nothing that lives, and a collection would stop it."""
    gc.disable()
    stream = Stream(host, port, username, password)
    stream.start()
    conn.send("ready")
    conn.recv()
    stream.stop()
    conn.send(stream.latencies)


def worst_between(latencies: list[tuple[int, float]], start_ns: int, end_ns: int) -> float:
    window = [lat for sent, lat in latencies if start_ns <= sent <= end_ns]
    return max(window) if window else float("nan")


class Bench:
    """One broker with the plugin; the phases of the measurement are its methods."""

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.args = args
        self.key = secrets.token_bytes(bt.KEY_BYTES)
        key_file, self.deny_file = root / "token.key", root / "deny"
        key_file.write_bytes(self.key)
        key_file.chmod(0o600)
        self.deny_file.write_text("")
        self.broker = PrivateBroker(root / "mosquitto", token_plugin=(key_file, self.deny_file))
        self.socks: list[socket.socket] = []
        self.windows: dict[str, list[tuple[int, int]]] = {}
        self.cut_off_ms: list[float] = []

    def creds(self, n: int) -> list[tuple[str, str]]:
        now, out = int(time.time()), []
        for _ in range(n):
            did = f"did:example:{secrets.token_hex(8)}"
            token = bt.mint(
                self.key,
                sub=did,
                kind="device",
                prefix=PREFIX,
                now=now,
                lifetime=3600,
                random_bytes=secrets.token_bytes(16),
            )
            out.append((did, token))
        return out

    def fill_dynsec(self, admin: DynsecAdmin) -> None:
        """Dynamic security with the accounts of a fleet: its file, which it rewrites on
        every change, holds that many."""
        total = self.args.dynsec_accounts
        for i in range(0, total, 100):
            admin.execute(
                [
                    {
                        "command": "createClient",
                        "username": f"fleet-{j}",
                        "password": secrets.token_urlsafe(16),
                    }
                    for j in range(i, min(i + 100, total))
                ]
            )

    def window(self, name: str, action: Callable[[], object]) -> None:
        """Run ``action()``; its window runs from 0.2 s before to 0.5 s after it."""
        start = time.monotonic_ns()
        time.sleep(0.2)
        action()
        time.sleep(0.5)
        self.windows.setdefault(name, []).append((start, time.monotonic_ns()))

    def accept(self, arrivals: list[tuple[str, str]]) -> None:
        more, _ = connect_many(
            self.broker.host, self.broker.accounts_port, arrivals, window=self.args.window
        )
        self.socks.extend(more)

    def anonymous(self, n: int) -> None:
        crowd = [("", "")] * n
        more, _ = connect_many(self.broker.host, self.broker.port, crowd, window=self.args.window)
        for sock in more:
            sock.close()

    def revoke(self, dids: list[str], socks: list[socket.socket]) -> None:
        """Deny ``dids`` (connected on ``socks``); record when the last one was cut off."""
        for sock in socks:  # each is still connected: nothing to read, no end of file
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                assert sock.recv(1) != b"", "a connection closed before its DID was denied"
            sock.setblocking(True)
        until = int(time.time()) + 3600
        new = self.deny_file.with_suffix(".new")
        new.write_text(bt.deny_file_text(dict.fromkeys(dids, until)))
        os.replace(new, self.deny_file)
        renamed = time.perf_counter()
        for sock in socks:
            sock.settimeout(5.0)
            try:
                while sock.recv(4096):
                    pass
            except OSError:
                pass  # reset or timed out: the time tells
        self.cut_off_ms.append(round((time.perf_counter() - renamed) * 1000, 1))

    def dynsec_changes(self, admin: DynsecAdmin) -> None:
        """What the gateway does today per session: an account created, later deleted."""
        names = [f"bench-{secrets.token_hex(6)}" for _ in range(20)]
        for name in names:
            password = secrets.token_urlsafe(16)
            admin.execute([{"command": "createClient", "username": name, "password": password}])
        for name in names:
            admin.execute([{"command": "deleteClient", "username": name}])

    def run(self) -> dict[str, object]:
        args, broker = self.args, self.broker
        broker.setup()
        # paho's loop uses select(), which takes no file descriptor above 1,023: the
        # dynamic-security client connects before the fleet's sockets are open.
        with broker.admin() as admin:
            self.fill_dynsec(admin)
            started = time.perf_counter()
            fleet = self.creds(args.clients)
            mint_per_s = args.clients / (time.perf_counter() - started)
            self.socks, took = connect_many(
                broker.host, broker.accounts_port, fleet, window=args.window
            )
            ours, theirs = multiprocessing.Pipe()
            streamer = multiprocessing.get_context("fork").Process(
                target=run_stream,
                args=(broker.host, broker.port, broker.gateway_username, broker.gateway_password),
                kwargs={"conn": theirs},
            )
            streamer.start()
            assert ours.recv() == "ready"
            time.sleep(0.5)
            for round_ in range(2):
                arrivals = self.creds(args.accept)  # minted before the window
                first = round_ * args.deny
                denied = [did for did, _ in fleet[first : first + args.deny]]
                cut = self.socks[first : first + args.deny]
                self.window("idle", lambda: time.sleep(1.0))
                self.window("accept", functools.partial(self.accept, arrivals))
                self.window("anonymous", lambda: self.anonymous(args.accept))
                self.window("deny", functools.partial(self.revoke, denied, cut))
                self.window("dynsec", lambda: self.dynsec_changes(admin))
            ours.send("stop")
            latencies = ours.recv()
            streamer.join()
        for sock in self.socks:
            sock.close()

        def worst(name: str) -> list[float]:
            return [round(worst_between(latencies, a, b), 1) for a, b in self.windows[name]]

        return {
            "clients": args.clients,
            "mint_per_s": round(mint_per_s),
            "connects_per_s": round(args.clients / took),
            "connect_window": args.window,
            "accepted_during_stream": args.accept,
            "denied_during_stream": args.deny,
            "dynsec_accounts": args.dynsec_accounts,
            "stall_ms_idle": worst("idle"),
            "stall_ms_accept": worst("accept"),
            "stall_ms_same_connects_anonymous": worst("anonymous"),
            "stall_ms_deny": worst("deny"),
            "deny_to_disconnect_ms": self.cut_off_ms,
            "stall_ms_dynsec": worst("dynsec"),
            "stall_ms_max": max(worst("accept") + worst("deny")),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--accept", type=int, default=1000)
    parser.add_argument("--deny", type=int, default=100)
    parser.add_argument("--window", type=int, default=100, help="CONNECTs in flight")
    parser.add_argument("--dynsec-accounts", type=int, default=1000)
    args = parser.parse_args()
    if args.quick:
        args.clients, args.accept = min(args.clients, 500), min(args.accept, 300)
        args.dynsec_accounts = min(args.dynsec_accounts, 100)
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), args)
        try:
            result = bench.run()
        finally:
            bench.broker.stop()
    result["load_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

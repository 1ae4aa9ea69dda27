"""``didgw run`` serving CoAP (MQTT off) for the integration tests, and raw CoAP datagrams.

The gateway's output is read continuously by a thread (a gateway that logs a lot
never blocks on a full pipe), so tests can look for a line, or for the absence of
one, at any time. The ``gateway`` fixture is in test_coap_devices.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


class CoapGateway:
    def __init__(self, state: Path, config: Path, port: int) -> None:
        self.state, self.config, self.port = state, config, port
        self.process: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None
        self._peers: list[Peer] = []

    @property
    def uri(self) -> str:
        return f"coap://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        """Everything the gateway printed so far."""
        return "".join(self._lines)

    def start(self) -> None:
        env = {
            **os.environ,
            "DIDGW_STATE_DIR": str(self.state),
            "DIDGW_CONFIG": str(self.config),
            "PYTHONUNBUFFERED": "1",
        }
        self._lines = []
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("didgw")), "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        stdout = self.process.stdout
        assert stdout is not None
        self._reader = threading.Thread(target=lambda: self._lines.extend(stdout), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 30
        while " running (state " not in self.output:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._close()
                raise AssertionError(f"the gateway did not start:\n{self.output}")
            time.sleep(0.05)

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self._close()
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close()

    def memory_kb(self) -> int:
        """The gateway's resident memory (VmRSS), in kB."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS for {self.process.pid}")

    def peer(self, address: str = "127.0.0.1") -> Peer:
        """A new :class:`Peer` of this gateway on ``address`` (closed with the gateway)."""
        peer = Peer(self.port, address)
        self._peers.append(peer)
        return peer

    def _close(self) -> None:
        for peer in self._peers:
            peer.close()
        self._peers = []
        if self._reader is not None:
            self._reader.join(5)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


def write_config(path: Path, port: int, *, extra: str = "", **coap: Any) -> Path:
    """A config serving CoAP on ``port`` (MQTT off); ``coap`` are more [coap] keys, ``extra``
    more sections (TOML text)."""
    keys = "".join(f"{k} = {v}\n" for k, v in coap.items())
    head = f"[mqtt]\nenabled = false\n[coap]\nenabled = true\nport = {port}\n"
    path.write_text(head + keys + extra)
    return path


class Peer:
    """A CoAP client socket on its own loopback address (127.0.0.0/8 is all loopback on
    Linux), sending hand-made datagrams and returning the answers as (code, payload,
    options) — for what no well-behaved client library would send."""

    def __init__(self, port: int, address: str = "127.0.0.1") -> None:
        self.server = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.sock.settimeout(10)
        self._mid = 0
        self.sent = 0  # the size of the last datagram sent

    def request(self, datagram: bytes) -> tuple[str, bytes, Any, int]:
        """Send one datagram; (code as "4.08", payload, the aiocoap options, datagram size)."""
        self.sent = len(datagram)
        self.sock.sendto(datagram, self.server)
        answer = self.sock.recv(4096)
        from aiocoap import Message

        message = Message.decode(answer)
        code = int(message.code)
        return f"{code >> 5}.{code & 31:02d}", bytes(message.payload), message.opt, len(answer)

    def send(self, path: tuple[str, ...], *, method: str = "POST", payload: bytes = b"",
             block1: tuple[int, bool, int] | None = None,
             block2: tuple[int, bool, int] | None = None,
             token: bytes = b"") -> tuple[str, bytes, Any, int]:  # fmt: skip
        """A confirmable request with a fresh message ID; Block1/Block2 as (num, more, szx)."""
        from aiocoap import CON, Code, Message
        from aiocoap.optiontypes import BlockOption

        self._mid = (self._mid + 1) % 65536
        message = Message(code=getattr(Code, method), payload=payload, uri_path=path)
        message.mtype, message.mid, message.token = CON, self._mid, token
        if block1 is not None:
            message.opt.block1 = BlockOption.BlockwiseTuple(*block1)
        if block2 is not None:
            message.opt.block2 = BlockOption.BlockwiseTuple(*block2)
        return self.request(message.encode())

    def close(self) -> None:
        self.sock.close()

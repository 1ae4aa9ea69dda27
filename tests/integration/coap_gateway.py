"""``didgw run`` serving CoAP (MQTT off) for the integration tests, and raw CoAP datagrams.

The process is :class:`GatewayProcess` (its output read continuously, so a gateway that
logs a lot never blocks on a full pipe); this adds the CoAP port and raw peers. The
``gateway`` fixture is in test_coap_devices.py.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from gateway_process import GatewayProcess


class CoapGateway(GatewayProcess):
    """The gateway with MQTT off, serving CoAP on ``port``, and raw peers of it."""

    def __init__(self, state: Path, config: Path, port: int) -> None:
        super().__init__(state, None, config)
        self.port = port
        self._peers: list[Peer] = []

    @property
    def uri(self) -> str:
        return f"coap://127.0.0.1:{self.port}"

    def peer(self, address: str = "127.0.0.1") -> Peer:
        """A new :class:`Peer` of this gateway on ``address`` (closed with the gateway)."""
        peer = Peer(self.port, address)
        self._peers.append(peer)
        return peer

    def _close(self) -> None:
        for peer in self._peers:
            peer.close()
        self._peers = []
        super()._close()


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

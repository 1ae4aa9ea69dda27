"""The tests' broker (the gateway's own private-broker launcher) and MQTT test peers.

:class:`Mosquitto` is :class:`gateway.ops.broker.PrivateBroker` (the demo's and the
benchmarks' launcher too) with the gateway's account named ``gateway`` and a way to
make MQTT peers of it.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from gateway.auth import broker_tokens
from gateway.ops.broker import PrivateBroker, free_port, missing_tools

__all__ = ["Mosquitto", "Peer", "free_port", "missing_tools"]


class Mosquitto(PrivateBroker):
    """A private broker in ``directory``, with MQTT peers for tests."""

    def __init__(
        self,
        directory: Path,
        tls_files: tuple[Path, Path] | None = None,
        token_plugin: tuple[Path, Path] | None = None,
    ) -> None:
        super().__init__(
            directory, gateway_username="gateway", tls_files=tls_files, token_plugin=token_plugin
        )

    def peer(self, username: str | None = None, password: str | None = None) -> Peer:
        """An MQTT client of this broker (not yet connected), anonymous without a username."""
        return Peer(self.host, self.port, username, password)

    def account_peer(self, username: str, password: str) -> Peer:
        """A client of the accounts listener (its client id becomes its username)."""
        return Peer(self.host, self.accounts_port, username, password)

    def gateway(self) -> Peer:
        return self.peer(self.gateway_username, self.gateway_password)

    def token(self, did: str, kind: str = "device", lifetime: int = 600) -> str:
        """A session token for ``did``, as a gateway of this broker seals one (for tests
        with no gateway): the first call puts a key of its own in :attr:`token_dir`."""
        if not hasattr(self, "_token_key"):
            self._token_key = secrets.token_bytes(broker_tokens.KEY_BYTES)
            self.token_dir.mkdir(parents=True, exist_ok=True)
            key_file = self.token_dir / "token.key"
            key_file.write_bytes(self._token_key)
            key_file.chmod(0o600)
            if not (self.token_dir / "deny").exists():
                (self.token_dir / "deny").write_text("")
        return broker_tokens.mint(
            self._token_key,
            sub=did,
            kind=kind,
            prefix=self.prefix,
            now=int(time.time()),
            lifetime=lifetime,
            random_bytes=secrets.token_bytes(broker_tokens.JTI_BYTES),
        )


class Peer:
    """A paho MQTT v5 client with blocking calls and bounded waits, for tests.

    Every wait has a deadline; messages land in :attr:`messages` as ``(topic, payload)``.
    """

    def __init__(
        self, host: str, port: int, username: str | None = None, password: str | None = None
    ) -> None:
        self.host, self.port = host, port
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connack: ReasonCode | None = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self._answered = threading.Event()
        self._acks: dict[int, list[ReasonCode]] = {}
        self._acked = threading.Condition()
        self._running = False
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"didgw-test-{secrets.token_hex(16)}",
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,  # a peer the broker drops stays dropped
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe

    def connect(self, timeout: float = 5.0) -> ReasonCode:
        """Connect and return the CONNACK's reason code; a refused client is closed again."""
        self.client.connect(self.host, self.port, keepalive=30, clean_start=True)
        self.client.loop_start()
        self._running = True
        assert self._answered.wait(timeout), "no CONNACK"
        assert self.connack is not None
        if self.connack.is_failure:
            self.close()
        return self.connack

    def close(self) -> None:
        if self._running:
            self._running = False
            self.client.disconnect()
            self.client.loop_stop()
            self.client.reinitialise()  # closes the socket pair loop_start() opened

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def subscribe(self, topic: str, timeout: float = 5.0) -> ReasonCode:
        """Subscribe at QoS 1 and return the SUBACK's reason code."""
        _, mid = self.client.subscribe(topic, qos=1)
        (code,) = self._wait_ack(mid, timeout)
        return code

    def publish(self, topic: str, payload: bytes | str, timeout: float = 5.0) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1)
        (code,) = self._wait_ack(info.mid, timeout)
        return code

    def next_message(self, timeout: float = 5.0) -> tuple[str, bytes]:
        return self.messages.get(timeout=timeout)

    def received_until(self, topic: str, payload: bytes, timeout: float = 5.0) -> list[str]:
        """Topics of everything received before the marker ``(topic, payload)`` arrived.

        mosquitto delivers in order; a marker sent after the action being tested comes
        after anything that action caused, so waiting for it bounds the wait exactly.
        """
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            got_topic, got_payload = self.messages.get(
                timeout=max(0.01, deadline - time.monotonic())
            )
            if (got_topic, got_payload) == (topic, payload):
                return seen
            seen.append(got_topic)

    def _wait_ack(self, mid: int, timeout: float) -> list[ReasonCode]:
        with self._acked:
            assert self._acked.wait_for(lambda: mid in self._acks, timeout), f"no ack for {mid}"
            return self._acks.pop(mid)

    # paho's thread

    def _on_connect(self, client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        self.connack = code
        if not code.is_failure:
            self.connected.set()
        self._answered.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        self.connected.clear()
        self.disconnected.set()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put((message.topic, message.payload))

    def _on_publish(self, client: Any, userdata: Any, mid: int, code: Any, props: Any) -> None:
        with self._acked:
            self._acks[mid] = [code]
            self._acked.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._acked:
            self._acks[mid] = list(codes)
            self._acked.notify_all()

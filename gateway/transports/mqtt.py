"""The gateway's MQTT connection: paho-mqtt on its own thread, messages handed to asyncio.

paho runs its network loop on a thread of its own (``loop_start``); nothing here
touches asyncio state from that thread except through
``loop.call_soon_threadsafe``. Messages are handed over in batches: the thread appends
each to an inbox and wakes the event loop only when no hand-over is pending already, so a
burst (a building's devices all saying hello) costs one wake-up, not one per message.
Subscriptions are made in ``on_connect`` so that every reconnect (broker restart, network
loss) subscribes again; paho reconnects by itself with back-off. ``publish`` is
thread-safe in paho and may be called from the event loop.

MQTT 5, for three things 3.1.1 lacks: the broker sends the gateway no packet larger than
:data:`~gateway.auth.broker.MAX_PACKET_BYTES` (the Maximum Packet Size it asks for: a
broker configured without a limit drops a 64 MiB publish instead of handing it over);
messages keep their retain flag (Retain As Published), so that :class:`InputGuard` can
drop retained input, which would otherwise come again after every reconnect; and the
gateway does not receive what it publishes itself (No Local: clearing a retained
message). Its session outlives a disconnection by :data:`SESSION_EXPIRY_SECONDS`, so that
what arrives meanwhile is delivered when it is back.

:func:`client_tls` is the TLS every connection of the gateway to its broker uses when
``[mqtt] tls`` is on (this link, the broker administration and the reading workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.auth.broker import MAX_PACKET_BYTES
from gateway.errors import DidgwError

log = logging.getLogger(__name__)

#: Called on the event loop with (topic, payload) for every message received.
MessageHandler = Callable[[str, bytes], None]

#: How long the broker keeps the gateway's session (subscriptions, QoS 1 messages for it)
#: after it disconnected. Devices keep every reading until it is acknowledged, so a longer
#: absence loses nothing; a session left behind (the gateway's account got a new password,
#: hence a new client id) is gone after a day.
SESSION_EXPIRY_SECONDS = 86400


class InputGuard:
    """Drops what the gateway must not read: messages over ``max_bytes`` and retained ones.

    A retained message would come again after every reconnect (someone's hello answered
    anew, a person's request carried out again), so it is refused and cleared: ``clear``
    publishes an empty retained message to its topic, which deletes it on the broker. An
    empty retained message is such a clearing (ours or anyone's): dropped, not counted.
    Refusals are counted in :attr:`dropped` by reason ("oversized", "retained") and logged
    at most once per ``log_every`` seconds per reason, with how many were not logged.
    """

    def __init__(
        self,
        *,
        clear: Callable[[str], None],
        max_bytes: int = MAX_PACKET_BYTES,
        log_every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clear, self._max, self._every, self._clock = clear, max_bytes, log_every, clock
        # Both keys from the start: read from other threads, the dict never changes size.
        self.dropped: Counter[str] = Counter({"oversized": 0, "retained": 0})
        self._logged_at: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def admit(self, topic: str, payload: bytes | bytearray, retain: bool) -> bool:
        """Whether the message may be handled; if not, it is counted, logged and cleared."""
        size = len(payload)
        if size > self._max:
            self._refuse("oversized", topic, f"{size:,} bytes, more than {self._max:,}")
            return False
        if retain:
            if size:
                self._refuse("retained", topic, "retained; cleared it from the broker")
                self._clear(topic)
            return False
        return True

    def _refuse(self, reason: str, topic: str, detail: str) -> None:
        self.dropped[reason] += 1
        now = self._clock()
        last = self._logged_at.get(reason)
        if last is not None and now - last < self._every:
            self._unlogged[reason] += 1
            return
        self._logged_at[reason] = now
        unlogged = self._unlogged.pop(reason, 0)
        more = f" ({unlogged} more since the last such line)" if unlogged else ""
        log.warning(
            "dropped a message on %s: %s; the gateway takes no %s input%s",
            topic,
            detail,
            "retained" if reason == "retained" else "oversized",
            more,
        )


def v5_connect_properties(*, session_expiry: int = 0) -> Properties:
    """CONNECT properties: the largest packet we take, and how long our session outlives us."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.MaximumPacketSize = MAX_PACKET_BYTES
    if session_expiry:
        properties.SessionExpiryInterval = session_expiry
    return properties


def forget_session(host: str, port: int, username: str, password: str, client_id: str) -> None:
    """Discard the broker's session of ``client_id`` (connect with a clean session, leave).

    The gateway's former client id kept a session that never expires and to which the
    broker would queue every device's message forever; a gateway updated to another id
    ends it once. Raises :class:`MqttError` when the broker does not answer.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=True,
        reconnect_on_failure=False,
    )
    client.username_pw_set(username, password)
    answered: list[bool] = []
    client.on_connect = lambda *args: answered.append(True)
    try:
        client.connect(host, port, keepalive=10)
        deadline = time.monotonic() + 10
        while not answered and time.monotonic() < deadline:
            client.loop(timeout=0.1)
        client.disconnect()
    except OSError as exc:
        raise MqttError(f"cannot reach the broker at {host}:{port}: {exc}") from None
    finally:
        client.reinitialise()  # closes its sockets now
    if not answered:
        raise MqttError(f"the broker at {host}:{port} did not answer in time")


class MqttError(DidgwError):
    code = "cannot_connect"


class MqttLink:
    """One MQTT client for the gateway, bridged to an asyncio event loop."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        client_id: str,
        subscriptions: Sequence[str],
        on_message: MessageHandler,
        loop: asyncio.AbstractEventLoop,
        keepalive: int = 30,
        max_inflight: int = 0,
        on_reconnect: Callable[[], None] | None = None,
        tls: ssl.SSLContext | None = None,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        """``will``: (topic, payload) the broker publishes, retained, if the connection is
        lost without a goodbye. No ``subscriptions``: ``connected`` is set on CONNACK."""
        self._loop = loop
        self._on_message = on_message
        self._on_reconnect = on_reconnect
        self._subscriptions = list(subscriptions)
        self._host, self._port, self._keepalive = host, port, keepalive
        self.connected = asyncio.Event()
        self.connects = 0  # how many times the connection was (re)established
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.username_pw_set(username, password)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        self.guard = InputGuard(clear=self._clear)
        if tls is not None:
            client.tls_set_context(tls)
        # paho scans its whole in-flight list on every ack: a limit of 1,000 halves the
        # rate. Acks are bounded by the readings in flight anyway; 0 = no paho limit.
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(0)  # paho's own outgoing queue: unbounded
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._subscribe_mid: int | None = None
        self._inbox: list[tuple[str, bytes]] = []  # received, not yet handed to the loop
        self._inbox_lock = threading.Lock()
        self._handover_pending = False
        client.on_connect = self._connected
        client.on_subscribe = self._subscribed
        client.on_disconnect = self._disconnected
        client.on_message = self._received
        self._client = client

    def start(self) -> None:
        """Connect (retrying in the background if the broker is not there yet)."""
        try:
            self._client.connect_async(
                self._host,
                self._port,
                keepalive=self._keepalive,
                clean_start=False,  # QoS 1 messages queued while we were away are delivered
                properties=v5_connect_properties(session_expiry=SESSION_EXPIRY_SECONDS),
            )
        except (OSError, ValueError) as exc:
            raise MqttError(
                f"cannot connect to the broker at {self._host}:{self._port}: {exc}"
            ) from None
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self.publish_tracked(topic, payload, qos=qos, retain=retain)

    def publish_tracked(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        """:meth:`publish`, returning paho's info to wait on (a goodbye before closing)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("publish to %s failed: %s", topic, mqtt.error_string(info.rc))
        return info

    # -- paho's thread ------------------------------------------------------

    def _connected(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the gateway's connection: %s", reason)
            return
        set_nodelay(client)
        if not self._subscriptions:  # a link that only publishes
            self._up()
            return
        # ``connected`` is set once the broker has acknowledged the subscriptions: before
        # that, a message published to us would be lost (a device's hello, a reading).
        options = SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True)
        _, self._subscribe_mid = client.subscribe([(t, options) for t in self._subscriptions])

    def _subscribed(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [r for r in reasons if r.is_failure]
        if refused:
            log.error("the broker refused the gateway's subscriptions: %s", refused)
            return
        self._up()

    def _up(self) -> None:
        self.connects += 1
        self._loop.call_soon_threadsafe(self.connected.set)
        if self.connects > 1 and self._on_reconnect is not None:
            self._loop.call_soon_threadsafe(self._on_reconnect)

    def _disconnected(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._loop.call_soon_threadsafe(self.connected.clear)
        if reason.is_failure:
            log.warning("lost the broker connection (%s); reconnecting", reason)

    def _received(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if not self.guard.admit(message.topic, message.payload, message.retain):
            return
        with self._inbox_lock:
            self._inbox.append((message.topic, bytes(message.payload)))
            if self._handover_pending:
                return  # the event loop takes this one with the others
            self._handover_pending = True
        with contextlib.suppress(RuntimeError):  # the event loop is closed: we are stopping
            self._loop.call_soon_threadsafe(self._hand_over)

    # -- the event loop -----------------------------------------------------

    def _hand_over(self) -> None:
        """Give every message in the inbox to the handler, in the order received, until the
        inbox is empty (a message arriving meanwhile is taken too, without another wake-up).
        A handler's exception is logged and the next message handled: a hand-over that
        stopped half-way would leave the inbox waiting for a wake-up that never comes."""
        while True:
            with self._inbox_lock:
                batch, self._inbox = self._inbox, []
                if not batch:
                    self._handover_pending = False
                    return
            for topic, payload in batch:
                try:
                    self._on_message(topic, payload)
                except Exception:
                    log.exception("handling a message on %s failed", topic)

    def _clear(self, topic: str) -> None:
        """Delete the retained message of ``topic`` (the gateway may publish to its topics)."""
        self._client.publish(topic, b"", qos=1, retain=True)


class ClosingSSLSocket(ssl.SSLSocket):
    """A TLS socket that closes itself when its handshake fails: paho 2.2 drops it unclosed
    and retries, so each refused certificate would hold a descriptor until collected."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def client_tls(ca_file: str, cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """TLS for a connection to the broker: its certificate must chain to a CA in ``ca_file``
    and name the host connected to; TLS 1.2 at least; the client certificate ``cert_file``
    (with ``key_file``, which only its owner may read) if the broker asks for one."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise MqttError(f"cannot use {ca_file} as the broker's CA certificates: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.sslsocket_class = ClosingSSLSocket
    if cert_file:
        try:
            mode = stat.S_IMODE(Path(key_file).stat().st_mode)
        except OSError as exc:
            raise MqttError(f"cannot read the client key {key_file}: {exc.strerror}") from None
        if mode & 0o077:
            raise MqttError(
                f"client key {key_file} is accessible by group or others (mode {mode:04o}); "
                f"run: chmod 600 {key_file}"
            )
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise MqttError(
                f"cannot use the client certificate {cert_file} with {key_file}: {exc}"
            ) from None
    return context


def set_nodelay(client: mqtt.Client) -> None:
    """Send small messages at once: without TCP_NODELAY an ack waits ~20-40 ms for
    delayed acknowledgements (measured by bench/ingest.py)."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

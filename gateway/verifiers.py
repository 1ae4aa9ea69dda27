"""Reading verification on every core: worker processes around the single writer.

Ed25519 verification is the ingest bottleneck (a few thousand per second per
core), and Python runs one thread at a time. So readings are spread over
processes with an MQTT shared subscription (``$share/didgw-verify/…``): the
broker hands each reading to one member of the group, the main process being
one of them. A worker checks the signature, the device's status, the time and
the schema; a refusal it answers itself (it publishes the nack), a reading
that checks out it hands to the main process through a pipe. The main process
keeps what must be in one place: the sequence numbers, the record's one writer,
and the acks of accepted readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from gateway.auth.broker import shared_readings_filter
from gateway.auth.readings import Reading
from gateway.errors import DidgwError

log = logging.getLogger(__name__)

READY_TIMEOUT = 30.0  # seconds a worker may take to start and subscribe


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs to open its own connections (it shares none with the parent)."""

    config: Any  # gateway.config.Config (picklable frozen dataclasses)
    state_dir: Path
    password: str
    index: int


class VerifierPool:
    """Start, feed from and stop the verification workers."""

    def __init__(
        self,
        count: int,
        settings: Callable[[int], WorkerSettings],
        loop: asyncio.AbstractEventLoop,
        on_reading: Callable[[Reading], None],
    ) -> None:
        self._count = count
        self._settings = settings
        self._loop = loop
        self._on_reading = on_reading
        self._workers: list[tuple[Any, Connection]] = []

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no fork under running threads
        for index in range(self._count):
            parent, child = context.Pipe()
            process = context.Process(
                target=worker_main,
                args=(self._settings(index), child),
                name=f"didgw-verify-{index}",
                daemon=True,
            )
            process.start()
            child.close()
            self._workers.append((process, parent))
        for _, parent in self._workers:  # each says "ready" once subscribed to the share
            if not parent.poll(READY_TIMEOUT) or parent.recv() != "ready":
                self.stop()
                raise DidgwError("a verification worker did not subscribe to the readings in time")
            self._loop.add_reader(parent.fileno(), self._drain, parent)

    def _drain(self, conn: Connection) -> None:
        try:
            while conn.poll():
                message = conn.recv()
                if isinstance(message, Reading):  # "ready" again after a reconnect
                    self._on_reading(message)
        except (EOFError, OSError):
            self._loop.remove_reader(conn.fileno())
            log.error("a verification worker stopped; its share of readings goes to the others")

    def stop(self, timeout: float = 5.0) -> None:
        for _, conn in self._workers:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(conn.fileno())
                conn.send("stop")
        for process, conn in self._workers:
            process.join(timeout)
            if process.is_alive():
                process.terminate()
                process.join(timeout)
            conn.close()
        self._workers.clear()


def worker_main(settings: WorkerSettings, conn: Connection) -> None:
    """A verification worker's process: subscribe to the share, check, hand over or refuse."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from gateway.auth.readings import ReadingRefused
    from gateway.ingest import Ack
    from gateway.transports.mqtt import set_nodelay

    mqtt_config = settings.config.mqtt
    checker, db = _worker_checker(settings)
    prefix = mqtt_config.prefix
    readings_prefix, sending = f"{prefix}/d/", threading.Lock()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"didgw-verify-{settings.index}-{time.time_ns()}"
    )
    client.username_pw_set(mqtt_config.username, settings.password)

    def connected(client: mqtt.Client, *_: Any) -> None:
        set_nodelay(client)
        client.subscribe(shared_readings_filter(prefix), qos=1)

    def subscribed(client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if not any(r.is_failure for r in reasons):
            with sending:
                conn.send("ready")

    def received(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        if not (topic.startswith(readings_prefix) and topic.endswith("/readings")):
            return
        did = topic[len(readings_prefix) : -len("/readings")]
        try:
            reading = checker.check(did, bytes(message.payload), int(time.time() * 1000), None)
        except ReadingRefused as refusal:
            nack = Ack(refusal.seq, False, reason=refusal.reason).payload()
            client.publish(f"{prefix}/d/{did}/acks", nack, qos=1)
            return
        with sending:
            conn.send(reading)

    client.on_connect = connected
    client.on_subscribe = subscribed
    client.on_message = received
    client.reconnect_delay_set(1, 30)
    client.connect_async(mqtt_config.host, mqtt_config.port, keepalive=30)
    client.loop_start()
    try:
        conn.recv()  # blocks until the parent says stop (or goes away)
    except (EOFError, OSError):
        pass
    finally:
        client.disconnect()
        client.loop_stop()
        db.close()


def _worker_checker(settings: WorkerSettings) -> tuple[Any, Any]:
    """A worker's own reading checker, on its own database connection (and the database)."""
    from gateway.auth.readings import ReadingChecker
    from gateway.db import DB_NAME, connect
    from gateway.identity.cache import SqliteResolutionCache
    from gateway.registry import Registry
    from gateway.service import build_resolver

    config = settings.config
    db = connect(settings.state_dir / DB_NAME)
    resolver = build_resolver(config, SqliteResolutionCache(db))
    registry = Registry(db, resolver)

    def status_of(did: str) -> Any:
        device = registry.find(did)
        return None if device is None else device.status

    checker = ReadingChecker(
        resolver,
        status_of,
        clock_skew_ms=config.mqtt.clock_skew_seconds * 1000,
        max_age_ms=config.mqtt.max_reading_age_seconds * 1000,
    )
    return checker, db

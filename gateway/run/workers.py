"""Readings on every core: worker processes, each a whole verify → record → ack pipeline.

Ed25519 verification is the ingest bottleneck, and Python runs one thread at a
time per process. So readings are spread over processes with an MQTT shared
subscription (``$share/didgw-verify/…``): the broker hands each reading to one
worker. A worker checks the signature, the device's status, the time and the
schema, appends the reading to the record through its own recorder (group
commit) and publishes the ack once the entry is committed; a refusal it
answers with a nack. The main process takes no readings: it authenticates
devices and administers the broker.

The workers run at a lower priority than the main process (:data:`WORKER_NICE`). When
the cores are all busy (a building reconnecting at once) the handshakes, the acks' way
out and the pages go first, and the readings wait in the broker, which holds them (QoS 1)
until a worker has a core: with the workers at the main process's priority 10,000-device
storms authenticated 241-295 devices/s here, with them below it 273-449/s in six runs
(docs/development.md, "The reconnect storm"). With cores to spare, as in a steady stream,
the priority changes nothing.

Several processes write the record. SQLite serialises their transactions
(``BEGIN IMMEDIATE``), each transaction continues the chain from the head it
finds (:class:`~gateway.chain.store.ChainStore` re-reads it when another
process appended), and each (device, sequence number) is recorded at most once
by the record's unique key, whichever worker gets it. Like the main connection
(``transports/mqtt.py``), a worker speaks MQTT 5 and drops oversized and retained
readings unread (:class:`~gateway.transports.mqtt.InputGuard`); it reports those with its
counts ("dropped_oversized", "dropped_retained"). Handing verified readings
to one writer in the main process was tried first: the main process spent its
time passing readings between threads and reached about 2,000 readings/s here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from gateway.auth.broker import CLIENT_ID_PREFIX, shared_readings_filter
from gateway.auth.readings import ClockWindow
from gateway.auth.refusals import RefusalBook
from gateway.errors import DidgwError
from gateway.run.ingest import ReadingPipeline

log = logging.getLogger(__name__)

READY_TIMEOUT = 30.0  # seconds a worker may take to start and subscribe
_DROPPED = "dropped_"  # the prefix of the drop counts in a worker's report
_REFUSALS = "refusals"  # a worker's message of the refusals its devices earned since the last
#: Readings waiting for the recorder before a worker says it is behind (at most every 10 s).
BACKLOG_WARNING = 10_000
#: How much nicer than the main process a reading worker is (see the module's docstring).
WORKER_NICE = 5


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs to open its own connections (it shares none with the parent),
    and the readings' clock window it starts with (the config's, or the last reload's).

    It reaches the worker pickled through the pipe that multiprocessing's spawn starts the
    worker with, so the broker password is neither on the worker's command line nor in its
    environment (the runner removes the secret variables before any worker starts)."""

    config: Any  # gateway.config.Config (picklable frozen dataclasses)
    state_dir: Path
    password: str
    index: int
    window: ClockWindow


class VerifierPool:
    """Start, watch and stop the reading workers."""

    def __init__(
        self,
        count: int,
        settings: Callable[[int], WorkerSettings],
        loop: asyncio.AbstractEventLoop,
        refusals: RefusalBook | None = None,
    ) -> None:
        self._count = count
        self._refusals = refusals  # where the workers' refusals per device go
        self._settings = settings
        self._loop = loop
        self._workers: list[tuple[Any, Connection]] = []
        self._counts: dict[int, dict[str, int]] = {}  # each worker's latest counts
        self._retired: Counter[str] = Counter()  # the last counts of workers that died
        self._window: ClockWindow | None = None  # the last reload's, for workers started later

    @property
    def counts(self) -> dict[str, int]:
        """Reading outcomes ("accepted", "duplicate", refusal reasons) over all workers ever
        started (a replaced worker's counts are kept), as of their last report (each second)."""
        return {k: n for k, n in self._total().items() if not k.startswith(_DROPPED)}

    @property
    def dropped(self) -> dict[str, int]:
        """Readings the workers dropped unread, by reason ("oversized", "retained")."""
        return {k[len(_DROPPED) :]: n for k, n in self._total().items() if k.startswith(_DROPPED)}

    def _total(self) -> Counter[str]:
        total = Counter(self._retired)
        for counts in self._counts.values():
            total.update(counts)
        return total

    def start(self) -> None:
        """Start every worker; return once each has subscribed to the readings."""
        for index in range(self._count):
            self._workers.append(self._spawn(index))
        for index, (_, parent) in enumerate(self._workers):
            if not parent.poll(READY_TIMEOUT) or parent.recv() != "ready":
                self.stop()
                raise DidgwError("a reading worker did not subscribe to the readings in time")
            self._loop.add_reader(parent.fileno(), self._watch, index)

    def retime(self, window: ClockWindow) -> None:
        """A reload's clock window, for every worker now and for those started later. Each
        worker takes it from its pipe between readings and logs that it did."""
        self._window = window
        for _, conn in self._workers:
            with contextlib.suppress(OSError, ValueError):  # a dead worker's replacement gets it
                conn.send(window)

    def _spawn(self, index: int) -> tuple[Any, Connection]:
        context = multiprocessing.get_context("spawn")  # no fork under running threads
        parent, child = context.Pipe()
        settings = self._settings(index)
        if self._window is not None:
            settings = dataclasses.replace(settings, window=self._window)
        process = context.Process(
            target=worker_main,
            args=(settings, child),
            name=f"didgw-readings-{index}",
            daemon=True,
        )
        process.start()
        child.close()
        return process, parent

    def _watch(self, index: int) -> None:
        process, conn = self._workers[index]
        try:
            while conn.poll():
                message = conn.recv()  # "ready" again after a reconnect, or its counts
                if isinstance(message, dict):
                    self._counts[index] = message
                elif isinstance(message, tuple) and len(message) == 2:
                    self._took_refusals(message)
        except (EOFError, OSError):
            self._retired.update(self._counts.pop(index, {}))
            self._loop.remove_reader(conn.fileno())
            conn.close()
            process.join(1.0)
            log.error(
                "reading worker %d stopped (exit code %s); starting another",
                index,
                process.exitcode,
            )
            self._workers[index] = self._spawn(index)
            self._loop.add_reader(self._workers[index][1].fileno(), self._watch, index)

    def _took_refusals(self, message: tuple[Any, Any]) -> None:
        """A worker's refusals per device (``auth/refusals.py``), into the main process's book."""
        if self._refusals is not None and message[0] == _REFUSALS:
            self._refusals.take(message[1])

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the workers; each commits and acknowledges what it has taken first."""
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
    """A worker's process: subscribe to the share, check, record, acknowledge."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.subscribeoptions import SubscribeOptions

    from gateway.ops import logs
    from gateway.run.ingest import Ack
    from gateway.transports.mqtt import set_nodelay, v5_connect_properties

    logs.configure()
    os.nice(WORKER_NICE)  # interactive work (the main process) first
    mqtt_config = settings.config.mqtt
    pipeline, close = _worker_pipeline(settings)
    prefix = mqtt_config.prefix
    readings_prefix, sending = f"{prefix}/d/", threading.Lock()  # the pipe, for two threads
    client, guard = _worker_client(settings)

    def connected(client: mqtt.Client, *_: Any) -> None:
        set_nodelay(client)
        options = SubscribeOptions(qos=1, retainAsPublished=True)
        client.subscribe(shared_readings_filter(prefix), options=options)

    def subscribed(client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if not any(r.is_failure for r in reasons):
            with sending:
                conn.send("ready")

    def received(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        if not guard.admit(topic, message.payload, message.retain):
            return
        if not (topic.startswith(readings_prefix) and topic.endswith("/readings")):
            return
        did = topic[len(readings_prefix) : -len("/readings")]
        acks = f"{prefix}/d/{did}/acks"

        def reply(ack: Ack) -> None:
            client.publish(acks, ack.payload(), qos=1)

        pipeline.handle(did, bytes(message.payload), reply)

    client.on_connect = connected
    client.on_subscribe = subscribed
    client.on_message = received
    client.reconnect_delay_set(1, 30)
    client.connect_async(
        mqtt_config.host, mqtt_config.port, keepalive=30, properties=v5_connect_properties()
    )
    client.loop_start()
    try:
        _watch_until_stopped(conn, sending, pipeline, settings.index, guard.dropped)
    finally:
        client.unsubscribe(shared_readings_filter(prefix))
        close()  # commits what is queued; its acks are published before we disconnect
        client.disconnect()
        client.loop_stop()


def _worker_client(settings: WorkerSettings) -> tuple[Any, Any]:
    """A worker's MQTT 5 client (an unguessable client id) and the guard of its input.

    A retained reading is cleared like the main connection's (our account may publish
    there); the clearing comes back to the share (No Local is not allowed on a shared
    subscription) as an empty retained message, which the guard drops without a word.
    """
    import secrets

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from gateway.ops.tls import gateway_tls
    from gateway.transports.mqtt import InputGuard

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{CLIENT_ID_PREFIX}verify-{settings.index}-{secrets.token_hex(16)}",
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set(settings.config.mqtt.username, settings.password)
    tls = gateway_tls(settings.config, settings.state_dir)
    if tls is not None:
        client.tls_set_context(tls)
    client.max_inflight_messages_set(0)  # acks are bounded by the readings in flight
    client.max_queued_messages_set(0)

    def clear(topic: str) -> None:
        client.publish(topic, b"", qos=1, retain=True)

    return client, InputGuard(clear=clear)


def _watch_until_stopped(
    conn: Connection,
    sending: threading.Lock,
    pipeline: ReadingPipeline,
    index: int,
    dropped: Counter[str],
) -> None:
    """Until the parent says stop (or goes away): take a reload's clock window, report the
    counts every second, and say so when readings pile up."""
    warned = 0.0
    report_at = time.monotonic() + 1.0
    try:
        while True:
            if conn.poll(max(0.0, report_at - time.monotonic())):
                message = conn.recv()
                if not isinstance(message, ClockWindow):
                    return  # "stop"
                pipeline.checker.window = message
                log.info(
                    "reading worker %d: clock window now %d s ahead to %d s behind",
                    index,
                    message.skew_ms // 1000,
                    message.max_age_ms // 1000,
                )
                continue
            now = time.monotonic()
            report_at = now + 1.0
            report = pipeline.snapshot_counts()
            report.update({_DROPPED + reason: n for reason, n in dropped.items()})
            refusals = pipeline.refusals.drain() if pipeline.refusals is not None else []
            with sending:
                conn.send(report)
                if refusals:
                    conn.send((_REFUSALS, refusals))
            if pipeline.backlog > BACKLOG_WARNING and now - warned >= 10:
                warned = now
                log.warning(
                    "reading worker %d is falling behind: %d readings wait to be recorded; "
                    "the broker may drop readings (devices send them again until acknowledged)",
                    index,
                    pipeline.backlog,
                )
    except (EOFError, OSError):
        pass


def _worker_pipeline(settings: WorkerSettings) -> tuple[ReadingPipeline, Callable[[], None]]:
    """A worker's own reading pipeline: its database connections, recorder and checker."""
    from gateway.auth.readings import ReadingChecker
    from gateway.chain.store import ChainStore
    from gateway.db import DB_NAME, connect
    from gateway.identity.cache import SqliteResolutionCache
    from gateway.registry import Registry
    from gateway.registry.status_cache import StatusCache
    from gateway.run.disk import DiskGuard
    from gateway.run.recorder import Recorder, writer_lock_path
    from gateway.service import build_resolver

    config = settings.config
    path = settings.state_dir / DB_NAME
    db = connect(path)
    resolver = build_resolver(config, SqliteResolutionCache(db))
    checker = ReadingChecker(resolver, StatusCache(Registry(db, resolver)), window=settings.window)
    recorder = Recorder(
        lambda: ChainStore(connect(path)),
        clock_ms=lambda: int(time.time() * 1000),
        lock_path=writer_lock_path(path),
    )
    lookups = ChainStore(connect(path))

    def close() -> None:
        recorder.close()
        lookups.close()
        db.close()

    storage = DiskGuard(
        path, quota_mb=config.gateway.quota_mb, min_free_mb=config.gateway.min_free_mb
    )
    pipeline = ReadingPipeline(checker, recorder, lookups, storage=storage, refusals=RefusalBook())
    return pipeline, close

"""``didgw run``: the long-running gateway, assembled from its configuration.

One asyncio process. The pieces and who owns which thread:

* the event loop: MQTT messages, authentication, reading checks, acks;
* the recorder thread: the only writer to the record (group commit);
* paho's network thread (``transports/mqtt.py``) and worker threads for
  blocking broker administration (``transports/dynsec.py``).

SIGTERM or SIGINT: stop taking messages, finish what is in flight (every
accepted reading is committed and acknowledged), close everything, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.auth.handshake import Authenticator
from gateway.auth.readings import ReadingChecker
from gateway.chain.store import ChainStore
from gateway.config import Config
from gateway.db import DB_NAME, connect
from gateway.errors import ConfigError
from gateway.ingest import ReadingPipeline
from gateway.mqtt_devices import MqttDevices
from gateway.recorder import Recorder
from gateway.registry import Status
from gateway.registry.status_cache import StatusCache
from gateway.service import Gateway, open_gateway
from gateway.transports.dynsec import DynsecAdmin
from gateway.transports.mqtt import MqttLink
from gateway.verifiers import VerifierPool, WorkerSettings

log = logging.getLogger("didgw")

MQTT_PASSWORD_ENV = "DIDGW_MQTT_PASSWORD"  # noqa: S105 - the variable's name, not a secret


def mqtt_password(config: Config, env: Mapping[str, str]) -> str:
    """The gateway's broker password, from ``[mqtt] password_file`` or the environment."""
    if config.mqtt.password_file:
        return Path(config.mqtt.password_file).read_text().strip()
    password = env.get(MQTT_PASSWORD_ENV)
    if not password:
        raise ConfigError(
            f"{config.source}: [mqtt] password_file is empty and ${MQTT_PASSWORD_ENV} is not set; "
            "the gateway needs its broker account's password"
        )
    return password


class _MqttSide:
    """Everything devices over MQTT need, started and stopped in the right order."""

    def __init__(self) -> None:
        self.devices: MqttDevices | None = None
        self.link: MqttLink | None = None
        self.broker: DynsecAdmin | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.pool: VerifierPool | None = None

    async def start(
        self,
        config: Config,
        state_dir: Path,
        env: Mapping[str, str],
        gateway: Gateway,
        pipeline: ReadingPipeline,
    ) -> None:
        loop = asyncio.get_running_loop()
        mqtt = config.mqtt
        password = mqtt_password(config, env)
        workers = mqtt.verify_workers if mqtt.verify_workers >= 0 else default_verify_workers()
        self.broker = DynsecAdmin(mqtt.host, mqtt.port, mqtt.username, password)
        await asyncio.to_thread(self.broker.connect)
        authenticator = Authenticator(
            gateway.signer(env),
            lambda did: _status(gateway, did),
            gateway.resolver,
            prefix=mqtt.prefix,
            clock_skew_ms=mqtt.clock_skew_seconds * 1000,
            session_ms=mqtt.session_seconds * 1000,
            random_bytes=secrets.token_bytes,
        )
        devices = self.devices = MqttDevices(
            prefix=mqtt.prefix,
            authenticator=authenticator,
            pipeline=pipeline,
            registry=gateway.registry,
            broker=self.broker,
            publish=lambda topic, payload: self.link.publish(topic, payload) if self.link else None,
            shared_readings=workers > 0,
        )
        stale = await asyncio.to_thread(devices.prepare_broker)
        log.info("removed %d device accounts left on the broker", stale)
        if workers > 0:
            self.pool = VerifierPool(
                workers,
                lambda index: WorkerSettings(config, state_dir, password, index),
                loop,
            )
            self.pool.start()
            log.info("%d reading worker processes started", workers)
        self.link = MqttLink(
            host=mqtt.host,
            port=mqtt.port,
            username=mqtt.username,
            password=password,
            client_id=f"didgw-{gateway.did[-12:]}",
            subscriptions=devices.subscriptions,
            on_message=devices.on_message,
            loop=loop,
            on_reconnect=devices.spawn_reconcile,
        )
        self.link.start()
        self.watcher = asyncio.ensure_future(devices.watch())
        await asyncio.wait_for(self.link.connected.wait(), timeout=30)

    def stop_taking(self) -> None:
        """Take no more readings; the workers finish theirs (committed and acknowledged)."""
        if self.pool is not None:
            self.pool.stop()
        if self.devices is not None:
            self.devices.closing = True

    async def stop(self) -> None:
        """After the recorder has committed the rest: close everything."""
        if self.link is not None:
            self.link.stop()
        if self.watcher is not None:
            self.watcher.cancel()
        if self.devices is not None:
            await self.devices.drain()
        if self.broker is not None:
            self.broker.close()


class _CoapSide:
    """Devices over CoAP: one aiocoap server context on the event loop (readings are
    verified in this process; see the README's CoAP benchmark)."""

    def __init__(self) -> None:
        self.devices: Any = None
        self.server: Any = None
        self.sweeper: asyncio.Task[None] | None = None

    async def start(
        self, config: Config, env: Mapping[str, str], gateway: Gateway, pipeline: ReadingPipeline
    ) -> None:
        from gateway.auth.coap_auth import CoapAuthenticator
        from gateway.coap_devices import READINGS_PATH, CoapDevices
        from gateway.transports.coap import CoapServer

        coap = config.coap
        self.devices = CoapDevices(
            authenticator=CoapAuthenticator(
                gateway.signer(env),
                lambda did: _status(gateway, did),
                gateway.resolver,
                readings_path="/" + "/".join(READINGS_PATH),
                clock_skew_ms=config.mqtt.clock_skew_seconds * 1000,
                session_ms=coap.session_seconds * 1000,
                random_bytes=secrets.token_bytes,
            ),
            checker=pipeline.checker,
            pipeline=pipeline,
            peer_rate=coap.peer_rate,
            peer_burst=coap.peer_burst,
            max_in_flight=coap.max_in_flight,
            retry_after_seconds=coap.retry_after_seconds,
        )
        self.server = CoapServer(
            coap.host,
            coap.port,
            self.devices.routes(),
            admit=self.devices.admit,
            max_request_bytes=coap.max_request_bytes,
            receive_buffer_bytes=coap.receive_buffer_bytes,
        )
        await self.server.start()
        self.sweeper = asyncio.ensure_future(self.devices.sweep())
        log.info(
            "CoAP on %s port %d (receive buffer %d bytes)",
            coap.host,
            coap.port,
            self.server.receive_buffer,
        )

    def stop_taking(self) -> None:
        if self.devices is not None:
            self.devices.closing = True

    async def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        if self.devices is not None:
            await self.devices.drain()
        if self.server is not None:
            await self.server.stop()


def default_verify_workers() -> int:
    """One verifier per core; none on a single core (the main process verifies there)."""
    cores = os.cpu_count() or 1
    return 0 if cores < 2 else cores


async def serve(
    config: Config, state_dir: Path, env: Mapping[str, str], stop: asyncio.Event
) -> None:
    """Run until ``stop`` is set."""
    gateway = open_gateway(config, state_dir)
    db_path = state_dir / DB_NAME
    recorder = Recorder(
        lambda: ChainStore(connect(db_path)), clock_ms=lambda: int(time.time() * 1000)
    )
    lookups = ChainStore(connect(db_path))
    pipeline = ReadingPipeline(
        ReadingChecker(
            gateway.resolver,
            StatusCache(gateway.registry),
            clock_skew_ms=config.mqtt.clock_skew_seconds * 1000,
            max_age_ms=config.mqtt.max_reading_age_seconds * 1000,
        ),
        recorder,
        lookups,
    )
    mqtt = _MqttSide()
    coap = _CoapSide()
    anchoring = None
    try:
        if config.anchor.enabled:  # its own thread and connection; never blocks readings
            from gateway.anchoring import AnchorLoop, build_anchorer

            anchoring = AnchorLoop(build_anchorer(config, state_dir, env, gateway))
            anchoring.start()
        if config.mqtt.enabled:
            await mqtt.start(config, state_dir, env, gateway, pipeline)
        if config.coap.enabled:
            await coap.start(config, env, gateway, pipeline)
        log.info("gateway %s running (state %s)", gateway.did, state_dir)
        await stop.wait()
    finally:
        log.info("stopping")
        mqtt.stop_taking()
        coap.stop_taking()
        recorder.close()  # commits what is queued; the acks go out before the link closes
        await mqtt.stop()
        await coap.stop()
        if anchoring is not None:
            await anchoring.stop()
        lookups.close()
        gateway.close()


def _status(gateway: Gateway, did: str) -> Status | None:
    device = gateway.registry.find(did)
    return None if device is None else device.status


def run(config: Config, state_dir: Path) -> None:
    """Blocking entry point for ``didgw run``: serve until SIGTERM or SIGINT."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, state_dir, os.environ, stop)

    asyncio.run(main())

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
from gateway.service import open_gateway
from gateway.transports.dynsec import DynsecAdmin
from gateway.transports.mqtt import MqttLink

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


async def serve(
    config: Config, state_dir: Path, env: Mapping[str, str], stop: asyncio.Event
) -> None:
    """Run until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    gateway = open_gateway(config, state_dir)
    signer = gateway.signer(env)
    db_path = state_dir / DB_NAME
    recorder = Recorder(
        lambda: ChainStore(connect(db_path)), clock_ms=lambda: int(time.time() * 1000)
    )
    lookups = ChainStore(connect(db_path))

    def status_of(did: str) -> Status | None:
        device = gateway.registry.find(did)
        return None if device is None else device.status

    mqtt = config.mqtt
    skew_ms = mqtt.clock_skew_seconds * 1000
    devices: MqttDevices | None = None
    link: MqttLink | None = None
    broker: DynsecAdmin | None = None
    watcher: asyncio.Task[None] | None = None
    try:
        if mqtt.enabled:
            password = mqtt_password(config, env)
            broker = DynsecAdmin(mqtt.host, mqtt.port, mqtt.username, password)
            await asyncio.to_thread(broker.connect)
            devices = MqttDevices(
                prefix=mqtt.prefix,
                authenticator=Authenticator(
                    signer,
                    status_of,
                    gateway.resolver,
                    prefix=mqtt.prefix,
                    clock_skew_ms=skew_ms,
                    session_ms=mqtt.session_seconds * 1000,
                    random_bytes=secrets.token_bytes,
                ),
                pipeline=ReadingPipeline(
                    ReadingChecker(gateway.resolver, status_of, clock_skew_ms=skew_ms),
                    recorder,
                    lookups,
                ),
                registry=gateway.registry,
                broker=broker,
                publish=lambda topic, payload: link.publish(topic, payload) if link else None,
            )
            stale = await asyncio.to_thread(devices.prepare_broker)
            log.info("removed %d device accounts left on the broker", stale)
            link = MqttLink(
                host=mqtt.host,
                port=mqtt.port,
                username=mqtt.username,
                password=password,
                client_id=f"didgw-{gateway.did[-12:]}",
                subscriptions=devices.subscriptions,
                on_message=devices.on_message,
                loop=loop,
            )
            link.start()
            watcher = asyncio.ensure_future(devices.watch())
            await asyncio.wait_for(link.connected.wait(), timeout=30)
        log.info("gateway %s running (state %s)", gateway.did, state_dir)
        await stop.wait()
    finally:
        log.info("stopping")
        if link is not None:
            link.stop()
        if watcher is not None:
            watcher.cancel()
        if devices is not None:
            await devices.drain()
        recorder.close()
        lookups.close()
        if broker is not None:
            broker.close()
        gateway.close()


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

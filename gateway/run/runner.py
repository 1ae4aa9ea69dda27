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
import dataclasses
import functools
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from gateway.auth import broker as policy
from gateway.auth.handshake import Handshake
from gateway.auth.mqtt_auth import Authenticator
from gateway.auth.readings import ReadingChecker
from gateway.auth.refusals import RefusalBook
from gateway.auth.strict import RegistryLookup
from gateway.chain.store import ChainStore
from gateway.config import SECTIONS, Config, load_config
from gateway.db import DB_NAME, connect
from gateway.errors import ConfigError, DidgwError
from gateway.files import read_secret
from gateway.identity import keystore
from gateway.identity.signing import Signer
from gateway.ops import metrics
from gateway.ops.health import Health, live_counts
from gateway.ops.sdnotify import Notifier
from gateway.ops.state_lock import holding
from gateway.ops.tls import broker_cert_warning, gateway_tls
from gateway.registry.status_cache import StatusCache
from gateway.run.broker_sessions import BrokerSessions
from gateway.run.disk import DiskGuard
from gateway.run.energy import MarketSide, MeterSide
from gateway.run.ingest import ReadingPipeline, clock_window
from gateway.run.mqtt_devices import MqttDevices
from gateway.run.recorder import Recorder, writer_lock_path
from gateway.run.workers import VerifierPool, WorkerSettings
from gateway.service import Gateway, open_gateway, token_dir
from gateway.transports.dynsec import DynsecAdmin
from gateway.transports.mqtt import MqttError, MqttLink, forget_session

log = logging.getLogger("didgw")

MQTT_PASSWORD_ENV = "DIDGW_MQTT_PASSWORD"  # noqa: S105 - the variable's name, not a secret
#: The variables that may hold a secret: read into the gateway's own copy of the environment
#: at start and removed from the process's, so that no child process inherits them.
SECRET_VARIABLES = (MQTT_PASSWORD_ENV, keystore.PASSPHRASE_ENV)

#: The settings a SIGHUP applies at once (:meth:`_Parts.retime`); any other change waits
#: for the next restart.
LIVE = frozenset(
    {
        "devices.clock_skew_seconds",
        "devices.max_reading_age_seconds",
        "mqtt.session_seconds",
        "coap.session_seconds",
        "credentials.session_seconds",
    }
)


def handshake(
    config: Config,
    signer: Signer,
    lookup: RegistryLookup,
    session_seconds: int,
    known: Callable[[str], bool] | None = None,
) -> Handshake:
    """A challenge-response core with the configured clock tolerance and this session length
    (``known``: whose challenges are kept apart from strangers', by default registered DIDs)."""
    return Handshake(
        signer,
        lookup,
        clock_skew_ms=config.devices.clock_skew_seconds * 1000,
        session_ms=session_seconds * 1000,
        random_bytes=secrets.token_bytes,
        known=known,
    )


def mqtt_password(config: Config, env: Mapping[str, str]) -> str:
    """The gateway's broker password, from ``[mqtt] password_file`` (readable by its owner
    alone) or the environment."""
    if config.mqtt.password_file:
        path = config.mqtt.password_file
        data = read_secret(path, "[mqtt] password_file", ConfigError)
        try:
            password = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"[mqtt] password_file {path} is not UTF-8 text") from None
        if not password:
            raise ConfigError(f"[mqtt] password_file {path} is empty")
        return password
    from_env = env.get(MQTT_PASSWORD_ENV)
    if not from_env:
        raise ConfigError(
            f"{config.source}: [mqtt] password_file is empty and ${MQTT_PASSWORD_ENV} is not set; "
            "the gateway needs its broker account's password"
        )
    return from_env


class _MqttSide:
    """Everything devices over MQTT need, started and stopped in the right order."""

    def __init__(self) -> None:
        self.devices: MqttDevices | None = None
        self.link: MqttLink | None = None
        self.broker: DynsecAdmin | None = None
        self.sessions: BrokerSessions | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.pool: VerifierPool | None = None
        self.authenticator: Authenticator | None = None
        self.people: Any = None  # gateway.run.mqtt_people.MqttPeople with [credentials] enabled
        self.people_watcher: asyncio.Task[None] | None = None

    def report_to(self, health: Health, pipeline: ReadingPipeline) -> None:
        """Name this side's live figures: readings, authentications, the broker connection."""
        pool, link, auth = self.pool, self.link, self.authenticator
        health.readings.append(
            ("mqtt", (lambda: pool.counts) if pool is not None else pipeline.snapshot_counts)
        )
        if auth is not None:
            core = auth.core
            health.authentications.append(("mqtt", lambda: core.outcomes))
        if link is not None:
            health.connections["broker"] = link.connected.is_set
            for reason in ("oversized", "retained"):
                health.gauges[f"mqtt_dropped_{reason}"] = functools.partial(
                    _dropped, link, pool, reason
                )

    async def start(
        self,
        config: Config,
        state_dir: Path,
        env: Mapping[str, str],
        gateway: Gateway,
        pipeline: ReadingPipeline,
        *,
        market: MarketSide | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        mqtt = config.mqtt
        password = mqtt_password(config, env)
        workers = mqtt.verify_workers if mqtt.verify_workers >= 0 else default_verify_workers()
        certificate = broker_cert_warning(config, state_dir, now=time.time())
        if certificate is not None:
            log.warning("%s", certificate)
        tls = gateway_tls(config, state_dir)
        self.broker = DynsecAdmin(mqtt.host, mqtt.port, mqtt.username, password, tls=tls)
        await asyncio.to_thread(self.broker.connect)
        core = handshake(config, gateway.signer(env), gateway.registry.status, mqtt.session_seconds)
        core.refusals = pipeline.refusals
        sessions = self.sessions = BrokerSessions(
            gateway.broker_token_key(), mqtt.prefix, token_dir(config, state_dir)
        )
        authenticator = self.authenticator = Authenticator(
            core,
            gateway.resolver,
            prefix=mqtt.prefix,
            session_token=lambda did, expires_ms: sessions.token(did, "device", expires_ms),
        )
        devices = self.devices = MqttDevices(
            prefix=mqtt.prefix,
            authenticator=authenticator,
            pipeline=pipeline,
            registry=gateway.registry,
            broker=self.broker,
            sessions=sessions,
            publish=lambda topic, payload: self.link.publish(topic, payload) if self.link else None,
            shared_readings=workers > 0,
        )
        stale = await asyncio.to_thread(devices.prepare_broker)
        await asyncio.to_thread(devices.void_barred_while_away)
        if stale:
            log.info("removed %d broker accounts named by DIDs (sessions are tokens now)", stale)
        if workers > 0:
            self.pool = VerifierPool(
                workers,
                lambda index: WorkerSettings(
                    config, state_dir, password, index, clock_window(config.devices)
                ),
                loop,
                refusals=pipeline.refusals,
            )
            self.pool.start()
            log.info("%d reading worker processes started", workers)
        people = self.people = self._people(config, state_dir, env, gateway, market)
        if people is not None:
            await people.prepare()
        subscriptions = devices.subscriptions
        subscriptions += market.subscriptions if market is not None else []
        subscriptions += people.subscriptions if people is not None else []

        def on_message(topic: str, payload: bytes) -> None:
            if market is not None and market.handles(topic):
                market.on_message(topic, payload)
            elif people is not None and people.handles(topic):
                people.on_message(topic, payload)
            else:
                devices.on_message(topic, payload)

        def on_reconnect() -> None:
            devices.spawn_reconcile()
            if people is not None:
                people.spawn_republish()

        await _forget_former_session(config, password, gateway.did)
        self.link = MqttLink(
            host=mqtt.host,
            port=mqtt.port,
            username=mqtt.username,
            password=password,
            client_id=policy.link_client_id(password),
            subscriptions=subscriptions,
            on_message=on_message,
            loop=loop,
            on_reconnect=on_reconnect,
            tls=tls,
        )
        self.link.start()
        self.watcher = asyncio.ensure_future(devices.watch())
        await asyncio.wait_for(self.link.connected.wait(), timeout=30)
        if people is not None:
            self.people_watcher = asyncio.ensure_future(people.watch())
        if market is not None:
            link = self.link
            market.start(link.publish)

    def _people(
        self,
        config: Config,
        state_dir: Path,
        env: Mapping[str, str],
        gateway: Gateway,
        market: MarketSide | None,
    ) -> Any:
        """People's wallets (``mqtt_people.py``), unless ``[credentials] enabled`` is off."""
        if not config.credentials.enabled or self.broker is None:
            return None
        from gateway.auth.wallet import WalletAuthenticator, holder_status
        from gateway.run.mqtt_people import MqttPeople
        from gateway.run.people import PeopleDesk

        desk = PeopleDesk(config, connect(state_dir / DB_NAME), gateway.did)
        signer = gateway.signer(env)
        core = handshake(  # people the gateway issued credentials to are known
            config,
            signer,
            holder_status,
            config.credentials.session_seconds,
            known=desk.issuer.has_issued_to,  # on the desk's thread, with its connection
        )
        sessions = self.sessions
        assert sessions is not None  # noqa: S101 - made with the broker, before people
        authenticator = WalletAuthenticator(
            core,
            desk.verify,
            prefix=config.mqtt.prefix,
            session_token=lambda did, expires_ms: sessions.token(did, "person", expires_ms),
        )
        return MqttPeople(
            prefix=config.mqtt.prefix,
            authenticator=authenticator,
            desk=desk,
            sessions=sessions,
            signer=signer,
            publish=lambda topic, payload, **kw: (
                self.link.publish(topic, payload, **kw) if self.link else None
            ),
            market=market,
            status_every_s=config.credentials.status_valid_seconds / 2,
        )

    def retime(self, config: Config) -> None:
        """A reload's clock tolerance and session lengths (the readings' window: the workers')."""
        skew_ms = config.devices.clock_skew_seconds * 1000
        if self.authenticator is not None:
            self.authenticator.core.retime(
                session_ms=config.mqtt.session_seconds * 1000, clock_skew_ms=skew_ms
            )
        if self.people is not None:
            self.people.retime(
                session_ms=config.credentials.session_seconds * 1000, clock_skew_ms=skew_ms
            )
        if self.pool is not None:
            self.pool.retime(clock_window(config.devices))

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
        if self.people_watcher is not None:
            self.people_watcher.cancel()
        if self.devices is not None:
            await self.devices.drain()
        if self.people is not None:
            await self.people.drain()
        if self.broker is not None:
            self.broker.close()


class _CoapSide:
    """Devices over CoAP: one aiocoap server context on the event loop (readings are
    verified in this process; see docs/development.md, "Benchmarks")."""

    def __init__(self) -> None:
        self.authenticator: Any = None
        self.devices: Any = None
        self.server: Any = None
        self.sweeper: asyncio.Task[None] | None = None

    async def start(
        self, config: Config, env: Mapping[str, str], gateway: Gateway, pipeline: ReadingPipeline
    ) -> None:
        from gateway.auth.coap_auth import CoapAuthenticator
        from gateway.run.coap_devices import READINGS_PATH, CoapDevices, SignedStatusList
        from gateway.transports.coap import CoapServer

        coap = config.coap
        core = handshake(config, gateway.signer(env), gateway.registry.status, coap.session_seconds)
        core.refusals = pipeline.refusals
        self.authenticator = authenticator = CoapAuthenticator(
            core, gateway.resolver, readings_path="/" + "/".join(READINGS_PATH)
        )
        status_list: SignedStatusList | None = None
        if config.credentials.enabled:
            issuer, signer = gateway.issuer(), gateway.signer(env)

            def sign(now: float) -> bytes:
                credential = issuer.status_list_credential(signer, now=now)
                return json.dumps(credential, separators=(",", ":")).encode()

            valid = config.credentials.status_valid_seconds
            status_list = SignedStatusList(sign, issuer.revision, valid)

        self.devices = CoapDevices(
            authenticator=authenticator,
            status_list=status_list,
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
            refuse=self.devices.refusal,
            max_request_bytes=coap.max_request_bytes,
            max_partial_uploads=coap.max_partial_uploads,
            partial_upload_seconds=coap.partial_upload_seconds,
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

    def retime(self, config: Config) -> None:
        """A reload's clock tolerance and session length for CoAP's handshake."""
        if self.authenticator is not None:
            self.authenticator.core.retime(
                session_ms=config.coap.session_seconds * 1000,
                clock_skew_ms=config.devices.clock_skew_seconds * 1000,
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


def _dropped(link: MqttLink, pool: VerifierPool | None, reason: str) -> float:
    """Messages the gateway's connections dropped unread for ``reason`` (its own and the
    reading workers')."""
    workers = pool.dropped.get(reason, 0) if pool is not None else 0
    return float(link.guard.dropped[reason] + workers)


async def _forget_former_session(config: Config, password: str, gateway_did: str) -> None:
    """End the session of the client id gateways used before (``didgw-`` and the end of
    their DID, which anyone could compute and take over): it never expires, and the broker
    would queue every device's message to it forever."""
    mqtt = config.mqtt
    former = f"didgw-{gateway_did[-12:]}"
    try:
        await asyncio.to_thread(
            forget_session, mqtt.host, mqtt.port, mqtt.username, password, former
        )
    except MqttError as exc:  # the link's own connection will say what is wrong
        log.warning("could not end the session of the former client id %s: %s", former, exc)


def default_verify_workers() -> int:
    """One verifier per core; none on a single core (the main process verifies there)."""
    cores = os.cpu_count() or 1
    return 0 if cores < 2 else cores


class _Parts:
    """Every part of one ``didgw run``: made here, started in order, stopped in reverse."""

    def __init__(self, config: Config, state_dir: Path, env: Mapping[str, str]) -> None:
        self.config, self.state_dir, self.env = config, state_dir, env
        self.gateway = gateway = open_gateway(config, state_dir)
        self.db_path = db_path = state_dir / DB_NAME
        self.recorder = Recorder(
            lambda: ChainStore(connect(db_path)),
            clock_ms=lambda: int(time.time() * 1000),
            lock_path=writer_lock_path(db_path),
        )
        self.lookups = ChainStore(connect(db_path))
        storage = DiskGuard(
            db_path, quota_mb=config.gateway.quota_mb, min_free_mb=config.gateway.min_free_mb
        )
        #: the last refusal each device earned, for the console (``auth/refusals.py``)
        self.refusals = RefusalBook()
        self.pipeline = ReadingPipeline(
            ReadingChecker(
                gateway.resolver, StatusCache(gateway.registry), window=clock_window(config.devices)
            ),
            self.recorder,
            self.lookups,
            storage=storage,
            refusals=self.refusals,
        )
        self.health = Health()
        self.health.gauges["storage_full"] = lambda: float(storage.full())
        # CoAP readings are checked in this process: a pipeline of their own (the same
        # recorder), so that their counts are told apart from MQTT's.
        self.coap_pipeline = ReadingPipeline(
            self.pipeline.checker, self.recorder, self.lookups, storage=storage,
            refusals=self.refusals,
        )  # fmt: skip
        self.mqtt = _MqttSide()
        self.coap = _CoapSide()
        self.meters: MeterSide | None = None
        self.inverters: Any = None  # gateway.run.inverters.InverterSide with [inverter] enabled
        self.market: MarketSide | None = None
        self.homeassistant: Any = None  # gateway.run.homeassistant.HomeAssistantSide
        self.anchoring: Any = None
        self.exporter: Any = None
        self.front_door: Any = None  # gateway.run.http.server.HttpEdge with [http] enabled

    async def start(self) -> None:
        config, env, gateway = self.config, self.env, self.gateway
        if config.meter.enabled:
            passphrase = keystore.read_passphrase(config.keys.passphrase_file, env)
            self.meters = MeterSide(config, self.state_dir, gateway, passphrase)
            self.meters.start()
            self.meters.report_to(self.health)
        if config.inverter.enabled:  # pymodbus is imported only then
            from gateway.run.inverters import InverterSide

            passphrase = keystore.read_passphrase(config.keys.passphrase_file, env)
            self.inverters = InverterSide(config, self.state_dir, gateway, passphrase)
            self.inverters.start()
            self.inverters.report_to(self.health)
        if config.market.enabled:
            if not config.mqtt.enabled:
                raise ConfigError(f"{config.source}: [market] needs [mqtt] enabled")
            self.market = MarketSide(config, self.state_dir, gateway, gateway.signer(env))
        if config.anchor.enabled:  # its own thread and connection; never blocks readings
            from gateway.run.anchoring import AnchorLoop, build_anchorer

            self.anchoring = AnchorLoop(build_anchorer(config, self.state_dir, env, gateway))
            self.anchoring.start()
            anchorer = self.anchoring.anchorer
            self.health.connections["ledger"] = lambda: anchorer.healthy
        if config.mqtt.enabled:
            await self.mqtt.start(
                config, self.state_dir, env, gateway, self.pipeline, market=self.market
            )
            self.mqtt.report_to(self.health, self.pipeline)
        if config.homeassistant.enabled:
            self.homeassistant = _start_homeassistant(config, self.state_dir, env)
        if config.coap.enabled:
            await self.coap.start(config, env, gateway, self.coap_pipeline)
            self.health.readings.append(("coap", self.coap_pipeline.snapshot_counts))
            coap_core = self.coap.authenticator.core
            self.health.authentications.append(("coap", lambda: coap_core.outcomes))
            uploads = self.coap.server
            self.health.gauges["coap_partial_uploads"] = lambda: float(uploads.partial_uploads)
        if config.metrics.enabled:
            self.exporter = _serve_metrics(config, self.health, self.db_path)
        if config.http.enabled:
            self.front_door = await _open_front_door(config, self.state_dir, env, gateway)
            if self.front_door is not None:
                self.front_door.device_refusals = self.refusals
                self.front_door.live_counts = functools.partial(live_counts, self.health)
                self.front_door.market = self.market
                if self.meters is not None:
                    self.front_door.meter_links.update(self.meters.links())

    def retime(self, config: Config) -> None:
        """Apply the :data:`LIVE` settings of a reloaded ``config`` to every part that uses them."""
        self.pipeline.checker.window = clock_window(config.devices)  # CoAP's pipeline's too
        self.mqtt.retime(config)
        self.coap.retime(config)

    async def stop(self) -> None:
        """Stop taking work, commit and acknowledge what is in flight, close everything."""
        if self.front_door is not None:
            await self.front_door.stop()
        self.mqtt.stop_taking()
        self.coap.stop_taking()
        self.recorder.close()  # commits what is queued; the acks go out before the link closes
        if self.market is not None:
            await self.market.stop()
        if self.homeassistant is not None:
            await self.homeassistant.stop()
        await self.mqtt.stop()
        await self.coap.stop()
        if self.meters is not None:
            self.meters.stop()
        if self.inverters is not None:
            self.inverters.stop()
        if self.anchoring is not None:
            await self.anchoring.stop()
        if self.exporter is not None:
            self.exporter.shutdown()
        self.lookups.close()
        self.gateway.close()


def _start_homeassistant(config: Config, state_dir: Path, env: Mapping[str, str]) -> Any:
    """Home Assistant discovery and states (``run/homeassistant.py``), imported only when on."""
    if not config.mqtt.enabled:
        raise ConfigError(f"{config.source}: [homeassistant] needs [mqtt] enabled")
    from gateway import __version__
    from gateway.run.homeassistant import HomeAssistantSide

    side = HomeAssistantSide(config, state_dir, mqtt_password(config, env), version=__version__)
    side.start(gateway_tls(config, state_dir))
    return side


async def serve(
    config: Config,
    state_dir: Path,
    env: Mapping[str, str],
    stop: asyncio.Event,
    reload: asyncio.Event | None = None,
) -> None:
    """Run until ``stop`` is set; ``reload`` (SIGHUP) re-reads the configuration."""
    notifier = Notifier(env)
    parts = _Parts(config, state_dir, env)
    health = parts.health
    chores: list[asyncio.Task[None]] = []
    try:
        await parts.start()
        log.info("gateway %s running (state %s)", parts.gateway.did, state_dir)
        notifier.ready(status_line(health))
        chores.append(asyncio.ensure_future(_keep_telling(notifier, health)))
        if reload is not None:
            chores.append(
                asyncio.ensure_future(_reloads(reload, config, parts.retime, notifier, health))
            )
        await stop.wait()
    finally:
        log.info("stopping")
        notifier.stopping()
        for chore in chores:
            chore.cancel()
        await parts.stop()
        notifier.close()


async def _open_front_door(
    config: Config, state_dir: Path, env: Mapping[str, str], gateway: Gateway
) -> Any:
    """The HTTP edge, or None when its port cannot be had (readings matter more)."""
    from gateway.run.http import open_front_door

    http = config.http
    try:
        return await open_front_door(config, state_dir, env, gateway)
    except OSError as exc:
        log.error(
            "cannot serve HTTP on %s port %d (%s); running without the front door",
            http.host,
            http.port,
            exc,
        )
        return None


def _serve_metrics(config: Config, health: Health, db_path: Path) -> Any:
    """The metrics exporter, or None when its port cannot be had (readings matter more)."""
    where = f"{config.metrics.host}:{config.metrics.port}"
    try:
        exporter = metrics.serve(health, db_path, config.metrics.host, config.metrics.port)
    except OSError as exc:
        log.error("cannot serve metrics on %s (%s); running without them", where, exc)
        return None
    log.info("metrics on http://%s/metrics", where)
    return exporter


def status_line(health: Health) -> str:
    """One line for ``systemctl status``: readings, refusals, connections."""
    counts: dict[str, int] = {}
    for _, source in health.readings:
        for outcome, n in source().items():
            counts[outcome] = counts.get(outcome, 0) + n
    accepted = counts.pop("accepted", 0) + counts.pop("duplicate", 0)
    refused = sum(counts.values())
    links = ", ".join(
        f"{peer} {'up' if is_up() else 'DOWN'}"
        for peer, is_up in sorted(health.connections.items())
    )
    return f"{accepted} readings accepted, {refused} refused" + (f"; {links}" if links else "")


async def _keep_telling(notifier: Notifier, health: Health) -> None:
    """From the event loop (a hung loop stops it, and systemd's watchdog restarts us):
    ``WATCHDOG=1`` twice per watchdog interval, and the status line every 10 s."""
    interval = min(10.0, notifier.watchdog_seconds / 2) if notifier.watchdog_seconds else 10.0
    last_status = 0.0
    while True:
        notifier.watchdog()
        now = time.monotonic()
        if now - last_status >= 10.0:
            last_status = now
            notifier.status(status_line(health))
        await asyncio.sleep(interval)


async def _reloads(
    reload: asyncio.Event,
    config: Config,
    retime: Callable[[Config], None],
    notifier: Notifier,
    health: Health,
) -> None:
    """SIGHUP: check the configuration file again; apply what can change without dropping
    a connection; name what needs a restart. An invalid file changes nothing."""
    running = config
    while True:
        await reload.wait()
        reload.clear()
        notifier.reloading()
        try:
            running = apply_reload(running, retime)
        finally:
            notifier.ready(status_line(health))


def apply_reload(running: Config, retime: Callable[[Config], None]) -> Config:
    """Reload from ``running.source``; ``retime`` the running parts when a :data:`LIVE`
    setting changed. Returns the configuration now in force."""
    if not Path(running.source).is_file():
        log.warning("reload: no configuration file to read (running on built-in defaults)")
        return running
    try:
        new = load_config(Path(running.source))
    except DidgwError as exc:
        log.error("reload refused, the running configuration stays: %s", exc)
        return running
    changed = config_changes(running, new)
    if changed & LIVE:
        retime(new)
    for key in sorted(changed):
        how = "applied" if key in LIVE else "takes effect at the next restart"
        log.info("reload: %s changed; %s", key, how)
    if not changed:
        log.info("reload: configuration unchanged")
    return new


def config_changes(old: Config, new: Config) -> set[str]:
    """``section.key`` for every setting whose value differs."""
    changed = set()
    for name in SECTIONS:
        before, after = getattr(old, name), getattr(new, name)
        for item in dataclasses.fields(before):
            if getattr(before, item.name) != getattr(after, item.name):
                changed.add(f"{name}.{item.name}")
    return changed


def take_secrets(environ: MutableMapping[str, str]) -> dict[str, str]:
    """A copy of ``environ`` for the gateway's own use, and ``environ`` without the secrets.

    Removed from ``os.environ``, a variable is gone from the C environment too, which is
    what every process started afterwards inherits (the reading workers, multiprocessing's
    helper); the workers get the broker password through their start-up pipe instead. The
    kernel's copy of the gateway's initial environment (``/proc/<pid>/environ``, readable by
    its own user and root) cannot be changed: a password file keeps the secret out of it.
    """
    env = dict(environ)
    for name in SECRET_VARIABLES:
        environ.pop(name, None)
    return env


def run(config: Config, state_dir: Path) -> None:
    """Blocking entry point for ``didgw run``: serve until SIGTERM or SIGINT; SIGHUP reloads."""
    import signal

    env = take_secrets(os.environ)

    async def main() -> None:
        stop, reload = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        await serve(config, state_dir, env, stop, reload)

    # Held while the gateway runs: a restore refuses this state until it stops.
    with holding(state_dir, "didgw run"):
        asyncio.run(main())

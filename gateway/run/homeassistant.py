"""Home Assistant inside ``didgw run``: discovery and states for the households that opted in.

A connection of its own to the broker (the gateway's account, on the loopback listener),
because its last will is Home Assistant's availability: it publishes ``online`` retained on
``<prefix>/ha/status`` whenever it (re)connects, ``offline`` when it stops, and the broker
publishes ``offline`` for it if the gateway dies. Every ``[homeassistant] poll_seconds``, on
one thread of its own with its own database connection, it reads the opt-in list and each
household's figures (``market/homeassistant_households.py``) and hands the core
(``market/homeassistant.py``) what to build; what comes back is published:

- a household new on the list, or whose entities changed (an inverter appeared): her
  discovery message, retained;
- her state, retained, when it changed and at most every ``state_every_seconds``
  (:class:`~gateway.market.homeassistant.StateGate`);
- a household gone from the list (opted out, suspended, revoked): empty retained messages
  on her discovery and state topics, which remove her device from Home Assistant. At start,
  households on the list that are no longer active are cleared too.

After a reconnect everything is published again (the broker may have restarted without its
retained messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.auth import homeassistant_access as access
from gateway.auth.broker import CLIENT_ID_PREFIX
from gateway.config import Config
from gateway.db import DB_NAME, connect
from gateway.market import homeassistant as core
from gateway.market import homeassistant_households as households
from gateway.transports.mqtt import MqttLink

log = logging.getLogger(__name__)

ONLINE, OFFLINE = b"online", b"offline"

#: (topic, payload) to publish retained.
Message = tuple[str, bytes]


def link_client_id(password: str) -> str:
    """This connection's client id: stable, and known only to who knows the password."""
    digest = hmac.new(password.encode(), b"didgw homeassistant link", hashlib.sha256).hexdigest()
    return f"{CLIENT_ID_PREFIX}homeassistant-{digest[:32]}"


class Publisher:
    """What to publish, tick by tick (the part of this side that needs no broker)."""

    def __init__(
        self,
        db_path: Path,
        *,
        prefix: str,
        version: str,
        every_s: float,
        inverter: households.InverterLookup = households.recorded_inverter,
    ) -> None:
        self._db = connect(db_path)
        self._prefix, self._version = prefix, version
        self._inverter = inverter
        self.gate = core.StateGate(every_s)
        self._configs: dict[str, bytes] = {}  # node -> discovery message published
        self._started = False

    def republish(self) -> None:
        """Forget what went out: the next step publishes everything again."""
        self.gate.forget()
        self._configs.clear()

    def step(self, now_s: float) -> list[Message]:
        prefix = self._prefix
        current = {h.node: h for h in households.opted_in(self._db)}
        gone = set(self._configs) - set(current)
        if not self._started:  # cleared on a former run's opt-out: clear again, it is cheap
            self._started = True
            listed = {access.node_id(str(r["household"])) for r in households.listing(self._db)}
            gone |= listed - set(current)
        messages: list[Message] = []
        for node in sorted(gone):
            messages.append((access.discovery_topic(prefix, node), b""))
            messages.append((access.state_topic(prefix, node), b""))
            self._configs.pop(node, None)
            self.gate.forget(node)
        for node, household in current.items():
            snapshot = households.snapshot(self._db, household.did, self._inverter)
            config = core.encode(
                core.discovery_payload(household, snapshot, prefix=prefix, version=self._version)
            )
            if self._configs.get(node) != config:
                messages.append((access.discovery_topic(prefix, node), config))
                self._configs[node] = config
                self.gate.forget(node)  # the state follows its entities at once
            state = core.encode(core.state_payload(snapshot))
            if self.gate.due(node, state, now_s):
                messages.append((access.state_topic(prefix, node), state))
        return messages

    def close(self) -> None:
        self._db.close()


class HomeAssistantSide:
    def __init__(
        self,
        config: Config,
        state_dir: Path,
        password: str,
        *,
        version: str,
        inverter: households.InverterLookup = households.recorded_inverter,
    ) -> None:
        settings, mqtt = config.homeassistant, config.mqtt
        self._poll = settings.poll_seconds
        self._status = access.status_topic(mqtt.prefix)
        self.publisher = Publisher(
            state_dir / DB_NAME,
            prefix=mqtt.prefix,
            version=version,
            every_s=settings.state_every_seconds,
            inverter=inverter,
        )
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="didgw-homeassistant")
        self._link_settings = (mqtt.host, mqtt.port, mqtt.username, password)
        self.link: MqttLink | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, tls: ssl.SSLContext | None = None) -> None:
        host, port, username, password = self._link_settings
        self.link = MqttLink(
            host=host,
            port=port,
            username=username,
            password=password,
            client_id=link_client_id(password),
            subscriptions=[],
            on_message=lambda topic, payload: None,
            loop=asyncio.get_running_loop(),
            tls=tls,
            will=(self._status, OFFLINE),
        )
        self.link.start()
        self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        link = self.link
        assert link is not None  # noqa: S101 - started before the loop
        seen = 0
        while True:
            try:
                await link.connected.wait()
                if link.connects != seen:  # (re)connected: online, and everything again
                    seen = link.connects
                    await loop.run_in_executor(self._pool, self.publisher.republish)
                    link.publish(self._status, ONLINE, retain=True)
                messages = await loop.run_in_executor(
                    self._pool, self.publisher.step, time.monotonic()
                )
                for topic, payload in messages:
                    link.publish(topic, payload, retain=True)
            except Exception as exc:  # the next tick tries again
                log.error("homeassistant: %s", exc)
            await asyncio.sleep(self._poll)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.link is not None:
            if self.link.connected.is_set():
                info = self.link.publish_tracked(self._status, OFFLINE, retain=True)
                with contextlib.suppress(RuntimeError, ValueError):  # lost meanwhile: the
                    await asyncio.to_thread(info.wait_for_publish, 2.0)  # will says offline
            self.link.stop()
        self._pool.submit(self.publisher.close)
        self._pool.shutdown(wait=True)

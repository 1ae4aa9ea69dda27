"""Devices over MQTT: authentication, their broker sessions, and their readings.

Glue between the MQTT link (``transports/mqtt.py``), the sans-IO handshake and
reading checks (``auth/``), the broker sessions (``broker_sessions.py``) and the
reading pipeline (``ingest.py``). Everything runs on the event loop except writing
the deny file and administering the broker, which block and so run on a thread.

A device's broker session is a token the gateway signs (its broker password, in
the grant): the broker's didgw plugin checks it and takes the device's topics from
it, so a first session, a renewal or an expiry changes nothing in the broker, and
the authentication rate is the gateway's. A device suspended, revoked or re-keyed
(checked every half second against the registry, which is the source of truth)
has its tokens voided in the deny file, which the plugin reads within a tick and
acts on by disconnecting it. At start-up the gateway voids the tokens of the
devices changed so while it was not running (within the longest a token lives),
and removes the broker accounts named by DIDs that gateways before tokens made.

(Before tokens, each session was an account of mosquitto's dynamic-security plugin,
whose every change rewrites its whole file while the broker routes nothing: 44 ms
with 100 accounts, 87 ms with 10,000. docs/development.md has the comparison.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.auth import broker as policy
from gateway.auth.mqtt_auth import Authenticator
from gateway.ops.logs import LogBudget
from gateway.registry import Registry
from gateway.run.broker_sessions import KEEP_SECONDS, BrokerSessions
from gateway.run.ingest import ReadingPipeline
from gateway.transports.dynsec import DynsecAdmin

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], None]
T = TypeVar("T")


#: Registry changes after which a device's earlier broker sessions must end.
BARRING = frozenset({"suspend", "revoke", "rotate"})

#: Readings and authentications being handled at once before the gateway says it is behind
#: (the broker drops QoS 1 messages to a subscriber whose queue is full).
BACKLOG_WARNING = 10_000


@dataclass
class _Session:
    did: str
    expires_ms: int


class MqttDevices:
    """Serve the auth and readings topics of one prefix."""

    def __init__(
        self,
        *,
        prefix: str,
        authenticator: Authenticator,
        pipeline: ReadingPipeline,
        registry: Registry,
        broker: DynsecAdmin,
        sessions: BrokerSessions,
        publish: Publish,
        shared_readings: bool = False,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._prefix = prefix
        self._auth = authenticator
        self._pipeline = pipeline
        self._registry = registry
        self._broker = broker
        self._tokens = sessions
        self._publish = publish
        self._clock_ms = clock_ms
        self._sessions: dict[str, _Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._readings_prefix = f"{prefix}/d/"
        self._shared = shared_readings
        self._log_budget = LogBudget("authentication refusals", logger=log)
        self.closing = False  # set when stopping: readings are no longer taken

    @property
    def subscriptions(self) -> list[str]:
        """With reading workers, readings go to them (``run/workers.py``), not to us."""
        if self._shared:
            return [f"{self._prefix}/auth/req"]
        return [f"{self._prefix}/auth/req", f"{self._prefix}/d/+/readings"]

    # -- messages (called on the event loop) ------------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic == f"{self._prefix}/auth/req":
            self._on_auth(payload)  # no awaiting in it: answered at once, not as a task
        elif self.closing:
            return  # not acknowledged: the device sends it again to the next gateway run
        elif topic.startswith(self._readings_prefix) and topic.endswith("/readings"):
            did = topic[len(self._readings_prefix) : -len("/readings")]
            acks = f"{self._prefix}/d/{did}/acks"
            self._pipeline.handle(did, payload, lambda ack: self._publish(acks, ack.payload()))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_auth(self, payload: bytes) -> None:
        outgoing, grant = self._auth.on_request(payload, self._clock_ms())
        if grant is not None:
            self._sessions[grant.did] = _Session(grant.did, grant.expires_ms)
        elif (refusal := self._auth.core.last_refusal) is not None and self._log_budget.take(
            self._clock_ms(), refusal.reason
        ):
            log.info("authentication refused: %s", refusal)
        if outgoing is not None:  # None: too broken to know where to answer
            self._publish(outgoing.topic, outgoing.payload)

    async def _administer(self, work: Callable[..., T], *args: Any) -> T:
        """Run blocking broker administration or file writing off the event loop."""
        return await asyncio.to_thread(work, *args)

    # -- the broker --------------------------------------------------------------

    def prepare_broker(self) -> int:
        """Apply the anonymous policy and remove the broker accounts named by DIDs
        (sessions are tokens now). Returns how many accounts were removed. Run before
        taking messages, and again when the broker comes back."""
        group = self._broker.execute([{"command": "getAnonymousGroup"}])[0]
        current = str((group.get("data") or {}).get("group", {}).get("groupname", ""))
        self._broker.execute(
            policy.anonymous_policy_commands(self._prefix, anonymous_group=current),
            ok_errors=policy.POLICY_OK_ERRORS,
        )
        commands = policy.legacy_removals(self._broker.list_clients(), self._broker.list_roles())
        if commands:
            self._broker.execute(commands, ok_errors=policy.RECONCILE_OK_ERRORS)
        return sum(1 for c in commands if c["command"] == "deleteClient")

    def void_barred_while_away(self) -> None:
        """Void the tokens of devices suspended, revoked or re-keyed while the gateway was not
        watching (within the longest a token lives), in one write. Run once, at start."""
        since = self._clock_ms() / 1000 - KEEP_SECONDS
        changes = self._registry.changes_after(since)
        self._tokens.void_each({c.device: c.ts for c in changes if c.action in BARRING})

    def spawn_reconcile(self) -> None:
        """After the broker came back: put the policy back (its file may be another)."""
        self._spawn(self._reconcile())

    async def _reconcile(self) -> None:
        try:
            removed = await self._administer(self.prepare_broker)
        except Exception as exc:  # the next reconnect tries again
            log.error("cannot reconcile the broker after a reconnect: %s", exc)
        else:
            log.info("broker reconnected; removed %d accounts named by DIDs", removed)

    async def watch(self, interval: float = 0.5) -> None:
        """Void the tokens of devices no longer active (and forget expired sessions).

        Registry changes are read from its audit trail (only what changed since
        the last look), so a revocation made by ``didgw device revoke`` in another
        process takes effect within ``interval``.
        """
        seen = self._registry.last_change()
        while True:
            await asyncio.sleep(interval)
            now = self._clock_ms()
            self._log_budget.flush(now)
            changed = self._registry.changes_since(seen)
            if changed:
                seen = changed[-1].id
            backlog = len(self._tasks) + self._pipeline.backlog
            if backlog > BACKLOG_WARNING:
                log.warning(
                    "falling behind: %d messages in progress; the broker may drop readings "
                    "(devices resend them until acknowledged)",
                    backlog,
                )
            barred = {r.device for r in changed if r.action in BARRING}
            for did in [d for d, s in self._sessions.items() if s.expires_ms <= now]:
                del self._sessions[did]  # the broker ends it: the token says until when
            if barred:
                await self._void(barred)

    async def _void(self, dids: set[str]) -> None:
        """Void the tokens of ``dids``: the broker disconnects them within a tick."""
        while True:
            try:
                await self._administer(self._tokens.void, dids)
            except Exception as exc:  # the disk: try again, a revocation must not be lost
                log.error("cannot void the broker sessions of %s: %s", sorted(dids), exc)
                await asyncio.sleep(1)
                continue
            break
        for did in dids:
            if self._sessions.pop(did, None) is not None:
                log.info("ended the broker session of %s", did)

    async def drain(self) -> None:
        """Wait for readings and authentications in progress (clean shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

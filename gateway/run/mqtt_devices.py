"""Devices over MQTT: authentication, their broker accounts, and their readings.

Glue between the MQTT link (``transports/mqtt.py``), the sans-IO handshake and
reading checks (``auth/``), the broker administration (``transports/dynsec.py``)
and the reading pipeline (``ingest.py``). Everything runs on the event loop
except broker administration, which blocks and so runs on a worker thread.

Broker accounts are ephemeral: one is created when a device authenticates
(before it is told its password) and deleted when its session expires, when the
device is suspended, revoked or re-keyed (checked every half second against the
registry, which is the source of truth), and, at start-up, for every device
account this process did not create (the broker's own persistence is not trusted).
Accounts are deleted before their roles: mosquitto 2.0.11 crashes when a role
is deleted under a connected client.

mosquitto's plugin rewrites its whole file on every change, so the number of
changes per authentication sets the authentication rate. A first session costs
two (the device's role and its account); a renewal while the account exists,
one (its new password); a session after an expired one, one (the role outlives
the account until the device is suspended, revoked or re-keyed).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.auth import broker as policy
from gateway.auth.mqtt_auth import Authenticator, Grant
from gateway.ops.logs import LogBudget
from gateway.registry import Registry
from gateway.run.ingest import ReadingPipeline
from gateway.transports.dynsec import DynsecAdmin, DynsecError

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], None]
T = TypeVar("T")


#: Readings and authentications being handled at once before the gateway says it is behind
#: (the broker drops QoS 1 messages to a subscriber whose queue is full).
BACKLOG_WARNING = 10_000


@dataclass
class _Session:
    did: str
    expires_ms: int


class AccountLock:
    """An asyncio lock per DID, kept only while someone holds or waits for it (changes to
    one broker account, devices' and people's, one at a time)."""

    def __init__(self, locks: dict[str, tuple[asyncio.Lock, int]], did: str) -> None:
        self._locks, self._did = locks, did

    async def __aenter__(self) -> None:
        lock, users = self._locks.get(self._did) or (asyncio.Lock(), 0)
        self._locks[self._did] = (lock, users + 1)
        await lock.acquire()

    async def __aexit__(self, *_: object) -> None:
        lock, users = self._locks[self._did]
        lock.release()
        if users == 1:
            del self._locks[self._did]
        else:
            self._locks[self._did] = (lock, users - 1)


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
        publish: Publish,
        shared_readings: bool = False,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._prefix = prefix
        self._auth = authenticator
        self._pipeline = pipeline
        self._registry = registry
        self._broker = broker
        self._publish = publish
        self._clock_ms = clock_ms
        self._sessions: dict[str, _Session] = {}
        self._roles: set[str] = set()  # devices whose broker role exists (we created it)
        self._account_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._readings_prefix = f"{prefix}/d/"
        self._shared = shared_readings
        self._log_budget = LogBudget("authentication refusals", logger=log)
        self.closing = False  # set when stopping: readings are no longer taken
        #: DIDs of people's live sessions (``mqtt_people.py``): their accounts are named by
        #: DIDs too, and the reconciliation must keep them.
        self.people_accounts: Callable[[], list[str]] = list

    @property
    def subscriptions(self) -> list[str]:
        """With reading workers, readings go to them (``run/workers.py``), not to us."""
        if self._shared:
            return [f"{self._prefix}/auth/req"]
        return [f"{self._prefix}/auth/req", f"{self._prefix}/d/+/readings"]

    # -- messages (called on the event loop) ------------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic == f"{self._prefix}/auth/req":
            self._spawn(self._on_auth(payload))
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

    async def _on_auth(self, payload: bytes) -> None:
        outgoing, grant = self._auth.on_request(payload, self._clock_ms())
        if grant is not None:
            async with self._account_lock(grant.did):
                live = grant.did in self._sessions
                try:
                    await self._administer(
                        self._open_account, grant, live, grant.did in self._roles
                    )
                except Exception as exc:  # the broker refused: the device gets no access
                    log.error("cannot create the broker account of %s: %s", grant.did, exc)
                    outgoing = self._auth.refuse_unavailable(grant)
                else:
                    self._sessions[grant.did] = _Session(grant.did, grant.expires_ms)
                    self._roles.add(grant.did)
        elif (refusal := self._auth.core.last_refusal) is not None and self._log_budget.take(
            self._clock_ms(), refusal.reason
        ):
            log.info("authentication refused: %s", refusal)
        if outgoing is not None:  # None: too broken to know where to answer
            self._publish(outgoing.topic, outgoing.payload)

    def _open_account(self, grant: Grant, live: bool, has_role: bool) -> None:
        """The fewest changes that give the device an account with this password (see the
        module docstring); if the broker does not hold what we expect, start clean."""
        did, password = grant.did, grant.password
        if live:
            commands = policy.device_password_commands(did, password)
        else:
            commands = policy.device_client_commands(did, password, self._prefix)
            if not has_role:
                commands = policy.device_role_commands(did, self._prefix) + commands
        try:
            self._broker.execute(commands)
        except DynsecError as exc:
            log.info("broker account of %s not as expected (%s); creating it again", did, exc)
            self._broker.execute(
                policy.device_removal_commands(did), ok_errors=policy.RECONCILE_OK_ERRORS
            )
            self._broker.execute(
                policy.device_role_commands(did, self._prefix)
                + policy.device_client_commands(did, password, self._prefix)
            )

    def _close_account(self, did: str, *, keep_role: bool) -> None:
        commands = (
            policy.device_account_removal_commands(did)
            if keep_role
            else policy.device_removal_commands(did)
        )
        self._broker.execute(commands, ok_errors=policy.RECONCILE_OK_ERRORS)

    async def _administer(self, work: Callable[..., T], *args: Any) -> T:
        """Run blocking broker administration off the event loop."""
        return await asyncio.to_thread(work, *args)

    def _account_lock(self, did: str) -> AccountLock:
        """Changes to one device's account, one at a time (a renewal racing its expiry)."""
        return AccountLock(self._account_locks, did)

    # -- accounts ----------------------------------------------------------------

    def prepare_broker(self) -> int:
        """Apply the anonymous policy and remove every device account this process did not make.

        Returns how many stale accounts were removed. Run before taking messages.
        """
        group = self._broker.execute([{"command": "getAnonymousGroup"}])[0]
        current = str((group.get("data") or {}).get("group", {}).get("groupname", ""))
        self._broker.execute(
            policy.anonymous_policy_commands(self._prefix, anonymous_group=current),
            ok_errors=policy.POLICY_OK_ERRORS,
        )
        clients = self._broker.list_clients()
        wanted = set(self._sessions) | set(self.people_accounts())
        commands = policy.reconcile(wanted, clients, self._broker.list_roles())
        self._roles &= set(self._sessions)  # the others' roles are deleted with them
        if commands:
            self._broker.execute(commands, ok_errors=policy.RECONCILE_OK_ERRORS)
        return sum(1 for c in commands if c["command"] == "deleteClient")

    def spawn_reconcile(self) -> None:
        """After the broker came back: put the policy back and remove accounts we did not make."""
        self._spawn(self._reconcile())

    async def _reconcile(self) -> None:
        try:
            removed = await self._administer(self.prepare_broker)
        except Exception as exc:  # the next reconnect tries again
            log.error("cannot reconcile the broker after a reconnect: %s", exc)
        else:
            log.info("broker reconnected; removed %d device accounts it should not have", removed)

    async def watch(self, interval: float = 0.5) -> None:
        """Close accounts whose session expired or whose device is no longer active.

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
            barred = {r.device for r in changed if r.action in ("suspend", "revoke", "rotate")}
            expired = {did for did, s in self._sessions.items() if s.expires_ms <= now}
            for did in barred | expired:
                await self._close(did, barred=did in barred, now=now)

    async def _close(self, did: str, *, barred: bool, now: int) -> None:
        """End a session: the account goes; the role too when the device may not return."""
        async with self._account_lock(did):
            session = self._sessions.get(did)
            if session is None and not (barred and did in self._roles):
                return
            if not barred and session is not None and session.expires_ms > now:
                return  # renewed while we waited for the lock
            try:
                await self._administer(
                    functools.partial(self._close_account, did, keep_role=not barred)
                )
            except Exception as exc:  # retried on the next round
                log.error("cannot delete the broker account of %s: %s", did, exc)
                self._sessions[did] = _Session(did, 0)
                return
            self._sessions.pop(did, None)
            if barred:
                self._roles.discard(did)
            if session is not None:
                log.info("closed the broker account of %s", did)

    async def drain(self) -> None:
        """Wait for readings and authentications in progress (clean shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

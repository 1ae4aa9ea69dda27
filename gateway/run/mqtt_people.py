"""People over MQTT: wallets authenticating with presentations, their sessions and requests.

Glue between the MQTT link, the sans-IO wallet protocol (``auth/wallet.py``,
``auth/person_requests.py``), the broker sessions (``broker_sessions.py``), the registry
and the market. Everything that touches the database (verifying presentations, whose
status check reads the revocation list; registry changes; the record) runs on one thread
of its own with its own connection; writing the deny file on worker threads; the rest on
the event loop.

A person's broker session is a token the gateway signs, as a device's is (kind
``person``: her request and response topics and the revocation list). It ends when it
expires (at the latest when a credential behind it does: the token says so), and within
``interval`` of the revocation or suspension of a credential behind it (``didgw cred
revoke`` or ``suspend`` in another process: the credentials table is watched), when her
tokens are voided in the deny file. At start-up the gateway voids the tokens of the
people whose credentials were revoked or suspended while it was not watching.

The gateway's revocation list is published retained on ``<prefix>/status-list`` at
start, after a reconnect, on every revocation and at half its validity.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from gateway.auth import broker as policy
from gateway.auth import person_requests as requests
from gateway.auth.wallet import PersonGrant, WalletAuthenticator
from gateway.chain.store import NewEntry
from gateway.errors import DidgwError
from gateway.identity.signing import Signer
from gateway.ops.logs import LogBudget
from gateway.run.broker_sessions import KEEP_SECONDS, BrokerSessions
from gateway.run.people import PeopleDesk, PersonSession

log = logging.getLogger(__name__)

Publish = Callable[..., None]
T = TypeVar("T")


class MqttPeople:
    """Serve the wallet auth topic and the people's request topics of one prefix."""

    def __init__(
        self,
        *,
        prefix: str,
        authenticator: WalletAuthenticator,
        desk: PeopleDesk,
        sessions: BrokerSessions,
        signer: Signer,
        publish: Publish,
        market: Any = None,
        status_every_s: float = 43200.0,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._prefix = prefix
        self._auth = authenticator
        self._desk = desk
        self._tokens = sessions
        self._signer = signer
        self._publish = publish
        self._market = market
        self._status_every = status_every_s
        self._clock_ms = clock_ms
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="didgw-people")
        self._sessions: dict[str, PersonSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._auth_topic = policy.wallet_auth_topic(prefix)
        self._log_budget = LogBudget("wallet authentication refusals", logger=log)
        self._req = (f"{prefix}/p/", "/req")

    def retime(self, *, session_ms: int, clock_skew_ms: int) -> None:
        """A reload's session length and clock tolerance, for the handshake and for the
        presentations' times. Both are read on the desk's thread; each value is replaced
        whole, so a presentation being checked sees the old one or the new one."""
        self._auth.core.retime(session_ms=session_ms, clock_skew_ms=clock_skew_ms)
        self._desk.skew = clock_skew_ms / 1000

    @property
    def subscriptions(self) -> list[str]:
        return [self._auth_topic, policy.person_requests_filter(self._prefix)]

    async def prepare(self) -> None:
        """Void the tokens of people whose credentials were revoked or suspended while the
        gateway was not watching (within the longest a token lives)."""
        since = self._clock_ms() - KEEP_SECONDS * 1000
        barred = await self._desk_work(self._desk.barred_since, since)
        await asyncio.to_thread(self._tokens.void_each, {did: ms / 1000 for did, ms in barred})

    def handles(self, topic: str) -> bool:
        head, tail = self._req
        return topic == self._auth_topic or (topic.startswith(head) and topic.endswith(tail))

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic == self._auth_topic:
            self._spawn(self._on_auth(payload))
        else:
            head, tail = self._req
            self._spawn(self._on_request(topic[len(head) : -len(tail)], payload))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _desk_work(self, work: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(work, *args)
        )

    # -- authentication ------------------------------------------------------------

    async def _on_auth(self, payload: bytes) -> None:
        outgoing, grant = await self._desk_work(self._auth.on_request, payload, self._clock_ms())
        if grant is not None:
            outgoing = await self._start_session(grant, outgoing)
        elif (refusal := self._auth.core.last_refusal) is not None and self._log_budget.take(
            self._clock_ms(), refusal.reason
        ):
            log.info("wallet authentication refused: %s", refusal)
        if outgoing is not None:
            self._publish(outgoing.topic, outgoing.payload)

    async def _start_session(self, grant: PersonGrant, outgoing: Any) -> Any:
        try:
            disclosure, digests = await self._desk_work(
                self._desk.record_session, grant, self._clock_ms()
            )
        except Exception as exc:  # not on the record: no session
            log.error("cannot record the session of %s: %s", grant.did, exc)
            return self._auth.refuse_unavailable(grant)  # her token is never sent
        self._sessions[grant.did] = PersonSession(
            grant.expires_ms, grant.permissions, digests, disclosure, grant.status_indexes
        )
        log.info("%s authenticated with a presentation: %s", grant.did, grant.permissions.names())
        return outgoing

    # -- requests ------------------------------------------------------------------

    async def _on_request(self, did: str, payload: bytes) -> None:
        try:
            topic = policy.person_responses_topic(did, self._prefix)
        except DidgwError:
            return  # not a DID: nobody's account can publish there
        session = self._sessions.get(did)
        request_id: str | None = None
        try:
            if session is None or session.expires_ms <= self._clock_ms():
                raise requests.RequestRefused("no_session", "authenticate again")
            request = requests.parse_request(payload)
            request_id = request.id
            requests.allowed(session.permissions, request)
            answer = await self._carry_out(did, request, session)
        except requests.RequestRefused as refusal:
            log.info("request of %s refused: %s", did, refusal)
            rid = refusal.request_id or request_id
            answer = requests.response(rid, "refused", reason=refusal.reason)
        self._publish(topic, answer)

    async def _carry_out(
        self, did: str, request: requests.PersonRequest, session: PersonSession
    ) -> bytes:
        if request.action == "order":
            return await self._order(did, request, session)
        try:
            await self._desk_work(self._desk.manage, did, request, session)
        except DidgwError as exc:
            raise requests.RequestRefused("registry_refused", str(exc), request.id) from None
        except Exception as exc:
            raise requests.RequestRefused("unavailable", str(exc), request.id) from None
        log.info("%s: %s %s", did, request.action, request.target)
        return requests.response(request.id, "done")

    async def _order(
        self, did: str, request: requests.PersonRequest, session: PersonSession
    ) -> bytes:
        if self._market is None:
            raise requests.RequestRefused("market_disabled", "[market] is off", request.id)

        def may_trade(household: str, side: str) -> str | None:
            decision = session.permissions.may_trade_for(household, side)
            if decision:
                return None
            return "wrong_role" if decision.reason == "wrong_role" else "not_member"

        def action(order_entry: int) -> NewEntry:
            return requests.action_entry(
                did,
                request,
                digests=session.digests,
                disclosure=session.disclosure,
                order=order_entry,
            )

        token = request.fields["order"].encode("ascii", "replace")
        body = await self._market.submit_person(token, did, may_trade, action)
        return requests.response(request.id, body.pop("status"), **body)

    # -- expiry, revocation, the status list ------------------------------------------

    async def watch(self, interval: float = 0.5) -> None:
        """Close expired, revoked and suspended sessions; republish the list when it changes."""
        seen = -1
        last_published = 0.0
        while True:
            try:
                revision, revoked = await self._desk_work(self._desk.revocations)
                stale = time.monotonic() - last_published >= self._status_every
                if revision != seen or stale:
                    await self.publish_status()
                    seen, last_published = revision, time.monotonic()
                now = self._clock_ms()
                self._log_budget.flush(now)
                for did, s in list(self._sessions.items()):
                    if s.expires_ms <= now or s.status_indexes & revoked:
                        await self._close(did, now)
            except Exception as exc:  # the next round tries again
                log.error("people: %s", exc)
            await asyncio.sleep(interval)

    async def publish_status(self) -> None:
        payload = await self._desk_work(self._desk.status_list, self._signer)
        self._publish(policy.status_list_topic(self._prefix), payload, retain=True)

    def spawn_republish(self) -> None:
        """After a reconnect: the broker may have lost the retained list."""
        self._spawn(self.publish_status())

    async def _close(self, did: str, now: int) -> None:
        """End her session: expired, the broker ends it by itself (the token says until
        when); revoked or suspended, her tokens are voided now."""
        session = self._sessions.pop(did, None)
        if session is None or session.expires_ms <= now:
            return
        await asyncio.to_thread(self._tokens.void, {did})
        log.info("ended the broker session of %s", did)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.shutdown(wait=True)
        self._desk.db.close()

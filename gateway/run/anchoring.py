"""Anchoring while the gateway runs: checkpoints out to the ledger, one round at a time.

The edge around :mod:`gateway.anchor`: it reads the clock, signs, talks to the
ledger and writes the queue. Each round (every ``[anchor] poll_seconds``, more
often while a transaction is in flight):

1. take a signed checkpoint when one is due (:func:`~gateway.anchor.queue.checkpoint_due`)
   and queue it — this needs no ledger, so checkpoints keep being taken, durably,
   while the ledger is down;
2. move the anchor in flight along (:func:`~gateway.anchor.queue.next_step`);
3. with nothing in flight, sign and send the newest queued checkpoint.

A round that cannot reach the ledger, finds the wrong chain or an account that
cannot pay records why (``didgw anchor status`` shows it), logs it once per
change, and the next round tries again. Nothing here can stop readings: the
rounds run on their own thread with their own database connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.anchor.account import FeeCapError, Fees, LedgerAccount
from gateway.anchor.encoding import (
    AnchorData,
    anchor_gas,
    did_digest,
    encode_anchor,
    note_digest,
)
from gateway.anchor.ledger import Ledger, LedgerError, LedgerUnavailable
from gateway.anchor.queue import (
    Anchor,
    AnchorQueue,
    Observation,
    Step,
    checkpoint_due,
    next_step,
)
from gateway.chain.checkpoint import checkpoint_body, sign_checkpoint
from gateway.chain.store import ChainStore
from gateway.config import AnchorSection, Config
from gateway.db import DB_NAME, connect
from gateway.identity.signing import Signer
from gateway.service import Gateway

log = logging.getLogger("didgw.anchor")

GWEI = 10**9
IN_FLIGHT_POLL = 0.25  # seconds between looks while a transaction awaits its block


class Anchorer:
    """One gateway's anchoring: checkpoint, send, follow, confirm."""

    def __init__(
        self,
        settings: AnchorSection,
        *,
        signer: Signer,
        account: LedgerAccount,
        chain: ChainStore,
        queue: AnchorQueue,
        ledger: Ledger,
    ) -> None:
        self.settings = settings
        self.signer = signer
        self.account = account
        self.chain = chain
        self.queue = queue
        self.ledger = ledger
        self._chain_checked = False
        self._health: str | None = None
        self._watched_head: int | None = None

    # -- one round -------------------------------------------------------------

    def round(self, now: float) -> float:
        """Do what is due now; return how many seconds to wait before the next round."""
        now_ms = int(now * 1000)
        self.checkpoint_if_due(now_ms)
        try:
            self._check_chain()
            self._watch(now_ms)
            self._advance(now_ms)
        except (LedgerError, FeeCapError) as exc:
            if isinstance(exc, LedgerUnavailable):
                self._chain_checked = False
            self._report(f"error: {exc}", now_ms)
        else:
            self._report("ok", now_ms)
        in_flight = self.queue.in_flight() is not None
        return (
            min(IN_FLIGHT_POLL, self.settings.poll_seconds)
            if in_flight
            else self.settings.poll_seconds
        )

    def checkpoint_if_due(self, now_ms: int) -> bool:
        """Sign and queue a checkpoint if enough is new; True if one was taken."""
        self.chain.resync()
        size = self.chain.size
        last = self.queue.last()
        if not checkpoint_due(
            size=size,
            last_size=0 if last is None else last.size,
            last_ms=None if last is None else last.created_ms,
            now_ms=now_ms,
            every_entries=self.settings.every_entries,
            every_seconds=self.settings.every_seconds,
        ):
            return False
        root = self.chain.root()
        text = sign_checkpoint(
            checkpoint_body(self.signer.did, size, root, now_ms // 1000), self.signer
        )
        self.chain.add_checkpoint(size, root, now_ms, text)
        self.queue.enqueue(size, root, text, now_ms=now_ms)
        return True

    def _check_chain(self) -> None:
        if self._chain_checked:
            return
        found = self.ledger.chain_id()
        if found != self.settings.chain_id:
            raise LedgerError(
                f"the ledger at {self.settings.rpc_url} is chain {found}, but [anchor] chain_id "
                f"is {self.settings.chain_id}; refusing to anchor on another chain"
            )
        self._chain_checked = True

    def _advance(self, now_ms: int) -> None:
        flight = self.queue.in_flight()
        if flight is not None:
            assert flight.tx_hash is not None and flight.raw_tx is not None  # noqa: S101
            assert flight.nonce is not None  # noqa: S101 - a sent anchor has one
            seen, mined = self._observe(flight)
            fees = Fees.of_transaction(flight.raw_tx)
            step = next_step(
                flight,
                seen,
                confirmations=self.settings.confirmations,
                max_fee=fees.max_fee,
                now_ms=now_ms,
                replace_after_seconds=self.settings.replace_after_seconds,
            )
            tx = "0x" + flight.tx_hash.hex()
            if step is Step.CONFIRM and seen.receipt is not None:
                self.queue.mark_confirmed(flight, seen.receipt, now_ms=now_ms, tx_hash=mined)
                log.info(
                    "anchored size %d in block %d (tx 0x%s)",
                    flight.size,
                    seen.receipt.block_number,
                    (mined or flight.tx_hash).hex(),
                )
            elif step is Step.WAIT:
                if seen.receipt is not None and seen.receipt.block_hash != flight.block_hash:
                    self.queue.mark_mined(flight, seen.receipt)
                return
            elif step is Step.REBROADCAST:
                log.warning(
                    "anchor tx %s (size %d) is unknown to the ledger; re-sending it",
                    tx,
                    flight.size,
                )
                self.ledger.send_raw(flight.raw_tx)
                self.queue.mark_rebroadcast(flight, now_ms=now_ms)
                return
            elif step is Step.REPRICE:
                why = (
                    f"offers {fees.max_fee / GWEI:.3f} gwei, below the base fee of "
                    f"{seen.base_fee / GWEI:.3f} gwei"
                    if fees.max_fee < seen.base_fee
                    else f"is not mined after {self.settings.replace_after_seconds:g} s"
                )
                self._reprice(flight, fees, seen.base_fee, why, now_ms)
                return
            else:
                log.warning(
                    "anchor tx %s (size %d) can never be included; sending a new one",
                    tx,
                    flight.size,
                )
                self.queue.requeue(flight)
        if self.queue.in_flight() is None:  # one at a time (a watched one may be back)
            self._send_newest(now_ms)

    def _watch(self, now_ms: int) -> None:
        """With each new block, check the confirmed anchors that are not yet final."""
        depth = self.settings.watch_blocks
        if depth == 0:
            return
        head = self.ledger.head()
        if head == self._watched_head:
            return
        for anchor in self.queue.watched(head - depth + 1):
            assert anchor.tx_hash is not None  # noqa: S101 - confirmed anchors have one
            receipt = self.ledger.receipt(anchor.tx_hash)
            if receipt is not None and receipt.block_hash == anchor.block_hash:
                continue
            tx = "0x" + anchor.tx_hash.hex()
            if receipt is not None and receipt.status == 1:
                self.queue.mark_moved(anchor, receipt)
                log.warning(
                    "anchor of size %d (tx %s) moved from block %s to %d by a "
                    "re-organisation; receipts made before name the old block",
                    anchor.size,
                    tx,
                    anchor.block_number,
                    receipt.block_number,
                )
            else:
                self.queue.unconfirm(anchor, now_ms=now_ms)
                log.warning(
                    "anchor of size %d (tx %s) is no longer in block %s: a re-organisation "
                    "took it away; following it again",
                    anchor.size,
                    tx,
                    anchor.block_number,
                )
        self._watched_head = head

    def _observe(self, flight: Anchor) -> tuple[Observation, bytes | None]:
        """What the ledger shows of the anchor's transactions; and the hash of a mined one."""
        hashes = self.queue.tx_hashes(flight)
        mined_nonce = self.ledger.nonce(self.account.address, pending=False)  # first
        receipt, mined = None, None
        for tx_hash in hashes:
            receipt = self.ledger.receipt(tx_hash)
            if receipt is not None:
                mined = tx_hash
                break
        known = receipt is not None or any(self.ledger.known(h) for h in hashes)
        base_fee = 0 if receipt is not None else self.ledger.base_fee()
        return Observation(mined_nonce, receipt, known, self.ledger.head(), base_fee), mined

    def _fees(self, base_fee: int, *, replacing: Fees | None = None) -> Fees:
        s = self.settings
        tip, cap = int(s.priority_fee_gwei * GWEI), int(s.max_fee_gwei * GWEI)
        if replacing is None:
            return Fees.for_base_fee(base_fee, priority_fee=tip, cap=cap)
        return Fees.replacing(replacing, base_fee, priority_fee=tip, cap=cap)

    def _anchor_data(self, anchor: Anchor) -> bytes:
        return encode_anchor(
            AnchorData(
                did_digest(self.signer.did),
                anchor.size,
                anchor.root,
                note_digest(anchor.checkpoint),
            )
        )

    def _check_funds(self, data: bytes, fees: Fees) -> None:
        need = anchor_gas(data) * fees.max_fee
        balance = self.ledger.balance(self.account.address)
        if balance < need:
            raise LedgerError(
                f"ledger account {self.account.address} holds {balance} wei; the next anchor may "
                f"cost up to {need} wei: fund the account"
            )

    def _reprice(self, flight: Anchor, old: Fees, base_fee: int, why: str, now_ms: int) -> None:
        """Replace the anchor's transaction by one with the same nonce and higher fees."""
        assert flight.nonce is not None and flight.tx_hash is not None  # noqa: S101
        fees = self._fees(base_fee, replacing=old)
        data = self._anchor_data(flight)
        self._check_funds(data, fees)
        chain_id = self.settings.chain_id
        signed = self.account.sign_anchor(data, chain_id=chain_id, nonce=flight.nonce, fees=fees)
        self.queue.mark_repriced(flight, signed, now_ms=now_ms)  # durable first, as in sending
        log.warning(
            "anchor tx 0x%s (size %d, nonce %d) %s; replaced by tx 0x%s offering %.3f gwei",
            flight.tx_hash.hex(),
            flight.size,
            flight.nonce,
            why,
            signed.tx_hash.hex(),
            fees.max_fee / GWEI,
        )
        self.ledger.send_raw(signed.raw)

    def _send_newest(self, now_ms: int) -> None:
        anchor = self.queue.newest_queued()
        if anchor is None:
            return
        s = self.settings
        fees = self._fees(self.ledger.base_fee())
        data = self._anchor_data(anchor)
        self._check_funds(data, fees)
        nonce = self.ledger.nonce(self.account.address, pending=True)
        signed = self.account.sign_anchor(data, chain_id=s.chain_id, nonce=nonce, fees=fees)
        # Durable first: after a crash from here on, the same bytes are re-sent.
        self.queue.mark_sent(
            anchor, signed, chain_id=s.chain_id, address=self.account.address, now_ms=now_ms
        )
        self.ledger.send_raw(signed.raw)
        log.info(
            "sent anchor of size %d (tx 0x%s, nonce %d)", anchor.size, signed.tx_hash.hex(), nonce
        )

    @property
    def healthy(self) -> bool:
        """Whether the ledger answered as expected in the last round."""
        return self._health == "ok"

    def _report(self, health: str, now_ms: int) -> None:
        if health == self._health:
            return
        if health != "ok":
            log.error("anchoring: %s", health.removeprefix("error: "))
        elif self._health is not None:
            log.info("anchoring: ledger reachable again")
        self._health = health
        self.queue.set_meta(
            {"health": health, "rpc_url": self.settings.rpc_url, "address": self.account.address},
            now_ms=now_ms,
        )


def build_anchorer(
    config: Config, state_dir: Path, env: Mapping[str, str], gateway: Gateway
) -> Anchorer:
    """An :class:`Anchorer` with its own database connection; keys loaded now (fail early)."""
    from gateway.transports.evm import EvmLedger

    settings = config.anchor
    account = LedgerAccount(gateway.ledger_key(env))
    signer = gateway.signer(env)
    db = connect(state_dir / DB_NAME)
    return Anchorer(
        settings,
        signer=signer,
        account=account,
        chain=ChainStore(db),
        queue=AnchorQueue(db),
        ledger=EvmLedger(settings.rpc_url, timeout=settings.rpc_timeout),
    )


class AnchorLoop:
    """``didgw run``'s anchoring task: rounds on one dedicated thread until stopped."""

    def __init__(self, anchorer: Anchorer) -> None:
        self.anchorer = anchorer
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="didgw-anchor")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                wait = await loop.run_in_executor(self._executor, self.anchorer.round, time.time())
            except Exception:  # a bug must not take readings down with it
                log.exception("anchoring round failed")
                wait = self.anchorer.settings.poll_seconds
            await asyncio.sleep(wait)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)
        self.anchorer.chain.close()

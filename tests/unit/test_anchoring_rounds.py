"""The anchoring loop's rounds against an in-memory ledger.

The integration tests drive real anvil for every fault it can show. Two faults it cannot:
a crash after the anchor is recorded as sent but before its bytes reach the node (the
window is a few microseconds), and a transaction replaced in this node's pool that another
node mines after all (anvil is one node). Here the ledger is a small in-memory stand-in
whose ``send_raw`` fails once, exactly in that window, and which can mine a transaction it
no longer holds. The fee rules of a replacement are also checked here, with exact numbers,
and re-organisations of exact shapes (a transaction moved to another block, one deeper than
``watch_blocks``); anvil shows replacement and a re-organised confirmed anchor for real.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import import_keeping_recursion_limit

from gateway.anchor.account import Fees, LedgerAccount
from gateway.anchor.ledger import LedgerUnavailable, TxReceipt
from gateway.anchor.queue import AnchorQueue
from gateway.chain.store import ChainStore
from gateway.config import AnchorSection
from gateway.db import connect, migrate
from gateway.identity import keystore
from gateway.identity.signing import Signer
from gateway.run.anchoring import Anchorer


class MemoryLedger:
    """Mines every transaction it accepts into the next block at once, unless told to hold.

    Holding, it keeps transactions in a pool (one per nonce: a new one replaces the old)
    until :meth:`mine` is called, like a node whose blocks are full.
    """

    def __init__(self) -> None:
        self.blocks: list[list[bytes]] = [[]]
        self.pool: dict[int, tuple[bytes, bytes]] = {}  # nonce → (hash, raw)
        self.mined: dict[bytes, int] = {}
        self.received: dict[bytes, bytes] = {}  # every transaction ever sent to it
        self.fail_next_send = False
        self.balance_wei = 10**18
        self.base_fee_wei = 10**9
        self.hold = False

    def chain_id(self) -> int:
        return 31337

    def head(self) -> int:
        return len(self.blocks) - 1

    def base_fee(self) -> int:
        return self.base_fee_wei

    def balance(self, address: str) -> int:
        return self.balance_wei

    def nonce(self, address: str, *, pending: bool) -> int:
        return len(self.mined) + (len(self.pool) if pending else 0)

    def send_raw(self, raw: bytes) -> None:
        account_module = import_keeping_recursion_limit("eth_account")
        keccak = import_keeping_recursion_limit("eth_utils").keccak

        if self.fail_next_send:
            self.fail_next_send = False
            raise LedgerUnavailable("connection reset")
        tx_hash = keccak(raw)
        assert account_module.Account.recover_transaction(raw)
        if tx_hash in self.mined:
            return
        self.received[tx_hash] = raw
        self.pool[_nonce(raw)] = (tx_hash, raw)
        if not self.hold:
            self.mine()

    def mine(self, tx_hash: bytes | None = None) -> None:
        """Mine the pool into a block; or only ``tx_hash``, even one replaced in this pool
        (another node still had it)."""
        if tx_hash is not None:
            self.pool.pop(_nonce(self.received[tx_hash]), None)  # its nonce is used now
            chosen = [tx_hash]
        else:
            chosen = [h for h, _ in self.pool.values()]
            self.pool.clear()
        self.blocks.append(chosen)
        for h in chosen:
            self.mined[h] = self.head()

    def receipt(self, tx_hash: bytes) -> TxReceipt | None:
        block = self.mined.get(tx_hash)
        return None if block is None else TxReceipt(block, block.to_bytes(32, "big"), 1)

    def known(self, tx_hash: bytes) -> bool:
        return tx_hash in self.mined or any(h == tx_hash for h, _ in self.pool.values())


def _nonce(raw: bytes) -> int:
    typed = import_keeping_recursion_limit("eth_account.typed_transactions.typed_transaction")
    hexbytes = import_keeping_recursion_limit("hexbytes")
    return int(typed.TypedTransaction.from_bytes(hexbytes.HexBytes(raw)).as_dict()["nonce"])


@pytest.fixture
def parts(tmp_path: Path):
    db = connect(tmp_path / "g.db")
    migrate(db, now=0)
    signer = Signer.for_did_key(keystore.generate_key())
    chain = ChainStore(db)
    yield db, signer, chain
    db.close()


def anchorer(
    db, signer: Signer, ledger: MemoryLedger, account: LedgerAccount, *, watch_blocks: int = 64
) -> Anchorer:
    settings = AnchorSection(
        enabled=True,
        every_seconds=1.0,
        confirmations=1,
        replace_after_seconds=30.0,
        watch_blocks=watch_blocks,
    )
    return Anchorer(
        settings,
        signer=signer,
        account=account,
        chain=ChainStore(db),
        queue=AnchorQueue(db),
        ledger=ledger,
    )


def test_crash_between_recording_and_broadcasting_resends_the_same_bytes(parts) -> None:
    db, signer, chain = parts
    ledger = MemoryLedger()
    account = LedgerAccount(keystore.generate_ledger_key())
    chain.append("note", signer.did, b"one", now_ms=1)
    ledger.fail_next_send = True
    first = anchorer(db, signer, ledger, account)
    first.round(10.0)
    queue = AnchorQueue(db)
    flight = queue.in_flight()
    assert flight is not None and flight.nonce == 0 and not ledger.mined
    assert "connection reset" in queue.meta()["health"][0]
    # A new process (the old one "crashed") finds the row sent and re-sends its bytes.
    second = anchorer(db, signer, ledger, account)
    second.round(11.0)
    second.round(11.1)
    done = queue.last_confirmed()
    assert done is not None and done.tx_hash == flight.tx_hash
    assert list(ledger.mined) == [flight.tx_hash]
    assert queue.meta()["health"][0] == "ok"


def test_nothing_new_nothing_sent_and_cadence_respected(parts) -> None:
    db, signer, chain = parts
    ledger = MemoryLedger()
    worker = anchorer(db, signer, ledger, LedgerAccount(keystore.generate_ledger_key()))
    worker.round(10.0)
    assert not ledger.mined  # an empty record is never anchored
    chain.append("note", signer.did, b"one", now_ms=1)
    worker.round(10.1)
    worker.round(10.2)
    assert len(ledger.mined) == 1
    chain.append("note", signer.did, b"two", now_ms=2)
    worker.round(10.5)  # less than every_seconds since the last checkpoint
    assert len(ledger.mined) == 1
    worker.round(11.2)
    worker.round(11.3)
    worker.round(30.0)  # nothing new: nothing sent, however long it has been
    assert len(ledger.mined) == 2
    assert AnchorQueue(db).counts()["confirmed"] == 2


def test_unfunded_account_waits_with_a_clear_reason(parts) -> None:
    db, signer, chain = parts
    ledger = MemoryLedger()
    ledger.balance_wei = 0
    account = LedgerAccount(keystore.generate_ledger_key())
    worker = anchorer(db, signer, ledger, account)
    chain.append("note", signer.did, b"one", now_ms=1)
    worker.round(10.0)
    health = AnchorQueue(db).meta()["health"][0]
    assert f"ledger account {account.address} holds 0 wei" in health
    assert AnchorQueue(db).counts()["queued"] == 1  # kept, to be sent once funded
    ledger.balance_wei = 10**18
    worker.round(11.0)
    worker.round(11.1)
    assert AnchorQueue(db).counts()["confirmed"] == 1


def sent_and_held(parts) -> tuple[MemoryLedger, Anchorer, AnchorQueue]:
    """One entry, anchored at 10.0 s by a transaction the ledger holds in its pool."""
    db, signer, chain = parts
    ledger = MemoryLedger()
    ledger.hold = True
    worker = anchorer(db, signer, ledger, LedgerAccount(keystore.generate_ledger_key()))
    chain.append("note", signer.did, b"one", now_ms=1)
    worker.round(10.0)
    return ledger, worker, AnchorQueue(db)


def test_a_transaction_priced_out_by_the_base_fee_is_replaced(parts) -> None:
    ledger, worker, queue = sent_and_held(parts)
    first = queue.in_flight()
    assert first is not None and first.raw_tx is not None
    offered = Fees.of_transaction(first.raw_tx)
    assert offered.max_fee == 3 * 10**9  # twice the base fee, plus the tip
    ledger.base_fee_wei = 10 * 10**9  # blocks filled up: it can no longer be mined
    worker.round(11.0)
    second = queue.in_flight()
    assert second is not None and second.raw_tx is not None
    assert second.nonce == first.nonce and second.tx_hash != first.tx_hash
    assert Fees.of_transaction(second.raw_tx).max_fee == 21 * 10**9
    assert ledger.pool[0][0] == second.tx_hash
    assert queue.meta()["health"][0] == "ok"
    ledger.mine()
    worker.round(11.5)
    done = queue.last_confirmed()
    assert done is not None and done.tx_hash == second.tx_hash
    assert list(ledger.mined) == [second.tx_hash]


def test_the_replaced_transaction_mined_after_all_is_the_anchor(parts) -> None:
    # Another node still had the first transaction and mined it: the checkpoint is anchored
    # by that one, and nothing is sent again.
    ledger, worker, queue = sent_and_held(parts)
    first = queue.in_flight()
    assert first is not None and first.tx_hash is not None
    worker.round(39.0)  # 29 s in the pool: not yet
    assert queue.in_flight() == first
    worker.round(41.0)  # 31 s: replaced
    second = queue.in_flight()
    assert second is not None and second.tx_hash != first.tx_hash
    ledger.mine(first.tx_hash)
    worker.round(41.5)
    done = queue.last_confirmed()
    assert done is not None and done.tx_hash == first.tx_hash
    worker.round(80.0)
    assert list(ledger.mined) == [first.tx_hash] and not ledger.pool
    assert queue.counts() == {"queued": 0, "sent": 0, "confirmed": 1, "superseded": 0}


def test_no_replacement_above_the_cap(parts) -> None:
    ledger, worker, queue = sent_and_held(parts)
    ledger.base_fee_wei = 60 * 10**9  # above max_fee_gwei (50)
    worker.round(11.0)
    assert "above the cap of 50.000 gwei" in queue.meta()["health"][0]
    flight = queue.in_flight()
    assert flight is not None and flight.sends == 1  # the first transaction, kept
    ledger.base_fee_wei = 2 * 10**9  # fees fell: the first transaction can be mined again
    worker.round(12.0)
    assert queue.in_flight() == flight
    ledger.mine()
    worker.round(12.5)
    done = queue.last_confirmed()
    assert done is not None and done.tx_hash == flight.tx_hash and len(ledger.mined) == 1


def confirmed_once(parts, *, watch_blocks: int = 64) -> tuple[MemoryLedger, Anchorer, AnchorQueue]:
    """One entry, anchored and confirmed (the ledger mines at once)."""
    db, signer, chain = parts
    ledger = MemoryLedger()
    account = LedgerAccount(keystore.generate_ledger_key())
    worker = anchorer(db, signer, ledger, account, watch_blocks=watch_blocks)
    chain.append("note", signer.did, b"one", now_ms=1)
    worker.round(10.0)
    worker.round(10.1)
    queue = AnchorQueue(db)
    assert queue.counts()["confirmed"] == 1
    return ledger, worker, queue


def test_an_anchor_reorganised_away_after_it_was_confirmed_is_sent_again(parts, caplog) -> None:
    ledger, worker, queue = confirmed_once(parts)
    done = queue.last_confirmed()
    assert done is not None and done.tx_hash is not None
    # A re-organisation: the block with the anchor is replaced by two without it.
    del ledger.mined[done.tx_hash]
    ledger.blocks[-1:] = [[], []]
    worker.round(11.0)
    assert "took it away; following it again" in caplog.text
    worker.round(11.1)
    again = queue.last_confirmed()
    assert again is not None and again.tx_hash == done.tx_hash  # the same bytes, once
    assert again.block_number == ledger.head() and again.block_number != done.block_number
    assert list(ledger.mined) == [done.tx_hash]


def test_an_anchor_moved_to_another_block_is_noted_not_sent_again(parts, caplog) -> None:
    ledger, worker, queue = confirmed_once(parts)
    done = queue.last_confirmed()
    assert done is not None and done.tx_hash is not None
    ledger.blocks[-1:] = [[], [done.tx_hash]]  # re-organised into the next block
    ledger.mined[done.tx_hash] = ledger.head()
    worker.round(11.0)
    moved = queue.last_confirmed()
    assert moved is not None and moved.block_number == ledger.head() and moved.sends == 1
    assert f"moved from block {done.block_number} to {ledger.head()}" in caplog.text


def test_an_anchor_deeper_than_watch_blocks_is_final(parts) -> None:
    ledger, worker, queue = confirmed_once(parts, watch_blocks=3)
    done = queue.last_confirmed()
    assert done is not None and done.tx_hash is not None
    ledger.blocks += [[], [], []]  # three blocks on top: four deep
    worker.round(11.0)
    del ledger.mined[done.tx_hash]  # (a re-organisation this deep is not looked for)
    ledger.blocks.append([])
    worker.round(12.0)
    assert queue.last_confirmed() == done


def test_an_anchor_confirmed_without_its_bytes_kept_is_anchored_anew(parts) -> None:
    # Anchors confirmed before the bytes were kept cannot be sent again as they were.
    ledger, worker, queue = confirmed_once(parts)
    db = parts[0]
    db.execute("UPDATE anchors SET raw_tx = NULL")
    done = queue.last_confirmed()
    assert done is not None and done.tx_hash is not None
    del ledger.mined[done.tx_hash]
    ledger.blocks[-1:] = [[], []]
    worker.round(11.0)
    assert queue.counts()["confirmed"] == 0  # queued again, and sent from there
    worker.round(11.1)
    anew = queue.last_confirmed()
    assert anew is not None and anew.size == done.size and anew.sends == 2
    assert list(ledger.mined) == [anew.tx_hash]  # (signed anew: same nonce, same bytes here)

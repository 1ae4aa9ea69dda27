"""The anchoring loop's rounds against an in-memory ledger.

The integration tests drive real anvil for every fault it can show. One fault it cannot:
a crash after the anchor is recorded as sent but before its bytes reach the node (the
window is a few microseconds). Here the ledger is a small in-memory stand-in whose
``send_raw`` fails once, exactly in that window.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.anchor.account import LedgerAccount
from gateway.anchor.ledger import LedgerUnavailable, TxReceipt
from gateway.anchor.queue import AnchorQueue
from gateway.anchoring import Anchorer
from gateway.chain.store import ChainStore
from gateway.config import AnchorSection
from gateway.db import connect, migrate
from gateway.identity import keystore
from gateway.identity.signing import Signer


class MemoryLedger:
    """Mines every transaction it accepts into the next block at once."""

    def __init__(self) -> None:
        self.blocks: list[list[bytes]] = [[]]
        self.pool: dict[bytes, bytes] = {}
        self.mined: dict[bytes, int] = {}
        self.fail_next_send = False
        self.balance_wei = 10**18

    def chain_id(self) -> int:
        return 31337

    def head(self) -> int:
        return len(self.blocks) - 1

    def base_fee(self) -> int:
        return 10**9

    def balance(self, address: str) -> int:
        return self.balance_wei

    def nonce(self, address: str, *, pending: bool) -> int:
        return len(self.mined)

    def send_raw(self, raw: bytes) -> None:
        from eth_account import Account
        from eth_utils import keccak

        if self.fail_next_send:
            self.fail_next_send = False
            raise LedgerUnavailable("connection reset")
        tx_hash = keccak(raw)
        assert Account.recover_transaction(raw)
        if tx_hash not in self.mined:
            self.blocks.append([tx_hash])
            self.mined[tx_hash] = self.head()

    def receipt(self, tx_hash: bytes) -> TxReceipt | None:
        block = self.mined.get(tx_hash)
        return None if block is None else TxReceipt(block, block.to_bytes(32, "big"), 1)

    def known(self, tx_hash: bytes) -> bool:
        return tx_hash in self.mined


@pytest.fixture
def parts(tmp_path: Path):
    db = connect(tmp_path / "g.db")
    migrate(db, now=0)
    signer = Signer.for_did_key(keystore.generate_key())
    chain = ChainStore(db)
    yield db, signer, chain
    db.close()


def anchorer(db, signer: Signer, ledger: MemoryLedger, account: LedgerAccount) -> Anchorer:
    settings = AnchorSection(enabled=True, every_seconds=1.0, confirmations=1)
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

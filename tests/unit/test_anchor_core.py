"""Anchoring's sans-IO core: the encoding, the account, the queue's state machine, receipts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest
from support import import_keeping_recursion_limit

from gateway.anchor.account import (
    FeeCapError,
    Fees,
    LedgerAccount,
    binding_statement,
    ledger_address,
)
from gateway.anchor.encoding import (
    LENGTH,
    AnchorData,
    AnchorEncodingError,
    anchor_gas,
    decode_anchor,
    did_digest,
    encode_anchor,
    note_digest,
)
from gateway.anchor.ledger import TxReceipt
from gateway.anchor.queue import AnchorQueue, Observation, Step, checkpoint_due, next_step
from gateway.anchor.receipt import receipt_for
from gateway.anchor.verify_receipt import CHECKS, LedgerView, check_receipt
from gateway.chain.checkpoint import checkpoint_body, sign_checkpoint
from gateway.chain.store import ChainError, ChainStore
from gateway.db import connect, migrate
from gateway.identity import keystore
from gateway.identity.cose import sign1
from gateway.identity.signing import Signer, sign_jws
from gateway.migrations import MIGRATIONS

GWEI = 10**9
# eth-account (a test dependency) checks the gateway's transactions independently.
Account = import_keeping_recursion_limit("eth_account").Account


@pytest.fixture
def gateway_signer() -> Signer:
    return Signer.for_did_key(keystore.generate_key())


@pytest.fixture
def account() -> LedgerAccount:
    return LedgerAccount(keystore.generate_ledger_key())


@pytest.fixture
def db(tmp_path: Path):
    database = connect(tmp_path / "g.db")
    migrate(database, now=0)
    yield database
    database.close()


# -- encoding ------------------------------------------------------------------------------


def test_anchor_encoding_is_byte_exact_and_round_trips() -> None:
    data = AnchorData(b"\x01" * 32, 0x0102030405060708, b"\x02" * 32, b"\x03" * 32)
    raw = encode_anchor(data)
    assert len(raw) == LENGTH == 110
    assert raw[:6] == b"DIDGW\x01"
    assert raw[6:38] == b"\x01" * 32
    assert raw[38:46] == bytes.fromhex("0102030405060708")
    assert raw[46:78] == b"\x02" * 32 and raw[78:] == b"\x03" * 32
    assert decode_anchor(raw) == data


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"XIDGW\x01" + bytes(104), "tag"),
        (b"DIDGW\x02" + bytes(104), "version 2"),
        (b"DIDGW\x01" + bytes(103), "109 bytes"),
        (b"DIDGW\x01" + bytes(105), "111 bytes"),
        (b"DIDGW\x01" + bytes(104), "size is 0"),
        (b"DIDGW", "version None"),
    ],
)
def test_anything_else_is_refused_with_the_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(AnchorEncodingError, match=reason):
        decode_anchor(raw)


def test_digests_are_sha256_of_the_utf8_text() -> None:
    assert did_digest("did:key:z6Mk") == hashlib.sha256(b"did:key:z6Mk").digest()
    assert note_digest("a\n\n\u2014 b\n") == hashlib.sha256("a\n\n\u2014 b\n".encode()).digest()


def test_gas_is_the_larger_of_the_calldata_rules() -> None:
    # 110 non-zero bytes: 21000 + 110*16 = 22760 before Prague; 21000 + 440*10 = 25400 after.
    assert anchor_gas(b"\x01" * 110) == 25_400
    assert anchor_gas(bytes(110)) == 21_000 + 110 * 10  # zero bytes: the floor still wins
    assert anchor_gas(b"") == 21_000


# -- the account ---------------------------------------------------------------------------


def test_address_and_signed_transaction_are_those_of_the_key(account: LedgerAccount) -> None:
    signed = account.sign_anchor(
        b"DIDGW\x01" + b"\x01" * 104, chain_id=31337, nonce=7, fees=Fees(3 * GWEI, GWEI)
    )
    assert Account.recover_transaction(signed.raw) == account.address
    assert signed.nonce == 7 and len(signed.tx_hash) == 32
    assert "0x" in repr(account) and "private" not in repr(account).lower()


def test_ledger_address_matches_eth_account_and_is_checksummed() -> None:
    key = keystore.generate_ledger_key()
    secret = key.private_numbers().private_value.to_bytes(32, "big")
    assert ledger_address(key) == Account.from_key(secret).address


def test_fees_double_the_base_fee_under_the_cap_and_refuse_above_it() -> None:
    assert Fees.for_base_fee(GWEI, priority_fee=GWEI, cap=50 * GWEI) == Fees(3 * GWEI, GWEI)
    assert Fees.for_base_fee(30 * GWEI, priority_fee=GWEI, cap=50 * GWEI).max_fee == 50 * GWEI
    with pytest.raises(FeeCapError, match=r"above the cap of 50\.000 gwei"):
        Fees.for_base_fee(50 * GWEI, priority_fee=GWEI, cap=50 * GWEI)


def test_a_replacement_pays_what_the_base_fee_asks_and_an_eighth_more_than_before() -> None:
    old = Fees(3 * GWEI, GWEI)
    # The base fee has not moved: 12.5 % above the old fees, both of them.
    same = Fees.replacing(old, GWEI, priority_fee=GWEI, cap=50 * GWEI)
    assert same == Fees(3_375_000_000, 1_125_000_000)
    # The base fee went up: what it asks now, which is more than the bump.
    risen = Fees.replacing(old, 10 * GWEI, priority_fee=GWEI, cap=50 * GWEI)
    assert risen == Fees(21 * GWEI, 1_125_000_000)
    # Capped: no room for the bump, or the base fee alone is above the cap.
    with pytest.raises(FeeCapError, match=r"replacement needs at least 3\.375 gwei"):
        Fees.replacing(old, GWEI, priority_fee=GWEI, cap=3_300_000_000)
    with pytest.raises(FeeCapError, match="waiting for fees to fall"):
        Fees.replacing(old, 60 * GWEI, priority_fee=GWEI, cap=50 * GWEI)
    # Rounded up, so an odd number of wei never falls short of the bump.
    assert Fees.replacing(Fees(9, 1), 0, priority_fee=0, cap=100) == Fees(11, 2)


def test_the_fees_of_a_signed_transaction_are_read_back(account: LedgerAccount) -> None:
    signed = account.sign_anchor(b"x", chain_id=1, nonce=0, fees=Fees(7 * GWEI, 2 * GWEI))
    assert Fees.of_transaction(signed.raw) == Fees(7 * GWEI, 2 * GWEI)


def test_ledger_key_is_kept_like_the_gateway_key(tmp_path: Path) -> None:
    path = tmp_path / "ledger.pem"
    key = keystore.generate_ledger_key()
    keystore.write_private_key(path, key, b"secret")
    assert path.stat().st_mode & 0o777 == 0o600
    assert ledger_address(keystore.load_ledger_key(path, b"secret")) == ledger_address(key)
    with pytest.raises(keystore.KeyStoreError, match="already exists"):
        keystore.write_private_key(path, keystore.generate_ledger_key(), None)
    with pytest.raises(keystore.KeyStoreError, match="wrong passphrase"):
        keystore.load_ledger_key(path, b"wrong")
    ed = tmp_path / "gateway.pem"
    keystore.write_private_key(ed, keystore.generate_key(), None)
    with pytest.raises(keystore.KeyStoreError, match="not hold a secp256k1 key"):
        keystore.load_ledger_key(ed, None)


# -- when to checkpoint, and the state machine -------------------------------------------------


@pytest.mark.parametrize(
    ("size", "last_size", "last_ms", "now_ms", "due"),
    [
        (0, 0, None, 0, False),  # nothing recorded
        (5, 5, 0, 10**9, False),  # nothing new, however long ago
        (5, 0, None, 0, True),  # never anchored
        (6, 5, 0, 999, False),  # one new entry, too early
        (6, 5, 0, 1000, True),  # ... the cadence has passed
        (15, 5, 0, 1, True),  # enough entries
    ],
)
def test_checkpoint_due(
    size: int, last_size: int, last_ms: int | None, now_ms: int, due: bool
) -> None:
    assert (
        checkpoint_due(
            size=size,
            last_size=last_size,
            last_ms=last_ms,
            now_ms=now_ms,
            every_entries=10,
            every_seconds=1.0,
        )
        is due
    )


def _sent(db, account: LedgerAccount, size: int = 3):
    queue = AnchorQueue(db)
    anchor = queue.enqueue(size, b"\x01" * 32, "note", now_ms=1)
    signed = account.sign_anchor(b"x", chain_id=1, nonce=4, fees=Fees(2, 1))
    queue.mark_sent(anchor, signed, chain_id=1, address=account.address, now_ms=2)
    sent = queue.in_flight()
    assert sent is not None
    return queue, sent


RECEIPT = TxReceipt(10, b"\x0b" * 32, 1)


@pytest.mark.parametrize(
    ("seen", "now_ms", "step"),
    [
        (Observation(4, None, True, 9, GWEI), 1000, Step.WAIT),  # in the pool
        (Observation(4, None, False, 9, GWEI), 1000, Step.REBROADCAST),  # dropped, re-orged out
        (Observation(5, None, False, 9), 1000, Step.REQUEUE),  # nonce 4 went to another tx
        (Observation(5, RECEIPT, True, 10), 1000, Step.WAIT),  # 1 of 2 confirmations
        (Observation(5, RECEIPT, True, 11), 1000, Step.CONFIRM),
        (Observation(5, TxReceipt(10, b"\x0b" * 32, 0), True, 20), 1000, Step.REQUEUE),  # reverted
        (Observation(4, None, True, 9, GWEI), 60_002, Step.REPRICE),  # in the pool for 60 s
        (Observation(4, None, True, 9, 3 * GWEI), 1000, Step.REPRICE),  # priced out, kept
        (Observation(4, None, False, 9, 3 * GWEI), 1000, Step.REPRICE),  # priced out, dropped
        (Observation(4, RECEIPT, True, 10, 3 * GWEI), 60_002, Step.WAIT),  # mined after all
    ],
)
def test_next_step(db, account: LedgerAccount, seen: Observation, now_ms: int, step: Step) -> None:
    _, sent = _sent(db, account)  # sent at 2 ms, offering 2 gwei
    decided = next_step(
        sent,
        seen,
        confirmations=2,
        max_fee=2 * GWEI,
        now_ms=now_ms,
        replace_after_seconds=60,
    )
    assert decided is step


def test_a_replaced_transaction_is_still_looked_for(db, account: LedgerAccount) -> None:
    queue, sent = _sent(db, account)
    assert queue.tx_hashes(sent) == [sent.tx_hash]
    again = account.sign_anchor(b"x", chain_id=1, nonce=4, fees=Fees(3, 2))
    queue.mark_repriced(sent, again, now_ms=3)
    flight = queue.in_flight()
    assert flight is not None and flight.tx_hash == again.tx_hash and flight.sends == 2
    assert flight.raw_tx == again.raw and flight.sent_ms == 3
    assert queue.tx_hashes(flight) == [again.tx_hash, sent.tx_hash]  # newest first
    other_nonce = account.sign_anchor(b"x", chain_id=1, nonce=5, fees=Fees(4, 2))
    with pytest.raises(ValueError, match="no transaction with nonce 5"):
        queue.mark_repriced(flight, other_nonce, now_ms=4)
    # The ledger took the first one: that is the anchor's transaction.
    queue.mark_confirmed(flight, RECEIPT, now_ms=5, tx_hash=sent.tx_hash)
    done = queue.last_confirmed()
    assert done is not None and done.tx_hash == sent.tx_hash
    assert done.raw_tx == sent.raw_tx  # the bytes of the one mined, to send again if need be


def test_an_anchor_sent_before_replacements_existed_is_still_looked_for(
    tmp_path: Path, account: LedgerAccount
) -> None:
    old = connect(tmp_path / "old.db")
    names = [name for name, _ in MIGRATIONS]
    before = MIGRATIONS[: names.index("0010_anchor_txs")]  # the schema before anchor_txs
    migrate(old, now=0, migrations=before)
    queue = AnchorQueue(old)
    anchor = queue.enqueue(3, b"\x01" * 32, "note", now_ms=1)
    signed = account.sign_anchor(b"x", chain_id=1, nonce=4, fees=Fees(2, 1))
    old.execute(
        "UPDATE anchors SET state = 'sent', nonce = 4, tx_hash = ?, raw_tx = ?, sent_ms = 2 "
        "WHERE id = ?",
        [signed.tx_hash, signed.raw, anchor.id],
    )
    assert migrate(old, now=1) == names[len(before) :]
    flight = queue.in_flight()
    assert flight is not None and queue.tx_hashes(flight) == [signed.tx_hash]
    again = account.sign_anchor(b"x", chain_id=1, nonce=4, fees=Fees(3, 2))
    queue.mark_repriced(flight, again, now_ms=3)
    repriced = queue.in_flight()
    assert repriced is not None
    assert queue.tx_hashes(repriced) == [again.tx_hash, signed.tx_hash]
    old.close()


def test_queue_lifecycle_supersedes_older_checkpoints(db, account: LedgerAccount) -> None:
    queue = AnchorQueue(db)
    for size in (1, 2, 3):
        queue.enqueue(size, bytes([size]) * 32, f"note {size}", now_ms=size)
    with pytest.raises(ValueError, match="not above"):
        queue.enqueue(3, b"\x00" * 32, "again", now_ms=4)
    newest = queue.newest_queued()
    assert newest is not None and newest.size == 3
    signed = account.sign_anchor(b"x", chain_id=1, nonce=0, fees=Fees(2, 1))
    queue.mark_sent(newest, signed, chain_id=1, address=account.address, now_ms=5)
    assert queue.counts() == {"queued": 0, "sent": 1, "confirmed": 0, "superseded": 2}
    assert {a.covered_by for a in queue.recent(10) if a.state == "superseded"} == {newest.id}
    with pytest.raises(ValueError, match="not queued"):
        queue.mark_sent(newest, signed, chain_id=1, address=account.address, now_ms=5)
    queue.requeue(newest)
    again = queue.newest_queued()
    assert again is not None and again.tx_hash is None and again.sends == 1
    queue.mark_sent(again, signed, chain_id=1, address=account.address, now_ms=6)
    flight = queue.in_flight()
    assert flight is not None and flight.sends == 2
    queue.mark_confirmed(flight, RECEIPT, now_ms=7)
    done = queue.last_confirmed()
    assert done is not None and done.raw_tx == signed.raw and done.block_number == 10
    assert queue.anchored_for(0) == done and queue.anchored_for(2) == done
    assert queue.anchored_for(3) is None


# -- receipts --------------------------------------------------------------------------------


def _jws_reading(device: Signer) -> bytes:
    return sign_jws(json.dumps({"did": device.did, "seq": 1}).encode(), device).encode()


def _cose_reading(device: Signer) -> bytes:
    """A CoAP device's reading: a COSE_Sign1 over a CBOR payload."""
    return sign1(cbor2.dumps({"did": device.did, "seq": 1}), device, typ="didgw-reading+cose")


def _anchored_store(
    db,
    gateway: Signer,
    account: LedgerAccount,
    reading: Callable[[Signer], bytes] = _jws_reading,
    *,
    actor: str | None = None,
):
    """A record of 5 entries (one a device's signed reading), anchored; and the ledger's view."""
    device = Signer.for_did_key(keystore.generate_key())
    chain = ChainStore(db)
    for i in range(4):
        chain.append("note", gateway.did, f"note {i}".encode(), now_ms=1000 + i)
    chain.append("reading", actor or device.did, reading(device), now_ms=2000)
    text = sign_checkpoint(checkpoint_body(gateway.did, chain.size, chain.root(), 2), gateway)
    queue = AnchorQueue(db)
    anchor = queue.enqueue(chain.size, chain.root(), text, now_ms=3000)
    data = encode_anchor(AnchorData(did_digest(gateway.did), 5, chain.root(), note_digest(text)))
    signed = account.sign_anchor(data, chain_id=31337, nonce=0, fees=Fees(2, 1))
    queue.mark_sent(anchor, signed, chain_id=31337, address=account.address, now_ms=3001)
    queue.mark_confirmed(anchor, TxReceipt(7, b"\x07" * 32, 1), now_ms=3002)
    binding = binding_statement(gateway, account.address, issued=1)
    view = LedgerView(31337, 8, account.address, account.address, 0, data, 7, b"\x07" * 32, 1)
    return chain, queue, binding, view


@pytest.mark.parametrize(
    ("reading", "form"), [(_jws_reading, "JWS"), (_cose_reading, "COSE_Sign1")]
)
def test_receipt_verifies_with_every_check(
    db,
    gateway_signer: Signer,
    account: LedgerAccount,
    reading: Callable[[Signer], bytes],
    form: str,
) -> None:
    chain, queue, binding, view = _anchored_store(db, gateway_signer, account, reading)
    receipt = receipt_for(chain, queue, gateway=gateway_signer.did, binding=binding, seq=4)
    report = check_receipt(json.loads(json.dumps(receipt)), view, min_confirmations=2)
    assert [c.name for c in report.checks] == list(CHECKS)
    assert report.ok, report.checks
    signature = report.checks[CHECKS.index("device_signature")]
    assert signature.ok is True and signature.detail.startswith(f"{form} signed by did:key:")
    assert check_receipt(receipt, view, min_confirmations=3).failed() == ["confirmations"]
    assert check_receipt(receipt, None).failed() == [
        "ledger_transaction",
        "anchor_data",
        "confirmations",
    ]
    other = LedgerView(31337, 8, account.address, account.address, 0, b"DIDGW\x01" + bytes(104))
    assert "anchor_data" in check_receipt(receipt, other).failed()


def _flip_last_byte(token: bytes) -> bytes:
    return token[:-1] + bytes([token[-1] ^ 1])


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda d: _flip_last_byte(_cose_reading(d)), "does not verify under"),
        (lambda d: _cose_reading(Signer.for_did_key(keystore.generate_key())), "but the entry"),
        (lambda d: b"\x84\x01\x02", "is not a COSE_Sign1"),
        (
            lambda d: cbor2.dumps([cbor2.dumps({1: -7, 4: d.kid.encode()}), {}, b"{}", bytes(64)]),
            "not signed with EdDSA",
        ),
    ],
)
def test_a_cose_reading_that_is_not_the_devices_fails_its_signature_check(
    db,
    gateway_signer: Signer,
    account: LedgerAccount,
    make: Callable[[Signer], bytes],
    why: str,
) -> None:
    chain, queue, binding, view = _anchored_store(db, gateway_signer, account, make)
    receipt = receipt_for(chain, queue, gateway=gateway_signer.did, binding=binding, seq=4)
    report = check_receipt(receipt, view)
    assert report.failed() == ["device_signature"], report.checks
    assert why in report.checks[CHECKS.index("device_signature")].detail


def test_erased_payload_is_said_and_the_rest_still_verifies(
    db,
    gateway_signer: Signer,
    account: LedgerAccount,
) -> None:
    chain, queue, binding, view = _anchored_store(db, gateway_signer, account)
    chain.erase(4, reason="asked", by="fm", actor=gateway_signer.did, now_ms=4000)
    receipt = receipt_for(chain, queue, gateway=gateway_signer.did, binding=binding, seq=4)
    assert receipt["payload"] is None and "erased" in receipt["erasure"]["note"]
    report = check_receipt(receipt, view)
    assert report.ok, report.checks
    assert {c.name: c.ok for c in report.checks}["payload_commitment"] is None


def test_no_receipt_before_the_entry_is_anchored(
    db,
    gateway_signer: Signer,
    account: LedgerAccount,
) -> None:
    chain, queue, binding, _ = _anchored_store(db, gateway_signer, account)
    chain.append("note", gateway_signer.did, b"late", now_ms=5000)
    with pytest.raises(ChainError, match="entry 5 is not anchored yet"):
        receipt_for(chain, queue, gateway=gateway_signer.did, binding=binding, seq=5)


def test_garbage_is_a_format_failure_not_a_crash() -> None:
    for junk in (None, [], {"type": "didgw-receipt", "version": 1}, {"type": "x"}):
        report = check_receipt(junk, None)
        assert report.failed() == ["receipt_format"] and not report.ok

"""EIP-1559 transactions signed by didgw's own code are byte for byte eth-account's.

didgw encodes (RLP) and hashes (Keccak-256) its anchor transactions itself and signs them
with libsecp256k1 through coincurve; eth-account (a test dependency only) signs the same
fields with the same key, and the raw transaction and its hash must be identical. Fields
are chosen around RLP's boundaries: zero, one byte below and above 0x80, 55/56-byte strings
(short and long length prefixes), and large numbers.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import import_keeping_recursion_limit

from gateway.anchor.account import Fees, LedgerAccount, ledger_address
from gateway.anchor.eip1559 import RlpError, decode_raw, keccak256, rlp_encode
from gateway.anchor.encoding import anchor_gas
from gateway.identity import keystore

Account = import_keeping_recursion_limit("eth_account").Account
KEY = keystore.generate_ledger_key()
OURS = LedgerAccount(KEY)
THEIRS = Account.from_key(KEY.private_numbers().private_value.to_bytes(32, "big"))


def theirs(data: bytes, *, chain_id: int, nonce: int, fees: Fees) -> tuple[bytes, bytes]:
    signed = THEIRS.sign_transaction(
        {
            "type": 2,
            "chainId": chain_id,
            "nonce": nonce,
            "to": OURS.address,
            "value": 0,
            "data": data,
            "gas": anchor_gas(data),
            "maxFeePerGas": fees.max_fee,
            "maxPriorityFeePerGas": fees.priority_fee,
        }
    )
    return bytes(signed.raw_transaction), bytes(signed.hash)


@pytest.mark.parametrize(
    ("data", "chain_id", "nonce", "fees"),
    [
        (b"", 1, 0, Fees(0, 0)),
        (b"\x7f", 31337, 127, Fees(1, 1)),
        (b"\x80", 31337, 128, Fees(255, 256)),
        (b"D" * 55, 11155111, 2**16, Fees(3 * 10**9, 10**9)),
        (b"DIDGW\x01" + bytes(range(50)), 137, 2**32, Fees(10**12, 2 * 10**9)),
        (bytes(range(256)) * 2, 2**31, 2**63, Fees(2**128, 2**64)),
    ],
)
def test_signed_transactions_are_those_eth_account_makes(
    data: bytes, chain_id: int, nonce: int, fees: Fees
) -> None:
    signed = OURS.sign_anchor(data, chain_id=chain_id, nonce=nonce, fees=fees)
    assert (signed.raw, signed.tx_hash) == theirs(data, chain_id=chain_id, nonce=nonce, fees=fees)
    assert Account.recover_transaction(signed.raw) == OURS.address
    assert Fees.of_transaction(signed.raw) == fees
    fields = decode_raw(signed.raw)
    assert (fields.chain_id, fields.nonce, fields.data) == (chain_id, nonce, data)


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=300),
    chain_id=st.integers(1, 2**64),
    nonce=st.integers(0, 2**64 - 1),
    tip=st.integers(0, 2**96),
    extra=st.integers(0, 2**96),
)
def test_any_fields_sign_alike(
    data: bytes, chain_id: int, nonce: int, tip: int, extra: int
) -> None:
    fees = Fees(tip + extra, tip)
    signed = OURS.sign_anchor(data, chain_id=chain_id, nonce=nonce, fees=fees)
    assert (signed.raw, signed.tx_hash) == theirs(data, chain_id=chain_id, nonce=nonce, fees=fees)


def test_addresses_agree_with_eth_account_for_many_keys() -> None:
    for _ in range(20):
        key = keystore.generate_ledger_key()
        secret = key.private_numbers().private_value.to_bytes(32, "big")
        assert LedgerAccount(key).address == ledger_address(key) == Account.from_key(secret).address


def test_keccak_is_ethereums_not_sha3() -> None:
    # Keccak-256 of the empty string (the original padding), not SHA3-256's a7ffc6f8….
    assert keccak256(b"").hex().startswith("c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b")


def test_rlp_of_the_yellow_papers_examples() -> None:
    assert rlp_encode(b"dog") == b"\x83dog"
    assert rlp_encode([b"cat", b"dog"]) == b"\xc8\x83cat\x83dog"
    assert rlp_encode(b"") == b"\x80" and rlp_encode([]) == b"\xc0"
    assert rlp_encode(b"\x0f") == b"\x0f" and rlp_encode(b"\x04\x00") == b"\x82\x04\x00"
    assert rlp_encode([[], [[]], [[], [[]]]]) == bytes.fromhex("c7c0c1c0c3c0c1c0")
    long = b"Lorem ipsum dolor sit amet, consectetur adipisicing elit"
    assert rlp_encode(long) == b"\xb8\x38" + long


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "type 2"),
        (b"\x01\xc0", "type 2"),
        (b"\x02\xc0", "12 fields"),
        (b"\x02\xc1", "longer than the transaction"),
        (b"\x02\xb8\x01\x00", "long form used for a short item"),
        (b"\x02\x81\x05", "single byte given a length prefix"),
    ],
)
def test_malformed_transactions_are_refused_saying_why(raw: bytes, why: str) -> None:
    with pytest.raises(RlpError, match=why):
        decode_raw(raw)


def test_trailing_bytes_and_non_canonical_numbers_are_refused() -> None:
    raw = OURS.sign_anchor(b"x", chain_id=1, nonce=1, fees=Fees(2, 1)).raw
    with pytest.raises(RlpError, match="12 fields"):
        decode_raw(raw + b"\x00")
    # nonce 1 written with a leading zero byte: 0x82 0x00 0x01 instead of 0x01
    body = rlp_encode(
        [b"\x01", b"\x00\x01", *([b""] * 3), b"\x00" * 20, b"", b"", [], b"", b"", b""]
    )
    with pytest.raises(RlpError, match="nonce is not a canonical integer"):
        decode_raw(b"\x02" + body)

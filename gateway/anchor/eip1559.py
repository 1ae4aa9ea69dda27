"""EIP-1559 transactions as bytes: RLP, Keccak-256, the signing hash and the raw form.

The gateway signs one kind of transaction only (type 2, no access list), so the
encoding is written out here rather than taken from eth-account or the ``rlp``
package: eth-account brings 23 packages (pydantic, py_ecc, ckzg among them) and
half a second of import, and ``rlp`` alone brings eth-utils and pydantic (about
140 ms and 24 MB of memory) for what is forty lines. Keccak-256 is pycryptodome's
(Python's ``hashlib.sha3_256`` is the final SHA-3, with a different padding); the
signature itself is libsecp256k1's, through coincurve (``gateway/anchor/account.py``).
A test checks these bytes against eth-account's for the same fields and key.

RLP (Ethereum yellow paper, appendix B): a byte string of one byte below 0x80 is
itself; otherwise a length prefix (0x80 + length, or 0xb7 + the length's length
and the length), and a list the same with 0xc0 / 0xf7. Integers are big-endian
without leading zeros (0 is the empty string).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import DidgwError

__all__ = ["TX_TYPE", "Eip1559Fields", "RlpError", "decode_raw", "keccak256", "rlp_encode"]

TX_TYPE = 2
#: Fields of a type-2 transaction, in order, as signed; a signed one adds y_parity, r, s.
FIELD_COUNT = 9
SIGNED_FIELD_COUNT = 12

Rlp = bytes | list["Rlp"]


class RlpError(DidgwError):
    """Bytes that are not the RLP of a type-2 transaction."""

    code = "malformed_transaction"


def keccak256(data: bytes) -> bytes:
    """Keccak-256 as Ethereum uses it (the original submission's padding, not SHA3-256)."""
    from Crypto.Hash import keccak

    return bytes(keccak.new(data=data, digest_bits=256).digest())


def _int(value: int) -> bytes:
    if value < 0:
        raise ValueError("RLP integers are not negative")
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _prefix(length: int, short: int) -> bytes:
    if length <= 55:
        return bytes([short + length])
    size = _int(length)
    return bytes([short + 55 + len(size)]) + size


def rlp_encode(item: Rlp) -> bytes:
    """The RLP of a byte string or a (nested) list of them."""
    if isinstance(item, bytes):
        if len(item) == 1 and item[0] < 0x80:
            return item
        return _prefix(len(item), 0x80) + item
    body = b"".join(rlp_encode(x) for x in item)
    return _prefix(len(body), 0xC0) + body


def _item(data: bytes, at: int) -> tuple[Rlp, int]:
    """The item starting at ``at`` and where the next one starts; canonical forms only."""
    if at >= len(data):
        raise RlpError("transaction ends inside an RLP item")
    first = data[at]
    if first < 0x80:
        return data[at : at + 1], at + 1
    is_list = first >= 0xC0
    short = 0xC0 if is_list else 0x80
    if first - short <= 55:
        length, start = first - short, at + 1
    else:
        size = first - short - 55
        raw_length = data[at + 1 : at + 1 + size]
        if len(raw_length) != size or raw_length[0] == 0:
            raise RlpError("RLP length is cut short or has a leading zero")
        length, start = int.from_bytes(raw_length, "big"), at + 1 + size
        if length <= 55:
            raise RlpError("RLP long form used for a short item")
    end = start + length
    if end > len(data):
        raise RlpError("RLP item is longer than the transaction")
    if not is_list:
        if length == 1 and data[start] < 0x80:
            raise RlpError("RLP single byte given a length prefix")
        return data[start:end], end
    items: list[Rlp] = []
    while start < end:
        item, start = _item(data, start)
        items.append(item)
    if start != end:
        raise RlpError("RLP list items overrun the list")
    return items, end


@dataclass(frozen=True)
class Eip1559Fields:
    """A type-2 transaction's fields (no access list: the gateway never uses one)."""

    chain_id: int
    nonce: int
    priority_fee: int
    max_fee: int
    gas: int
    to: bytes
    value: int
    data: bytes

    def _items(self) -> list[Rlp]:
        numbers = (self.chain_id, self.nonce, self.priority_fee, self.max_fee, self.gas)
        return [*map(_int, numbers), self.to, _int(self.value), self.data, []]

    def signing_hash(self) -> bytes:
        """What the account signs: Keccak-256 of 0x02 || rlp(fields)."""
        return keccak256(bytes([TX_TYPE]) + rlp_encode(self._items()))

    def raw(self, y_parity: int, r: int, s: int) -> bytes:
        """The signed transaction as broadcast: 0x02 || rlp(fields, y_parity, r, s)."""
        return bytes([TX_TYPE]) + rlp_encode([*self._items(), _int(y_parity), _int(r), _int(s)])


def _number(item: Rlp, what: str) -> int:
    if not isinstance(item, bytes) or len(item) > 32 or item[:1] == b"\x00":
        raise RlpError(f"transaction field {what} is not a canonical integer")
    return int.from_bytes(item, "big")


def decode_raw(raw: bytes) -> Eip1559Fields:
    """The fields of a signed type-2 transaction (the signature is not checked here)."""
    if raw[:1] != bytes([TX_TYPE]):
        raise RlpError("not an EIP-1559 (type 2) transaction")
    items, end = _item(raw, 1)
    if end != len(raw) or not isinstance(items, list) or len(items) != SIGNED_FIELD_COUNT:
        raise RlpError("a type-2 transaction is one RLP list of 12 fields")
    chain_id, nonce, tip, max_fee, gas = (
        _number(items[i], name)
        for i, name in enumerate(
            ("chainId", "nonce", "maxPriorityFeePerGas", "maxFeePerGas", "gas")
        )
    )
    to, data = items[5], items[7]
    if not isinstance(to, bytes) or len(to) != 20 or not isinstance(data, bytes):
        raise RlpError("transaction's recipient or data is malformed")
    return Eip1559Fields(chain_id, nonce, tip, max_fee, gas, to, _number(items[6], "value"), data)

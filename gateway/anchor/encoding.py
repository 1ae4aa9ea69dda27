"""The bytes an anchor transaction carries, and what it costs to carry them.

An anchor is a 0-value transaction from the gateway's ledger account to itself;
its input data is::

    offset  size  field
    0       5     tag "DIDGW" (ASCII): lets anyone scanning the chain find didgw anchors
    5       1     version, 0x01
    6       32    SHA-256 of the gateway DID (UTF-8)
    38      8     tree size, unsigned big-endian
    46      32    Merkle root of the record at that size
    78      32    SHA-256 of the whole signed checkpoint note (text and signature line)
    110           end: exactly 110 bytes, nothing may follow

The DID is carried as a digest so every anchor has the same length whatever the
DID method; the checkpoint is carried as the digest of the signed note, which
binds its time and its signature as well as size and root (a receipt carries the
note itself). Decoding is strict: another tag, another version or another
length is refused with the reason, never guessed at.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from gateway.errors import DidgwError

TAG = b"DIDGW"
VERSION = 1
LENGTH = 110
_MAX_SIZE = 2**64 - 1

# Intrinsic gas of a plain transaction (EIP-2028 calldata prices, EIP-7623 floor).
TX_BASE_GAS = 21_000
_ZERO_BYTE_GAS, _NONZERO_BYTE_GAS = 4, 16
_FLOOR_GAS_PER_TOKEN = 10

__all__ = [
    "LENGTH",
    "TAG",
    "VERSION",
    "AnchorData",
    "AnchorEncodingError",
    "anchor_gas",
    "decode_anchor",
    "did_digest",
    "encode_anchor",
    "note_digest",
]


class AnchorEncodingError(DidgwError):
    """Transaction input data that is not a didgw anchor this version understands."""

    code = "invalid_anchor"


@dataclass(frozen=True)
class AnchorData:
    """What one anchor says: this gateway's record had ``size`` entries and ``root``."""

    did_digest: bytes
    size: int
    root: bytes
    checkpoint_digest: bytes


def did_digest(did: str) -> bytes:
    """SHA-256 of the DID's UTF-8 bytes."""
    return hashlib.sha256(did.encode("utf-8")).digest()


def note_digest(note: str) -> bytes:
    """SHA-256 of the signed checkpoint note's UTF-8 bytes, exactly as signed and stored."""
    return hashlib.sha256(note.encode("utf-8")).digest()


def encode_anchor(data: AnchorData) -> bytes:
    """The 110 input bytes of an anchor transaction."""
    for name in ("did_digest", "root", "checkpoint_digest"):
        if len(getattr(data, name)) != 32:
            raise AnchorEncodingError(f"anchor {name} must be 32 bytes")
    if not 0 < data.size <= _MAX_SIZE:
        raise AnchorEncodingError(f"anchor tree size {data.size} is not between 1 and 2**64-1")
    return b"".join(
        (
            TAG,
            bytes([VERSION]),
            data.did_digest,
            data.size.to_bytes(8, "big"),
            data.root,
            data.checkpoint_digest,
        )
    )


def decode_anchor(raw: bytes) -> AnchorData:
    """Parse anchor input data; raise :class:`AnchorEncodingError` saying what is wrong."""
    if not raw.startswith(TAG):
        raise AnchorEncodingError("transaction input does not start with the didgw anchor tag")
    if len(raw) < len(TAG) + 1 or raw[len(TAG)] != VERSION:
        version = raw[len(TAG)] if len(raw) > len(TAG) else None
        raise AnchorEncodingError(f"anchor version {version} is not {VERSION}")
    if len(raw) != LENGTH:
        raise AnchorEncodingError(f"anchor is {len(raw)} bytes; version {VERSION} has {LENGTH}")
    size = int.from_bytes(raw[38:46], "big")
    if size == 0:
        raise AnchorEncodingError("anchor tree size is 0; an empty record is never anchored")
    return AnchorData(raw[6:38], size, raw[46:78], raw[78:110])


def anchor_gas(data: bytes) -> int:
    """Gas a plain transaction with input ``data`` needs: the larger of the two EVM rules.

    Chains before the Prague upgrade charge 21,000 + 4 per zero byte + 16 per
    other byte; since EIP-7623 a calldata-heavy transaction pays at least
    21,000 + 10 per token (a zero byte is 1 token, another byte 4). Taking the
    larger works on both; only the gas actually used is paid.
    """
    zeros = data.count(0)
    nonzeros = len(data) - zeros
    standard = TX_BASE_GAS + zeros * _ZERO_BYTE_GAS + nonzeros * _NONZERO_BYTE_GAS
    floor = TX_BASE_GAS + (zeros + 4 * nonzeros) * _FLOOR_GAS_PER_TOKEN
    return max(standard, floor)

"""The gateway's ledger account: its address, its transactions, and the statement binding it.

The account is a secp256k1 key kept beside the gateway key (``keys/ledger.pem``,
same rules: 0600, never overwritten, optionally encrypted). It only ever signs
anchor transactions, locally: the ledger node holds no keys. The gateway DID
states, in a compact JWS signed by its own Ed25519 key, that this address is its
ledger account; receipts carry that statement so a verifier can tie the
transaction's sender to the DID that signed the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.anchor.eip1559 import Eip1559Fields, decode_raw, keccak256
from gateway.anchor.encoding import anchor_gas
from gateway.errors import DidgwError
from gateway.identity.signing import Signer, sign_jws

BINDING_TYPE = "didgw-ledger-binding"
BINDING_JWS_TYP = "didgw-ledger-binding+jws"

__all__ = [
    "BINDING_TYPE",
    "FeeCapError",
    "Fees",
    "LedgerAccount",
    "SignedTx",
    "binding_statement",
    "ledger_address",
]


class FeeCapError(DidgwError):
    """The network's fees are above what the gateway is configured to pay."""

    code = "fee_cap"


@dataclass(frozen=True)
class Fees:
    """EIP-1559 fees for one transaction, in wei per gas."""

    max_fee: int
    priority_fee: int

    @classmethod
    def for_base_fee(cls, base_fee: int, *, priority_fee: int, cap: int) -> Fees:
        """Fees that survive the base fee doubling for a few blocks, never above ``cap``.

        Refuses (:class:`FeeCapError`) when even the current base fee plus the tip
        is above the cap: the anchor waits rather than overpays.
        """
        if base_fee + priority_fee > cap:
            raise FeeCapError(
                f"ledger base fee {base_fee / 1e9:.3f} gwei plus tip {priority_fee / 1e9:.3f} "
                f"gwei is above the cap of {cap / 1e9:.3f} gwei ([anchor] max_fee_gwei); "
                "waiting for fees to fall"
            )
        return cls(min(2 * base_fee + priority_fee, cap), priority_fee)

    @classmethod
    def replacing(cls, old: Fees, base_fee: int, *, priority_fee: int, cap: int) -> Fees:
        """Fees for a transaction that takes the place of one sent with ``old`` (same nonce).

        What :meth:`for_base_fee` asks now, and at least 12.5 % above ``old`` on both
        fields: nodes take a replacement only above a price bump (geth's is 10 %).
        Refuses (:class:`FeeCapError`) when ``cap`` leaves no such room.
        """
        fresh = cls.for_base_fee(base_fee, priority_fee=priority_fee, cap=cap)
        tip = max(fresh.priority_fee, _bump(old.priority_fee))
        max_fee = max(fresh.max_fee, _bump(old.max_fee), tip)
        if max_fee > cap:
            raise FeeCapError(
                f"the anchor transaction in flight offers {old.max_fee / 1e9:.3f} gwei; a "
                f"replacement needs at least {max_fee / 1e9:.3f} gwei, above the cap of "
                f"{cap / 1e9:.3f} gwei ([anchor] max_fee_gwei); waiting for fees to fall"
            )
        return cls(max_fee, tip)

    @classmethod
    def of_transaction(cls, raw: bytes) -> Fees:
        """The fees a signed EIP-1559 transaction offers."""
        fields = decode_raw(raw)
        return cls(fields.max_fee, fields.priority_fee)


def _bump(wei: int) -> int:
    """``wei`` plus 12.5 %, rounded up."""
    return wei + (wei + 7) // 8


@dataclass(frozen=True)
class SignedTx:
    """A transaction signed and ready to broadcast; ``raw`` is kept so it can be re-sent as is."""

    raw: bytes
    tx_hash: bytes
    nonce: int


def ledger_address(key: ec.EllipticCurvePrivateKey) -> str:
    """The EVM address of a secp256k1 key: the last 20 bytes of Keccak-256 of the public point.

    EIP-55 checksummed (mixed case). The point comes from pyca ``cryptography``
    (OpenSSL); :class:`LedgerAccount` derives it again through libsecp256k1.
    """
    from cryptography.hazmat.primitives import serialization

    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return _checksummed(point)


def _checksummed(uncompressed_point: bytes) -> str:
    """EIP-55: a hex digit upper-cased where Keccak-256 of the lower-case address is ≥ 8."""
    plain = keccak256(uncompressed_point[1:])[-20:].hex()
    mask = keccak256(plain.encode("ascii")).hex()[:40]
    return "0x" + "".join(
        c.upper() if int(m, 16) >= 8 else c for c, m in zip(plain, mask, strict=True)
    )


class LedgerAccount:
    """Signs anchor transactions with the ledger key; never shows the key itself.

    The signature is libsecp256k1's (coincurve): deterministic (RFC 6979) and with a
    low ``s``, as Ethereum requires, and recoverable, which gives the ``y_parity``.
    """

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        from coincurve import PrivateKey

        if not isinstance(key.curve, ec.SECP256K1):
            raise DidgwError("the ledger account key must be secp256k1")
        self._key = PrivateKey(key.private_numbers().private_value.to_bytes(32, "big"))
        self.address: str = _checksummed(self._key.public_key.format(compressed=False))
        if self.address != ledger_address(key):  # pragma: no cover - two derivations agree
            raise DidgwError("ledger address derivation disagrees between OpenSSL and libsecp256k1")

    def __repr__(self) -> str:  # keep the key out of logs and tracebacks
        return f"LedgerAccount({self.address})"

    def sign_anchor(self, data: bytes, *, chain_id: int, nonce: int, fees: Fees) -> SignedTx:
        """A 0-value EIP-1559 transaction to the account itself carrying ``data``."""
        fields = Eip1559Fields(
            chain_id=chain_id,
            nonce=nonce,
            priority_fee=fees.priority_fee,
            max_fee=fees.max_fee,
            gas=anchor_gas(data),
            to=bytes.fromhex(self.address[2:]),
            value=0,
            data=data,
        )
        signature = self._key.sign_recoverable(fields.signing_hash(), hasher=None)
        r, s, y_parity = signature[:32], signature[32:64], signature[64]
        if y_parity > 1:  # pragma: no cover - r above the group order: about 2**-127
            raise DidgwError("secp256k1 signature with an x-overflowed r; sign again")
        raw = fields.raw(y_parity, int.from_bytes(r, "big"), int.from_bytes(s, "big"))
        return SignedTx(raw, keccak256(raw), nonce)


def binding_statement(signer: Signer, address: str, *, issued: int) -> str:
    """The gateway DID's signed statement that ``address`` is its ledger account.

    A compact JWS (``typ`` ``didgw-ledger-binding+jws``, ``kid`` the gateway's
    DID URL) over ``{"type", "did", "address", "issued"}``; ``issued`` is Unix seconds.
    """
    body = {"type": BINDING_TYPE, "did": signer.did, "address": address, "issued": issued}
    payload = json.dumps(body, separators=(",", ":")).encode()
    return sign_jws(payload, signer, headers={"typ": BINDING_JWS_TYP})

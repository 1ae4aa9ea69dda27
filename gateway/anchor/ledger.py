"""The seam between anchoring and a ledger: what the gateway needs a ledger to do.

Backends (``gateway/transports/evm.py`` for EVM JSON-RPC) implement
:class:`Ledger`; the queue and the anchoring loop only see this protocol, so
tests and future backends plug in without touching them. Every method may raise
:class:`LedgerUnavailable` (cannot reach the node: retry later) or
:class:`LedgerError` (the node refused: the message says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.errors import DidgwError

__all__ = ["Ledger", "LedgerError", "LedgerUnavailable", "TxReceipt"]


class LedgerError(DidgwError):
    """The ledger answered, but refused or contradicted what the gateway expects."""

    code = "ledger_refused"


class LedgerUnavailable(LedgerError):
    """The ledger could not be reached (connection refused, timeout, 5xx)."""

    code = "cannot_connect"


@dataclass(frozen=True)
class TxReceipt:
    """Where a transaction was included; ``status`` 1 is success."""

    block_number: int
    block_hash: bytes
    status: int


class Ledger(Protocol):
    """An EVM-style ledger as the gateway uses it."""

    def chain_id(self) -> int:
        """The chain's id (EIP-155): which network this is."""
        ...

    def head(self) -> int:
        """The number of the newest block."""
        ...

    def base_fee(self) -> int:
        """The newest block's base fee per gas, in wei."""
        ...

    def balance(self, address: str) -> int:
        """The account's balance in wei."""
        ...

    def nonce(self, address: str, *, pending: bool) -> int:
        """Transactions sent from the account: mined (``pending=False``) or also in the pool."""
        ...

    def send_raw(self, raw: bytes) -> None:
        """Broadcast a signed transaction; one the node already has is not an error."""
        ...

    def receipt(self, tx_hash: bytes) -> TxReceipt | None:
        """The receipt of a mined transaction, or None if it is not (or no longer) in a block."""
        ...

    def known(self, tx_hash: bytes) -> bool:
        """Whether the node knows the transaction at all (in its pool or in a block)."""
        ...

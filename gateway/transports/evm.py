"""EVM JSON-RPC: the :class:`~gateway.anchor.ledger.Ledger` backend, with web3.py over HTTP.

Thin on purpose: each method is one or two JSON-RPC calls, and every failure is
mapped onto the ledger's two errors — the node could not be reached
(:class:`LedgerUnavailable`: connection refused, timeout, HTTP 5xx) or it
answered with a refusal (:class:`LedgerError`). Transactions arrive here already
signed (the node holds no keys); sending one the node already has, or one
already mined, is not an error, so re-sending after a crash is always safe.

:func:`read_ledger_view` is the read-only part that receipt verification needs.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.anchor.ledger import LedgerError, LedgerUnavailable, TxReceipt, recursion_kept
from gateway.anchor.verify_receipt import LedgerView

__all__ = ["EvmLedger", "read_ledger_view"]

# Answers to eth_sendRawTransaction that mean "the node has (or had) this one".
_ALREADY = ("already known", "already imported", "known transaction", "nonce too low")


class EvmLedger:
    """An EVM node reached over JSON-RPC on HTTP(S)."""

    def __init__(self, url: str, *, timeout: float) -> None:
        with recursion_kept():
            from web3 import Web3

        self.url = url
        self._w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))

    def __repr__(self) -> str:
        return f"EvmLedger({self.url})"

    def _call(self, what: str, call: Any, *args: Any) -> Any:
        with recursion_kept():
            from web3.exceptions import TransactionNotFound, Web3RPCError

        try:
            return call(*args)
        except TransactionNotFound:
            raise
        except Web3RPCError as exc:
            raise LedgerError(f"ledger at {self.url} refused {what}: {_rpc_message(exc)}") from None
        except (OSError, TimeoutError) as exc:
            raise LedgerUnavailable(f"cannot reach the ledger at {self.url}: {exc}") from None
        except Exception as exc:
            # requests' ConnectionError/Timeout and HTTP errors (5xx) derive from OSError;
            # anything else from the transport is still "could not ask the node".
            if type(exc).__module__.startswith(("requests", "urllib3", "aiohttp")):
                raise LedgerUnavailable(f"cannot reach the ledger at {self.url}: {exc}") from None
            raise

    def chain_id(self) -> int:
        return int(self._call("eth_chainId", lambda: self._w3.eth.chain_id))

    def head(self) -> int:
        return int(self._call("eth_blockNumber", lambda: self._w3.eth.block_number))

    def base_fee(self) -> int:
        block = self._call("eth_getBlockByNumber", self._w3.eth.get_block, "latest")
        return int(block.get("baseFeePerGas", 0))

    def balance(self, address: str) -> int:
        return int(self._call("eth_getBalance", self._w3.eth.get_balance, address))

    def nonce(self, address: str, *, pending: bool) -> int:
        block = "pending" if pending else "latest"
        return int(
            self._call(
                "eth_getTransactionCount", self._w3.eth.get_transaction_count, address, block
            )
        )

    def send_raw(self, raw: bytes) -> None:
        try:
            self._call("eth_sendRawTransaction", self._w3.eth.send_raw_transaction, raw)
        except LedgerError as exc:
            if isinstance(exc, LedgerUnavailable) or not any(
                a in str(exc).lower() for a in _ALREADY
            ):
                raise

    def receipt(self, tx_hash: bytes) -> TxReceipt | None:
        with recursion_kept():
            from web3.exceptions import TransactionNotFound

        try:
            found = self._call(
                "eth_getTransactionReceipt", self._w3.eth.get_transaction_receipt, tx_hash
            )
        except TransactionNotFound:
            return None
        if found is None or found.get("blockNumber") is None:
            return None
        return TxReceipt(int(found["blockNumber"]), bytes(found["blockHash"]), int(found["status"]))

    def known(self, tx_hash: bytes) -> bool:
        with recursion_kept():
            from web3.exceptions import TransactionNotFound

        try:
            return bool(
                self._call("eth_getTransactionByHash", self._w3.eth.get_transaction, tx_hash)
            )
        except TransactionNotFound:
            return False


def _reason(exc: Exception) -> str:
    """The root cause in a few words ("Connection refused"), not urllib3's retry story."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    if "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
        return "timed out"
    return text[:200]


def _rpc_message(exc: Exception) -> str:
    args = exc.args[0] if exc.args else exc
    if isinstance(args, dict):
        return str(args.get("message", args))
    return str(args)


def read_ledger_view(url: str, tx_hash: bytes, *, timeout: float = 10.0) -> LedgerView | None:
    """What the node at ``url`` says about ``tx_hash``; None when it does not know it."""
    with recursion_kept():
        from web3.exceptions import TransactionNotFound

    ledger = EvmLedger(url, timeout=timeout)
    w3 = ledger._w3
    chain_id = ledger.chain_id()
    try:
        tx = ledger._call("eth_getTransactionByHash", w3.eth.get_transaction, tx_hash)
    except TransactionNotFound:
        return None
    if tx is None:
        return None
    receipt = ledger.receipt(tx_hash)
    return LedgerView(
        chain_id=chain_id,
        head=ledger.head(),
        sender=str(tx["from"]),
        recipient=None if tx.get("to") is None else str(tx["to"]),
        value=int(tx["value"]),
        data=bytes(tx["input"]),
        block_number=None if tx.get("blockNumber") is None else int(tx["blockNumber"]),
        block_hash=None if tx.get("blockHash") is None else bytes(tx["blockHash"]),
        status=None if receipt is None else receipt.status,
    )

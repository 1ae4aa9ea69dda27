"""EVM JSON-RPC: the :class:`~gateway.anchor.ledger.Ledger` backend, over ``jsonrpc.py``.

Thin on purpose: each method is one JSON-RPC call and a strict reading of its
answer (hex quantities and byte strings, as the Ethereum JSON-RPC specification
writes them); an answer of the wrong shape is the node's fault and a
:class:`LedgerError` that names the method. Transactions arrive here already
signed (the node holds no keys); sending one the node already has, or one
already mined, is not an error, so re-sending after a crash is always safe.

:func:`read_ledger_view` is the read-only part that receipt verification needs.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.anchor.ledger import LedgerError, TxReceipt
from gateway.anchor.verify_receipt import LedgerView
from gateway.transports.jsonrpc import JsonRpc, RpcRefusal

__all__ = ["EvmLedger", "read_ledger_view"]

# Answers to eth_sendRawTransaction that mean "the node has (or had) this one".
_ALREADY = ("already known", "already imported", "known transaction", "nonce too low")
_QUANTITY = re.compile(r"0x(0|[1-9a-fA-F][0-9a-fA-F]{0,63})")
_DATA = re.compile(r"0x(?:[0-9a-fA-F]{2})*")


def _quantity(url: str, value: Any, what: str) -> int:
    if not isinstance(value, str) or not _QUANTITY.fullmatch(value):
        raise _malformed(url, what, value, "a hex quantity")
    return int(value, 16)


def _data(url: str, value: Any, what: str, length: int | None = None) -> bytes:
    if not isinstance(value, str) or not _DATA.fullmatch(value):
        raise _malformed(url, what, value, "hex data")
    data = bytes.fromhex(value[2:])
    if length is not None and len(data) != length:
        raise _malformed(url, what, value, f"{length} bytes")
    return data


def _object(url: str, value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(url, what, value, "an object")
    return value


def _malformed(url: str, what: str, value: Any, wanted: str) -> LedgerError:
    return LedgerError(f"the ledger at {url} gave {what} as {repr(value)[:80]}, not {wanted}")


class EvmLedger:
    """An EVM node reached over JSON-RPC on HTTP(S)."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self._rpc = JsonRpc(url, timeout=timeout)
        #: scheme, host and port: what messages show (the rest may hold an API key)
        self.where = self._rpc.where

    def __repr__(self) -> str:
        return f"EvmLedger({self.where})"

    def chain_id(self) -> int:
        return _quantity(self.where, self._rpc.call("eth_chainId"), "eth_chainId")

    def head(self) -> int:
        return _quantity(self.where, self._rpc.call("eth_blockNumber"), "eth_blockNumber")

    def base_fee(self) -> int:
        block = _object(
            self.where, self._rpc.call("eth_getBlockByNumber", "latest", False), "the latest block"
        )
        fee = block.get("baseFeePerGas")
        return 0 if fee is None else _quantity(self.where, fee, "the block's baseFeePerGas")

    def balance(self, address: str) -> int:
        return _quantity(
            self.where, self._rpc.call("eth_getBalance", address, "latest"), "a balance"
        )

    def nonce(self, address: str, *, pending: bool) -> int:
        block = "pending" if pending else "latest"
        found = self._rpc.call("eth_getTransactionCount", address, block)
        return _quantity(self.where, found, "eth_getTransactionCount")

    def send_raw(self, raw: bytes) -> None:
        try:
            self._rpc.call("eth_sendRawTransaction", "0x" + raw.hex())
        except RpcRefusal as exc:
            if not any(a in exc.rpc_message.lower() for a in _ALREADY):
                raise

    def receipt(self, tx_hash: bytes) -> TxReceipt | None:
        found = self._rpc.call("eth_getTransactionReceipt", "0x" + tx_hash.hex())
        if found is None:
            return None
        found = _object(self.where, found, "a transaction receipt")
        if found.get("blockNumber") is None:
            return None
        return TxReceipt(
            _quantity(self.where, found["blockNumber"], "the receipt's blockNumber"),
            _data(self.where, found.get("blockHash"), "the receipt's blockHash", 32),
            _quantity(self.where, found.get("status"), "the receipt's status"),
        )

    def transaction(self, tx_hash: bytes) -> dict[str, Any] | None:
        """The node's view of the transaction (``eth_getTransactionByHash``), or None."""
        found = self._rpc.call("eth_getTransactionByHash", "0x" + tx_hash.hex())
        return None if found is None else _object(self.where, found, "a transaction")

    def known(self, tx_hash: bytes) -> bool:
        return self.transaction(tx_hash) is not None


def read_ledger_view(url: str, tx_hash: bytes, *, timeout: float = 10.0) -> LedgerView | None:
    """What the node at ``url`` says about ``tx_hash``; None when it does not know it."""
    ledger = EvmLedger(url, timeout=timeout)
    where = ledger.where
    chain_id = ledger.chain_id()
    tx = ledger.transaction(tx_hash)
    if tx is None:
        return None
    receipt = ledger.receipt(tx_hash)
    to, number, block = tx.get("to"), tx.get("blockNumber"), tx.get("blockHash")
    return LedgerView(
        chain_id=chain_id,
        head=ledger.head(),
        sender="0x" + _data(where, tx.get("from"), "the transaction's from", 20).hex(),
        recipient=None if to is None else "0x" + _data(where, to, "its to", 20).hex(),
        value=_quantity(where, tx.get("value"), "the transaction's value"),
        data=_data(where, tx.get("input"), "the transaction's input"),
        block_number=None if number is None else _quantity(where, number, "its blockNumber"),
        block_hash=None if block is None else _data(where, block, "its blockHash", 32),
        status=None if receipt is None else receipt.status,
    )

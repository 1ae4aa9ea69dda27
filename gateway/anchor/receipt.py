"""Receipts: everything a third party needs to check one entry against the ledger.

:func:`build_receipt` is pure: the caller (``didgw receipt``) reads the entry,
the anchor covering it, the inclusion proof and the binding statement from the
gateway database and passes them in. The JSON layout is the one
:mod:`gateway.anchor.verify_receipt` reads; docs/formats.md, "Receipts" documents it.
"""

from __future__ import annotations

import base64
from typing import Any

from gateway.anchor.queue import Anchor, AnchorQueue
from gateway.anchor.verify_receipt import RECEIPT_TYPE, RECEIPT_VERSION
from gateway.chain.store import ChainError, ChainStore, Entry

__all__ = ["build_receipt", "receipt_for"]

ERASED_NOTE = (
    "the payload was erased from the record (personal data); its commitment, and so "
    "every proof, still stands"
)


def build_receipt(
    *, gateway: str, entry: Entry, anchor: Anchor, path: list[bytes], binding: str
) -> dict[str, Any]:
    """The receipt of ``entry``, proven into the confirmed ``anchor``'s checkpoint."""
    if anchor.state != "confirmed" or anchor.tx_hash is None or anchor.block_hash is None:
        raise ValueError(f"anchor of size {anchor.size} is not confirmed on the ledger")
    return {
        "type": RECEIPT_TYPE,
        "version": RECEIPT_VERSION,
        "gateway": gateway,
        "entry": {
            "seq": entry.seq,
            "ts": entry.ts,
            "kind": entry.kind,
            "actor": entry.actor,
            "commitment": entry.commitment.hex(),
            "salt": None if entry.salt is None else entry.salt.hex(),
        },
        "payload": None if entry.payload is None else _payload(entry.payload),
        "erasure": None
        if not entry.erased
        else {"erased_by_entry": entry.erased_by, "note": ERASED_NOTE},
        "inclusion": {"tree_size": anchor.size, "path": [h.hex() for h in path]},
        "checkpoint": anchor.checkpoint,
        "binding": binding,
        "ledger": {
            "chain_id": anchor.chain_id,
            "tx_hash": "0x" + anchor.tx_hash.hex(),
            "block_number": anchor.block_number,
            "block_hash": "0x" + anchor.block_hash.hex(),
            "address": anchor.address,
        },
    }


def _payload(payload: bytes) -> dict[str, str]:
    """Text payloads (JWS, JSON) as they are, so a person can read them; others as base64."""
    try:
        return {"encoding": "utf-8", "data": payload.decode("utf-8")}
    except UnicodeDecodeError:
        return {"encoding": "base64", "data": base64.b64encode(payload).decode("ascii")}


def receipt_for(
    chain: ChainStore, queue: AnchorQueue, *, gateway: str, binding: str | None, seq: int
) -> dict[str, Any]:
    """The receipt of entry ``seq`` from the gateway's database, or the reason there is none yet."""
    entry = chain.get(seq)
    anchor = queue.anchored_for(seq)
    if anchor is None:
        last = queue.last_confirmed()
        so_far = "nothing" if last is None else f"entries 0 to {last.size - 1}"
        raise ChainError(
            f"entry {seq} is not anchored yet (anchored so far: {so_far}); "
            "try again after the next anchor is confirmed (didgw anchor status)"
        )
    if binding is None:
        raise ChainError("this gateway has no ledger binding statement; run didgw init again")
    path = chain.inclusion_proof(seq, anchor.size)
    return build_receipt(gateway=gateway, entry=entry, anchor=anchor, path=path, binding=binding)

"""Anchors: the record's signed checkpoints, written to a ledger nobody at the edge controls.

Sans-IO, like the rest of the core: the anchor encoding (:mod:`.encoding`), the
ledger account and the statement binding it to the gateway DID (:mod:`.account`),
the seam to a ledger (:mod:`.ledger`), the durable queue and its state machine
(:mod:`.queue`) and receipts (:mod:`.receipt`). :mod:`.verify_receipt` is what a
household runs to check a receipt. The JSON-RPC backend lives in
``gateway/transports/evm.py`` and the loop that drives it in ``gateway/run/anchoring.py``.
May import the foundations, ``identity`` and ``chain``; never an edge.
"""

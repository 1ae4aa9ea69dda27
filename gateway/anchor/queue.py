"""The durable anchor queue in SQLite, and the state machine that moves anchors along it.

Every checkpoint to be anchored is a row of ``anchors``::

    queued ──send──▶ sent ──N confirmations──▶ confirmed
      │                │ ▲
      │                │ ├─ re-broadcast (dropped from the pool, re-orged out)
      │                │ └─ reprice (stuck, or priced out by the base fee: same nonce,
      │                │            higher fees; every transaction it had is looked for)
      │                └──▶ queued  (its nonce went to another transaction, or it reverted)
      └──▶ superseded  (a newer checkpoint was sent first; it covers this one)

    confirmed ──its block re-organised away──▶ sent  (the same bytes, followed again)

Rules that make anchoring idempotent and lossless:

* A row becomes ``sent`` — with its nonce, signed bytes and hash — in the same
  transaction that decides to send it, *before* the bytes are broadcast. After a
  crash the row is found ``sent`` and the very same bytes are broadcast again:
  same hash, same nonce, so the ledger can include it at most once.
* At most one anchor is in flight. Its nonce is the account's next one; a newer
  anchor is signed only once the previous one is confirmed (or requeued), so
  nonces never collide and never leave a gap.
* When the ledger comes back after an outage, only the newest queued checkpoint
  is sent; the older ones become ``superseded`` (``covered_by`` names the
  anchor that covers them). The newer tree contains every entry of the older
  ones, and the record can prove it (an RFC 9162 consistency proof), so no entry
  loses its anchor and the ledger gets one transaction instead of a backlog.

:func:`next_step` is the pure decision for the anchor in flight; the edge
(``gateway/run/anchoring.py``) gathers the :class:`Observation` and carries out the
:class:`Step`.
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from gateway.anchor.account import SignedTx
from gateway.anchor.ledger import TxReceipt
from gateway.db import write_transaction

__all__ = [
    "Anchor",
    "AnchorQueue",
    "Observation",
    "Step",
    "checkpoint_due",
    "next_step",
]

_COLUMNS = (
    "id, size, root, checkpoint, created_ms, state, covered_by, chain_id, address, nonce, "
    "tx_hash, raw_tx, sent_ms, sends, block_number, block_hash, confirmed_ms"
)


@dataclass(frozen=True)
class Anchor:
    """One row of the queue."""

    id: int
    size: int
    root: bytes
    checkpoint: str
    created_ms: int
    state: str
    covered_by: int | None
    chain_id: int | None
    address: str | None
    nonce: int | None
    tx_hash: bytes | None
    raw_tx: bytes | None
    sent_ms: int | None
    sends: int
    block_number: int | None
    block_hash: bytes | None
    confirmed_ms: int | None


def checkpoint_due(
    *,
    size: int,
    last_size: int,
    last_ms: int | None,
    now_ms: int,
    every_entries: int,
    every_seconds: float,
) -> bool:
    """Whether to take a checkpoint now: something new, and enough entries or enough time.

    Nothing new since the last anchored size means nothing is sent, however long ago.
    """
    if size <= last_size:
        return False
    if size - last_size >= every_entries or last_ms is None:
        return True
    return now_ms - last_ms >= every_seconds * 1000


@dataclass(frozen=True)
class Observation:
    """What the ledger says about the anchor in flight.

    ``mined_nonce`` must be read *before* ``receipt``: a transaction mined between
    the two reads then shows up in the receipt, and is never mistaken for one
    whose nonce went to another transaction.
    """

    mined_nonce: int
    receipt: TxReceipt | None  # of whichever of the anchor's transactions was mined
    known: bool  # the node knows one of them
    head: int
    base_fee: int = 0  # of the newest block; asked only when nothing is mined


class Step(enum.Enum):
    """What to do with the anchor in flight."""

    WAIT = "wait"  # in the pool, or mined with too few confirmations
    CONFIRM = "confirm"  # mined, successful, with enough confirmations
    REBROADCAST = "rebroadcast"  # unknown to the node: dropped, or re-orged out
    REPRICE = "reprice"  # not mined for too long, or priced out: same nonce, higher fees
    REQUEUE = "requeue"  # its nonce was used by another transaction, or it reverted


def next_step(
    anchor: Anchor,
    seen: Observation,
    *,
    confirmations: int,
    max_fee: int,
    now_ms: int,
    replace_after_seconds: float,
) -> Step:
    """The decision for a ``sent`` anchor, from what the ledger shows.

    ``max_fee`` is what its newest transaction offers per gas. Below the base fee it
    cannot be mined (some nodes drop it, others keep it), so it is repriced rather than
    sent again; one the node keeps but does not mine is repriced after
    ``replace_after_seconds``.
    """
    if anchor.nonce is None or anchor.sent_ms is None:
        raise ValueError("only a sent anchor has a next step")
    receipt = seen.receipt
    if receipt is not None:
        if receipt.status != 1:
            return Step.REQUEUE
        if seen.head - receipt.block_number + 1 >= confirmations:
            return Step.CONFIRM
        return Step.WAIT
    if seen.mined_nonce > anchor.nonce:
        return Step.REQUEUE
    stuck = seen.known and now_ms - anchor.sent_ms >= replace_after_seconds * 1000
    if max_fee < seen.base_fee or stuck:
        return Step.REPRICE
    return Step.WAIT if seen.known else Step.REBROADCAST


class AnchorQueue:
    """The ``anchors`` table: what is queued, in flight and anchored."""

    def __init__(self, db: Database) -> None:
        self._conn: sqlite3.Connection = db.conn

    # -- reading ---------------------------------------------------------------

    def _one(self, where: str, params: list[Any]) -> Anchor | None:
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM anchors WHERE {where} LIMIT 1",  # noqa: S608 - constants
            params,
        ).fetchone()
        return None if row is None else _anchor(row)

    def get(self, anchor_id: int) -> Anchor | None:
        return self._one("id = ?", [anchor_id])

    def of_size(self, size: int) -> Anchor | None:
        """The anchor of the tree of ``size`` entries (the newest, if it was queued again)."""
        return self._one("size = ? ORDER BY id DESC", [size])

    def last(self) -> Anchor | None:
        """The newest checkpoint taken for anchoring, whatever its state."""
        return self._one("1 ORDER BY size DESC", [])

    def in_flight(self) -> Anchor | None:
        return self._one("state = 'sent' ORDER BY size", [])

    def newest_queued(self) -> Anchor | None:
        return self._one("state = 'queued' ORDER BY size DESC", [])

    def last_confirmed(self) -> Anchor | None:
        return self._one("state = 'confirmed' ORDER BY size DESC", [])

    def watched(self, from_block: int) -> list[Anchor]:
        """Confirmed anchors in block ``from_block`` or later: not yet final, so watched."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM anchors WHERE state = 'confirmed' "  # noqa: S608
            "AND block_number >= ? ORDER BY size",
            [from_block],
        )
        return [_anchor(row) for row in rows]

    def anchored_for(self, seq: int) -> Anchor | None:
        """The smallest confirmed anchor whose tree contains entry ``seq``."""
        return self._one("state = 'confirmed' AND size > ? ORDER BY size", [seq])

    def tx_hashes(self, anchor: Anchor) -> list[bytes]:
        """The transactions signed for ``anchor`` with its current nonce, newest first.

        One of them is ``anchor.tx_hash``; the others are those it replaced, and any of
        them may still be mined.
        """
        rows = self._conn.execute(
            "SELECT tx_hash FROM anchor_txs WHERE anchor_id = ? AND nonce = ? "
            "ORDER BY sent_ms DESC, rowid DESC",
            [anchor.id, anchor.nonce],
        )
        found = [bytes(h) for (h,) in rows]
        current = [] if anchor.tx_hash is None else [anchor.tx_hash]
        return current + [h for h in found if h != anchor.tx_hash]

    def recent(self, limit: int) -> Iterator[Anchor]:
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM anchors ORDER BY size DESC LIMIT ?",  # noqa: S608
            [limit],
        )
        for row in rows:
            yield _anchor(row)

    def counts(self) -> dict[str, int]:
        rows = self._conn.execute("SELECT state, count(*) FROM anchors GROUP BY state")
        found = {state: 0 for state in ("queued", "sent", "confirmed", "superseded")}
        found.update({str(state): int(n) for state, n in rows})
        return found

    # -- changing --------------------------------------------------------------

    def enqueue(self, size: int, root: bytes, checkpoint: str, *, now_ms: int) -> Anchor:
        """Queue a signed checkpoint of ``size`` entries; sizes only grow."""
        with write_transaction(self._conn):
            last = self._conn.execute("SELECT max(size) FROM anchors").fetchone()[0]
            if last is not None and size <= last:
                raise ValueError(f"tree size {size} is not above the last queued size {last}")
            cursor = self._conn.execute(
                "INSERT INTO anchors (size, root, checkpoint, created_ms, state) "
                "VALUES (?, ?, ?, ?, 'queued')",
                [size, root, checkpoint, now_ms],
            )
        anchor = self.get(int(cursor.lastrowid or 0))
        assert anchor is not None  # noqa: S101 - just inserted
        return anchor

    def mark_sent(
        self, anchor: Anchor, signed: SignedTx, *, chain_id: int, address: str, now_ms: int
    ) -> None:
        """Record ``signed`` as this anchor's transaction, before it is broadcast.

        Older queued checkpoints become ``superseded``, covered by this one.
        """
        with write_transaction(self._conn):
            changed = self._conn.execute(
                "UPDATE anchors SET state = 'sent', chain_id = ?, address = ?, nonce = ?, "
                "tx_hash = ?, raw_tx = ?, sent_ms = ?, sends = sends + 1, "
                "block_number = NULL, block_hash = NULL WHERE id = ? AND state = 'queued'",
                [chain_id, address, signed.nonce, signed.tx_hash, signed.raw, now_ms, anchor.id],
            ).rowcount
            if changed != 1:
                raise ValueError(f"anchor {anchor.id} is not queued")
            self._note_tx(anchor, signed, now_ms)
            self._conn.execute(
                "UPDATE anchors SET state = 'superseded', covered_by = ? "
                "WHERE state = 'queued' AND size < ?",
                [anchor.id, anchor.size],
            )

    def mark_repriced(self, anchor: Anchor, signed: SignedTx, *, now_ms: int) -> None:
        """Record ``signed`` (same nonce, higher fees) as the anchor's newest transaction.

        Before it is broadcast, like :meth:`mark_sent`; the one it replaces stays in
        ``anchor_txs``, since the ledger may still take that one instead.
        """
        with write_transaction(self._conn):
            changed = self._conn.execute(
                "UPDATE anchors SET tx_hash = ?, raw_tx = ?, sent_ms = ?, sends = sends + 1, "
                "block_number = NULL, block_hash = NULL "
                "WHERE id = ? AND state = 'sent' AND nonce = ?",
                [signed.tx_hash, signed.raw, now_ms, anchor.id, signed.nonce],
            ).rowcount
            if changed != 1:
                raise ValueError(f"anchor {anchor.id} has no transaction with nonce {signed.nonce}")
            self._note_tx(anchor, signed, now_ms)

    def _note_tx(self, anchor: Anchor, signed: SignedTx, now_ms: int) -> None:
        self._conn.execute(
            "INSERT OR IGNORE INTO anchor_txs (tx_hash, anchor_id, nonce, sent_ms, raw) "
            "VALUES (?, ?, ?, ?, ?)",
            [signed.tx_hash, anchor.id, signed.nonce, now_ms, signed.raw],
        )

    def mark_rebroadcast(self, anchor: Anchor, *, now_ms: int) -> None:
        with write_transaction(self._conn):
            self._conn.execute(
                "UPDATE anchors SET sends = sends + 1, sent_ms = ?, block_number = NULL, "
                "block_hash = NULL WHERE id = ? AND state = 'sent'",
                [now_ms, anchor.id],
            )

    def mark_mined(self, anchor: Anchor, receipt: TxReceipt) -> None:
        """Note where the transaction is (not yet final: it may still be re-orged out)."""
        with write_transaction(self._conn):
            self._conn.execute(
                "UPDATE anchors SET block_number = ?, block_hash = ? WHERE id = ? "
                "AND state = 'sent'",
                [receipt.block_number, receipt.block_hash, anchor.id],
            )

    def mark_confirmed(
        self, anchor: Anchor, receipt: TxReceipt, *, now_ms: int, tx_hash: bytes | None = None
    ) -> None:
        """Anchored: by ``tx_hash`` when the ledger took one the newest replaced.

        The bytes of the transaction mined stay with the anchor (see :meth:`unconfirm`).
        """
        with write_transaction(self._conn):
            self._conn.execute(
                "UPDATE anchors SET state = 'confirmed', block_number = ?, block_hash = ?, "
                "confirmed_ms = ?, tx_hash = coalesce(?, tx_hash), raw_tx = (SELECT t.raw "
                "FROM anchor_txs t WHERE t.tx_hash = coalesce(?, anchors.tx_hash)) "
                "WHERE id = ? AND state = 'sent'",
                [receipt.block_number, receipt.block_hash, now_ms, tx_hash, tx_hash, anchor.id],
            )

    def mark_moved(self, anchor: Anchor, receipt: TxReceipt) -> None:
        """A re-organisation put a confirmed anchor's transaction in another block."""
        with write_transaction(self._conn):
            self._conn.execute(
                "UPDATE anchors SET block_number = ?, block_hash = ? "
                "WHERE id = ? AND state = 'confirmed'",
                [receipt.block_number, receipt.block_hash, anchor.id],
            )

    def unconfirm(self, anchor: Anchor, *, now_ms: int) -> None:
        """A re-organisation took a confirmed anchor's block away: follow its transaction
        again (``sent``, the same bytes), or queue it for a new one if its bytes are gone."""
        with write_transaction(self._conn):
            self._conn.execute(
                "UPDATE anchors SET state = CASE WHEN raw_tx IS NULL THEN 'queued' "
                "ELSE 'sent' END, nonce = CASE WHEN raw_tx IS NULL THEN NULL ELSE nonce END, "
                "tx_hash = CASE WHEN raw_tx IS NULL THEN NULL ELSE tx_hash END, "
                "sent_ms = ?, block_number = NULL, block_hash = NULL, confirmed_ms = NULL "
                "WHERE id = ? AND state = 'confirmed'",
                [now_ms, anchor.id],
            )

    def requeue(self, anchor: Anchor) -> None:
        """Back to ``queued``: its transaction can never be included; it needs a new one."""
        with write_transaction(self._conn):
            self._conn.execute(
                "UPDATE anchors SET state = 'queued', nonce = NULL, tx_hash = NULL, "
                "raw_tx = NULL, block_number = NULL, block_hash = NULL "
                "WHERE id = ? AND state = 'sent'",
                [anchor.id],
            )

    # -- health, for `didgw anchor status` ---------------------------------------

    def set_meta(self, values: dict[str, str], *, now_ms: int) -> None:
        with write_transaction(self._conn):
            self._conn.executemany(
                "INSERT INTO anchor_meta (key, value, updated_ms) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "updated_ms = excluded.updated_ms",
                [(key, value, now_ms) for key, value in values.items()],
            )

    def meta(self) -> dict[str, tuple[str, int]]:
        rows = self._conn.execute("SELECT key, value, updated_ms FROM anchor_meta")
        return {str(k): (str(v), int(ms)) for k, v, ms in rows}


def _anchor(row: tuple[Any, ...]) -> Anchor:
    values = list(row)
    for i in (2, 10, 11, 15):  # root, tx_hash, raw_tx, block_hash
        if values[i] is not None:
            values[i] = bytes(values[i])
    return Anchor(*values)

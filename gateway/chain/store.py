"""The record: an append-only hash chain in SQLite with an RFC 9162 Merkle tree over it.

Each entry is ``seq, ts, kind, actor, commitment, prev_hash, hash``:

* ``commitment = SHA-256(salt || payload)`` with a random 16-byte salt. The
  payload (the signed bytes as received) and the salt are stored beside the
  entry, not inside it, so that personal data can be *erased* (payload and salt
  deleted) while the commitment, the chain and every proof stay valid;
* ``leaf_hash = SHA-256(0x00 || entry_bytes(ts, kind, actor, commitment))`` is
  Merkle leaf ``seq`` (see :mod:`gateway.chain.verify` for the encoding);
* ``hash = SHA-256(prev_hash || leaf_hash)``, ``prev_hash`` of entry 0 being 32
  zero bytes. ``prev_hash`` is stored so that a verifier can tell an entry that
  was altered (its own hash no longer matches) from one that was moved (it is
  intact but follows the wrong predecessor).

Appends are O(log n): a :class:`~gateway.chain.merkle.Frontier` in memory holds
the right edge of the tree, and the hashes of completed perfect subtrees of 16
leaves or more are stored (``chain_nodes``), so roots and proofs of any size are
computed from O(log n) stored hashes plus at most a few leaves per level below.

Concurrency: every batch is one ``BEGIN IMMEDIATE`` transaction that first
checks the head it is about to extend. Two processes appending to the same file
are therefore serialised by SQLite, never interleaved; a store that finds the
head moved (another process appended) reloads its frontier before appending.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from sqlite_utils import Database

from gateway.chain import merkle
from gateway.chain.verify import GENESIS, entry_bytes, leaf_hash
from gateway.errors import DidgwError
from gateway.identity.document import check_did_syntax

#: Perfect subtrees at this level (2**4 = 16 leaves) and above are stored.
MIN_STORED_LEVEL = 4
SALT_BYTES = 16
MAX_PAYLOAD = 1 << 20
_KIND = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
# Kinds and actor DIDs already checked: the same few recur on every append.
_VALID_KINDS: set[str] = set()
_VALID_ACTORS: set[str] = set()

_ROW = (
    "SELECT e.seq, e.ts, e.kind, a.did, e.commitment, e.prev_hash, e.hash, e.salt, e.payload, "
    "e.erased_by FROM chain_entries e JOIN chain_actors a ON a.id = e.actor"
)


_BY_KEY = (  # built from constants only
    _ROW  # noqa: S608
    + " JOIN chain_keys k ON k.seq = e.seq WHERE k.actor = "
    "(SELECT id FROM chain_actors WHERE did = ?) AND k.kind = ? AND k.key = ?"
)


class ChainError(DidgwError):
    """An append, lookup or proof on the record was refused."""

    code = "chain_refused"


class NewEntry(NamedTuple):
    """What a caller asks to record: the payload is stored exactly as given.

    ``key``, when given, is unique per (actor, kind): appending an entry whose key
    is already recorded returns the recorded entry instead of a new one.
    """

    kind: str
    actor: str
    payload: bytes
    key: int | None = None


class Entry(NamedTuple):
    """A recorded entry. ``payload`` and ``salt`` are None once erased.

    A named tuple rather than a dataclass: the append path builds one per entry.
    """

    seq: int
    ts: int  # milliseconds since the Unix epoch
    kind: str
    actor: str
    commitment: bytes
    prev_hash: bytes
    hash: bytes
    salt: bytes | None
    payload: bytes | None
    erased_by: int | None

    @property
    def leaf_hash(self) -> bytes:
        return leaf_hash(entry_bytes(self.ts, self.kind, self.actor, self.commitment))

    @property
    def erased(self) -> bool:
        return self.erased_by is not None


class ChainStore:
    """Append to, read and prove the record kept in the gateway database."""

    def __init__(self, db: Database, *, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self._conn: sqlite3.Connection = db.conn
        self._random = random_bytes
        self._actor_ids: dict[str, int] = {}
        self._prefixes: dict[tuple[str, str], bytes] = {}
        self.duplicates = 0  # appends answered with an entry already recorded under its key
        self._frontier = merkle.Frontier()
        self._head = GENESIS
        self._load()

    def close(self) -> None:
        """Close the database connection the store was given."""
        self._conn.close()

    # -- state -------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._frontier.size

    @property
    def head_hash(self) -> bytes:
        """The chain hash of the newest entry (32 zero bytes when empty)."""
        return self._head

    def root(self) -> bytes:
        """The Merkle root of the whole record."""
        return self._frontier.root()

    def _load(self) -> None:
        row = self._conn.execute(
            "SELECT seq, hash FROM chain_entries ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        size, head = (0, GENESIS) if row is None else (row[0] + 1, bytes(row[1]))
        self._frontier = merkle.Frontier.from_nodes(size, self._node)
        self._head = head

    # -- appending ---------------------------------------------------------

    def append(self, kind: str, actor: str, payload: bytes, *, now_ms: int) -> Entry:
        """Record one entry; returns once it is durably committed."""
        return self.append_batch([NewEntry(kind, actor, payload)], now_ms=now_ms)[0]

    def append_batch(self, items: Sequence[NewEntry], *, now_ms: int) -> list[Entry]:
        """Record several entries in one transaction (one fsync); all or none."""
        for item in items:
            check_new_entry(item)
        with self._write():
            return self._append_locked(items, now_ms)

    def append_within(self, items: Sequence[NewEntry], *, now_ms: int) -> list[Entry]:
        """Append inside the caller's open write transaction (``BEGIN IMMEDIATE``).

        For changes that must be on the record atomically with other tables (the
        registry). If the caller rolls back, it must call :meth:`resync`.
        """
        if not self._conn.in_transaction:
            raise ChainError("append_within needs an open write transaction")
        for item in items:
            check_new_entry(item)
        self._sync_head()
        return self._append_locked(items, now_ms)

    def resync(self) -> None:
        """Forget what is cached and reload the head from the database (after a rollback)."""
        self._actor_ids.clear()
        self._load()

    def _sync_head(self) -> None:
        row = self._conn.execute(
            "SELECT seq, hash FROM chain_entries ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        size = 0 if row is None else row[0] + 1
        if size != self.size or (row is not None and bytes(row[1]) != self.head_hash):
            self.resync()  # another process appended, or a transaction was rolled back

    def _append_locked(self, items: Sequence[NewEntry], now_ms: int) -> list[Entry]:
        # The hot path: local names, one urandom call per batch, cached encodings.
        sha256, append_leaf = hashlib.sha256, self._frontier.append
        salts = self._random(SALT_BYTES * len(items))
        ts_bytes = b"\x00" + now_ms.to_bytes(8, "big", signed=True)
        rows: list[tuple[Any, ...]] = []
        nodes: list[tuple[int, int, bytes]] = []
        entries: list[Entry] = []
        prev, seq = self._head, self._frontier.size
        keys: list[tuple[int, str, int, int]] = []
        known: dict[tuple[str, str, int], Entry] = {}
        for i, (kind, actor, payload, key) in enumerate(items):
            if key is not None:
                existing = known.get((actor, kind, key)) or self.find_key(actor, kind, key)
                if existing is not None:
                    entries.append(existing)
                    self.duplicates += 1
                    continue
            salt = salts[i * SALT_BYTES : (i + 1) * SALT_BYTES]
            commitment = sha256(salt + payload).digest()
            prefix = self._prefixes.get((kind, actor))
            if prefix is None:
                prefix = self._prefixes[(kind, actor)] = entry_bytes(0, kind, actor, GENESIS)[8:-32]
            leaf = sha256(ts_bytes + prefix + commitment).digest()
            digest = sha256(prev + leaf).digest()
            rows.append(
                (seq, now_ms, kind, self._actor_id(actor), commitment, prev, digest, salt, payload)
            )
            if seq & 0xF == 0xF:  # completes a subtree of 16 leaves or more
                nodes.extend(n for n in append_leaf(leaf) if n[0] >= MIN_STORED_LEVEL)
            else:
                append_leaf(leaf)
            entry = Entry(seq, now_ms, kind, actor, commitment, prev, digest, salt, payload, None)
            entries.append(entry)
            if key is not None:
                keys.append((self._actor_id(actor), kind, key, seq))
                known[(actor, kind, key)] = entry
            prev, seq = digest, seq + 1
        self._conn.executemany(
            "INSERT INTO chain_entries (seq, ts, kind, actor, commitment, prev_hash, hash, salt, "
            "payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        self._conn.executemany("INSERT INTO chain_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
        if keys:
            self._conn.executemany(
                "INSERT INTO chain_keys (actor, kind, key, seq) VALUES (?, ?, ?, ?)", keys
            )
        self._head = prev
        return entries

    def _actor_id(self, did: str) -> int:
        actor_id = self._actor_ids.get(did)
        if actor_id is None:
            row = self._conn.execute("SELECT id FROM chain_actors WHERE did = ?", [did]).fetchone()
            if row is None:
                cursor = self._conn.execute("INSERT INTO chain_actors (did) VALUES (?)", [did])
                actor_id = int(cursor.lastrowid or 0)
            else:
                actor_id = int(row[0])
            self._actor_ids[did] = actor_id
        return actor_id

    def _write(self) -> _WriteTransaction:
        return _WriteTransaction(self)

    # -- erasure -----------------------------------------------------------

    def erase(self, seq: int, *, reason: str, by: str, actor: str, now_ms: int) -> Entry:
        """Delete the payload of entry ``seq``; record why in a new ``erasure`` entry.

        The commitment stays, so the chain and all proofs still verify; the entry
        is reported as erased from then on. ``actor`` (the gateway's DID) records
        the erasure; ``by`` says who asked for it.
        """
        if not reason.strip():
            raise ChainError("an erasure needs a reason")
        check_did_syntax(actor)
        with self._write():
            entry = self.get(seq)
            if entry.erased:
                raise ChainError(f"entry {seq} was already erased (by entry {entry.erased_by})")
            if entry.kind == "erasure":
                raise ChainError(f"entry {seq} is an erasure record; those are never erased")
            payload = json.dumps({"erased": seq, "reason": reason, "by": by}).encode()
            [record] = self._append_locked([NewEntry("erasure", actor, payload)], now_ms)
            self._conn.execute(
                "UPDATE chain_entries SET payload = NULL, salt = NULL, erased_by = ? WHERE seq = ?",
                [record.seq, seq],
            )
        return record

    # -- reading -----------------------------------------------------------

    def find_key(self, actor: str, kind: str, key: int) -> Entry | None:
        """The entry recorded under ``key`` for (actor, kind), if any."""
        row = self._conn.execute(_BY_KEY, [actor, kind, key]).fetchone()
        return None if row is None else _entry(row)

    def last_key(self, actor: str, kind: str) -> int | None:
        """The highest key recorded for (actor, kind): a device's last accepted sequence number."""
        row = self._conn.execute(
            "SELECT max(k.key) FROM chain_keys k JOIN chain_actors a ON a.id = k.actor "
            "WHERE a.did = ? AND k.kind = ?",
            [actor, kind],
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def get(self, seq: int) -> Entry:
        row = self._conn.execute(_ROW + " WHERE e.seq = ?", [seq]).fetchone()
        if row is None:
            raise ChainError(f"no entry {seq}: the record holds entries 0 to {self.size - 1}")
        return _entry(row)

    def entries(self, start: int = 0) -> Iterator[Entry]:
        """Every entry from ``start`` on, in order (streams; for export)."""
        for row in self._conn.execute(_ROW + " WHERE e.seq >= ? ORDER BY e.seq", [start]):
            yield _entry(row)

    def leaf(self, seq: int) -> bytes:
        row = self._conn.execute(
            "SELECT e.ts, e.kind, a.did, e.commitment FROM chain_entries e "
            "JOIN chain_actors a ON a.id = e.actor WHERE e.seq = ?",
            [seq],
        ).fetchone()
        if row is None:
            raise ChainError(f"no entry {seq}")
        return leaf_hash(entry_bytes(row[0], row[1], row[2], bytes(row[3])))

    def _node(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree (level, index): stored, or recomputed from its leaves."""
        if level >= MIN_STORED_LEVEL:
            row = self._conn.execute(
                "SELECT hash FROM chain_nodes WHERE level = ? AND idx = ?", [level, index]
            ).fetchone()
            if row is not None:
                return bytes(row[0])
        start = index << level
        return merkle.mth([self.leaf(i) for i in range(start, start + (1 << level))])

    def _subtree(self, start: int, end: int) -> bytes:
        return merkle.subtree_from_nodes(start, end, self._stored_node, self.leaf)

    def _stored_node(self, level: int, index: int) -> bytes | None:
        if level < MIN_STORED_LEVEL:
            return None
        row = self._conn.execute(
            "SELECT hash FROM chain_nodes WHERE level = ? AND idx = ?", [level, index]
        ).fetchone()
        return None if row is None else bytes(row[0])

    # -- proofs ------------------------------------------------------------

    def _check_size(self, size: int | None) -> int:
        size = self.size if size is None else size
        if not 0 < size <= self.size:
            raise ChainError(f"tree size {size} is not between 1 and {self.size}")
        return size

    def root_at(self, size: int) -> bytes:
        """The Merkle root the record had when it held ``size`` entries."""
        if size == 0:
            return merkle.mth([])
        return merkle.root(self._check_size(size), self._subtree)

    def inclusion_proof(self, seq: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 inclusion path of entry ``seq`` in the tree of ``size`` entries."""
        size = self._check_size(size)
        if not 0 <= seq < size:
            raise ChainError(f"entry {seq} is not in a tree of size {size}")
        return merkle.inclusion_path(seq, size, self._subtree)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """RFC 9162 consistency proof from the tree of ``first`` entries to ``second``."""
        second = self._check_size(second)
        if not 0 < first <= second:
            raise ChainError(f"first size must be between 1 and {second}, got {first}")
        return merkle.consistency_path(first, second, self._subtree)

    # -- checkpoints -------------------------------------------------------

    def add_checkpoint(self, size: int, root: bytes, ts: int, text: str) -> None:
        """Keep a signed checkpoint: later verification checks the record against it."""
        with self._write():
            self._conn.execute(
                "INSERT OR IGNORE INTO chain_checkpoints (size, root, ts, text) "
                "VALUES (?, ?, ?, ?)",
                [size, root, ts, text],
            )

    def latest_checkpoint(self) -> tuple[int, bytes, str] | None:
        row = self._conn.execute(
            "SELECT size, root, text FROM chain_checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]), str(row[2]))


class _WriteTransaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; on any failure roll back and resynchronise."""

    def __init__(self, store: ChainStore) -> None:
        self._store = store

    def __enter__(self) -> None:
        store = self._store
        try:
            store._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise ChainError(f"cannot write to the record: {exc}") from None
        store._sync_head()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        store = self._store
        if exc is None:
            try:
                store._conn.execute("COMMIT")
                return
            except sqlite3.Error as commit_error:
                exc = commit_error
        if store._conn.in_transaction:
            store._conn.execute("ROLLBACK")
        store.resync()
        if isinstance(exc, sqlite3.Error):
            raise ChainError(
                f"cannot write to the record: {_reason(exc)}; nothing was recorded"
            ) from None


def _reason(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "full" in text:
        return f"{text} (free space or raise the quota)"
    if "readonly" in text:
        return f"{text} (check the file's permissions and the file system)"
    return text


def check_new_entry(item: NewEntry) -> None:
    """Refuse an entry that could never be recorded, before it joins a batch."""
    if not _KIND.fullmatch(item.kind):
        raise ChainError(
            f"entry kind {item.kind!r} must be a lower-case word of up to 32 characters"
        )
    check_did_syntax(item.actor)
    if not isinstance(item.payload, bytes):
        raise ChainError("payload must be bytes")
    if item.key is not None and (not isinstance(item.key, int) or isinstance(item.key, bool)):
        raise ChainError("an entry key must be an integer")
    if len(item.payload) > MAX_PAYLOAD:
        raise ChainError(f"payload of {len(item.payload)} bytes exceeds {MAX_PAYLOAD}")


def _entry(row: tuple[Any, ...]) -> Entry:
    seq, ts, kind, actor, commitment, prev, digest, salt, payload, erased_by = row
    return Entry(
        seq,
        ts,
        kind,
        actor,
        bytes(commitment),
        bytes(prev),
        bytes(digest),
        None if salt is None else bytes(salt),
        None if payload is None else bytes(payload),
        erased_by,
    )

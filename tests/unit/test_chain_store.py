"""The record's store: appends, reloads, proofs, erasure, refusals and storage faults."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest
from sqlite_utils import Database

from gateway.chain import merkle
from gateway.chain.check import check_database
from gateway.chain.store import MIN_STORED_LEVEL, ChainError, ChainStore, NewEntry
from gateway.chain.verify import GENESIS, chain_hash, verify_consistency, verify_inclusion
from gateway.db import connect, migrate

DEVICE = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
GATEWAY = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
T0 = 1_700_000_000_000


def counter_bytes() -> object:
    """Deterministic 'randomness' for salts, so failures reproduce."""
    counter = itertools.count()

    def random_bytes(n: int) -> bytes:
        return bytes(next(counter) % 256 for _ in range(n))

    return random_bytes


@pytest.fixture
def path(tmp_path: Path) -> Path:
    db = connect(tmp_path / "g.db")
    migrate(db, now=0)
    db.close()
    return tmp_path / "g.db"


@pytest.fixture
def store(path: Path) -> ChainStore:
    chain = ChainStore(connect(path), random_bytes=counter_bytes())  # type: ignore[arg-type]
    yield chain
    chain.close()


def fill(store: ChainStore, n: int, batch: int = 7) -> None:
    items = [NewEntry("reading", DEVICE, f'{{"i":{i}}}'.encode()) for i in range(n)]
    for i in range(0, n, batch):
        store.append_batch(items[i : i + batch], now_ms=T0 + i)


def test_append_links_entries_and_grows_the_tree(store: ChainStore) -> None:
    first = store.append("reading", DEVICE, b"one", now_ms=T0)
    second = store.append("reading", DEVICE, b"two", now_ms=T0 + 1)
    assert (first.seq, second.seq) == (0, 1)
    assert first.prev_hash == GENESIS
    assert first.hash == chain_hash(GENESIS, first.leaf_hash)
    assert second.prev_hash == first.hash
    assert store.size == 2 and store.head_hash == second.hash
    assert store.root() == merkle.mth([first.leaf_hash, second.leaf_hash])
    assert store.get(1) == second
    assert second.payload == b"two" and len(second.salt or b"") == 16


def test_reopening_rebuilds_the_same_head_from_stored_nodes(path: Path, store: ChainStore) -> None:
    fill(store, 100)
    reopened = ChainStore(connect(path))
    assert (reopened.size, reopened.root(), reopened.head_hash) == (
        store.size,
        store.root(),
        store.head_hash,
    )
    levels = {lv for (lv,) in reopened._conn.execute("SELECT DISTINCT level FROM chain_nodes")}
    assert min(levels) == MIN_STORED_LEVEL  # small subtrees are recomputed, not stored
    entry = reopened.append("reading", DEVICE, b"after reopen", now_ms=T0 + 999)
    assert entry.prev_hash == store.head_hash
    reopened.close()


def test_proofs_for_every_size_verify(store: ChainStore) -> None:
    fill(store, 70, batch=5)
    leaves = [store.leaf(i) for i in range(70)]
    for size in range(1, 71):
        root = store.root_at(size)
        assert root == merkle.mth(leaves[:size])
        for index in {0, size // 2, size - 1}:
            verify_inclusion(leaves[index], index, size, store.inclusion_proof(index, size), root)
    for first, second in [(1, 70), (16, 33), (32, 64), (17, 17), (63, 70), (5, 6)]:
        verify_consistency(
            first,
            second,
            store.consistency_proof(first, second),
            store.root_at(first),
            store.root_at(second),
        )


def test_erasure_keeps_every_proof_valid(path: Path, store: ChainStore) -> None:
    fill(store, 20)
    root_before = store.root_at(20)
    record = store.erase(
        3, reason="household moved out", by="fm:alice", actor=GATEWAY, now_ms=T0 + 50
    )
    assert record.kind == "erasure" and record.seq == 20 and record.actor == GATEWAY
    erased = store.get(3)
    assert erased.erased and erased.payload is None and erased.salt is None
    assert erased.erased_by == 20
    assert store.root_at(20) == root_before
    verify_inclusion(store.leaf(3), 3, 21, store.inclusion_proof(3, 21), store.root())
    with sqlite3.connect(path) as conn:
        report = check_database(conn)
    conn.close()
    assert report.ok and report.erased == 1 and report.size == 21
    with pytest.raises(ChainError, match="already erased"):
        store.erase(3, reason="again", by="x", actor=GATEWAY, now_ms=T0)
    with pytest.raises(ChainError, match="never erased"):
        store.erase(20, reason="cover tracks", by="x", actor=GATEWAY, now_ms=T0)
    with pytest.raises(ChainError, match="no entry 99"):
        store.erase(99, reason="x", by="x", actor=GATEWAY, now_ms=T0)
    with pytest.raises(ChainError, match="needs a reason"):
        store.erase(4, reason=" ", by="x", actor=GATEWAY, now_ms=T0)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (NewEntry("Reading", DEVICE, b"x"), "lower-case word"),
        (NewEntry("", DEVICE, b"x"), "lower-case word"),
        (NewEntry("reading", "not-a-did", b"x"), "not a DID"),
        (NewEntry("reading", DEVICE, "text"), "must be bytes"),  # type: ignore[arg-type]
        (NewEntry("reading", DEVICE, bytes(2_000_000)), "exceeds"),
    ],
)
def test_entries_that_could_never_be_recorded_are_refused(
    store: ChainStore, entry: NewEntry, message: str
) -> None:
    store.append("reading", DEVICE, b"ok", now_ms=T0)
    with pytest.raises(Exception, match=message):
        store.append_batch([NewEntry("reading", DEVICE, b"fine"), entry], now_ms=T0)
    assert store.size == 1  # the whole batch was refused


def test_lookups_outside_the_record_are_refused(store: ChainStore) -> None:
    fill(store, 3)
    with pytest.raises(ChainError, match="no entry 3"):
        store.get(3)
    with pytest.raises(ChainError, match="tree size 4"):
        store.inclusion_proof(0, 4)
    with pytest.raises(ChainError, match="not in a tree of size 2"):
        store.inclusion_proof(2, 2)
    with pytest.raises(ChainError, match="first size"):
        store.consistency_proof(0, 3)


def test_the_database_refuses_rewrites(path: Path, store: ChainStore) -> None:
    fill(store, 20)
    conn = sqlite3.connect(path)
    for sql in (
        "DELETE FROM chain_entries WHERE seq = 19",
        "UPDATE chain_entries SET ts = 0 WHERE seq = 1",
        "UPDATE chain_entries SET payload = x'00' WHERE seq = 1",
        "UPDATE chain_nodes SET hash = x'00'",
        "DELETE FROM chain_nodes",
    ):
        with pytest.raises(sqlite3.IntegrityError, match=r"append-only|only be erased"):
            conn.execute(sql)
    conn.close()


def test_full_disk_refuses_the_append_and_keeps_what_was_committed(path: Path) -> None:
    db = connect(path)
    store = ChainStore(db)
    fill(store, 10)
    root, size = store.root(), store.size
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages + 1}")  # the file cannot grow: SQLITE_FULL
    with pytest.raises(ChainError, match=r"full.*nothing was recorded"):
        store.append_batch([NewEntry("reading", DEVICE, bytes(50_000))], now_ms=T0)
    assert (store.size, store.root()) == (size, root)
    db.execute("PRAGMA max_page_count = 1000000")  # space freed: appends resume
    assert store.append("reading", DEVICE, b"again", now_ms=T0).seq == size
    store.close()
    with sqlite3.connect(path) as conn:
        assert check_database(conn).ok
    conn.close()


def test_read_only_database_refuses_appends_clearly(path: Path, store: ChainStore) -> None:
    fill(store, 5)
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    readonly = ChainStore(Database(conn, execute_plugins=False))
    assert readonly.size == 5
    with pytest.raises(ChainError, match="cannot write to the record"):
        readonly.append("reading", DEVICE, b"x", now_ms=T0)
    assert readonly.size == 5
    readonly.close()


def test_two_stores_on_one_file_are_serialised_not_interleaved(path: Path) -> None:
    a, b = ChainStore(connect(path)), ChainStore(connect(path))
    for i in range(30):
        (a if i % 3 else b).append("reading", DEVICE, str(i).encode(), now_ms=T0 + i)
    assert (a.size, b.size) == (30, 28)  # b last wrote entry 27, a entry 29
    assert b.append("reading", DEVICE, b"30", now_ms=T0).seq == 30  # b catches up first
    payloads = [e.payload for e in b.entries()]
    assert payloads == [str(i).encode() for i in range(31)]
    a.close()
    b.close()
    with sqlite3.connect(path) as conn:
        assert check_database(conn).ok
    conn.close()


def test_keyed_appends_are_idempotent(store: ChainStore) -> None:
    first = store.append_batch([NewEntry("reading", DEVICE, b"r1", key=1)], now_ms=T0)[0]
    again, new = store.append_batch(
        [NewEntry("reading", DEVICE, b"r1", key=1), NewEntry("reading", DEVICE, b"r2", key=2)],
        now_ms=T0 + 1,
    )
    assert again == first and new.seq == 1 and store.size == 2
    twice = store.append_batch(
        [NewEntry("reading", DEVICE, b"r3", key=3), NewEntry("reading", DEVICE, b"r3", key=3)],
        now_ms=T0 + 2,
    )
    assert twice[0] == twice[1] and store.size == 3
    assert store.duplicates == 2
    assert store.find_key(DEVICE, "reading", 2) == new
    assert store.find_key(DEVICE, "reading", 9) is None
    assert store.find_key(GATEWAY, "reading", 1) is None
    assert store.last_key(DEVICE, "reading") == 3
    assert store.last_key(DEVICE, "note") is None
    with pytest.raises(ChainError, match="integer"):
        store.append_batch([NewEntry("reading", DEVICE, b"x", key="7")], now_ms=T0)  # type: ignore[arg-type]

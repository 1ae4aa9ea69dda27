"""The recorder: concurrent appends grouped into few transactions, every waiter told the truth."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from gateway.chain.store import ChainError, ChainStore
from gateway.db import connect, migrate
from gateway.errors import DidgwError
from gateway.run.recorder import Recorder, RecorderClosed

DEVICE = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    db = connect(tmp_path / "g.db")
    migrate(db, now=0)
    db.close()
    return tmp_path / "g.db"


def recorder(path: Path, **kwargs: int) -> Recorder:
    return Recorder(
        lambda: ChainStore(connect(path)), clock_ms=lambda: int(time.time() * 1000), **kwargs
    )


def test_concurrent_appends_are_grouped_and_each_gets_its_own_entry(path: Path) -> None:
    rec = recorder(path)
    results: list[tuple[int, bytes]] = []
    lock = threading.Lock()

    def produce(worker: int) -> None:
        futures = [rec.submit("reading", DEVICE, f"{worker}:{i}".encode()) for i in range(200)]
        for future in futures:
            entry = future.result()
            with lock:
                results.append((entry.seq, entry.payload or b""))

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec.close()
    assert sorted(seq for seq, _ in results) == list(range(1600))
    assert len({payload for _, payload in results}) == 1600
    assert rec.batches < 1600  # grouped: fewer transactions than entries
    store = ChainStore(connect(path))
    assert store.size == 1600
    assert all(store.get(seq).payload == payload for seq, payload in results)
    store.close()


def test_close_commits_what_was_queued_and_then_refuses(path: Path) -> None:
    rec = recorder(path)
    futures = [rec.submit("reading", DEVICE, b"%d" % i) for i in range(50)]
    rec.close()
    assert [f.result().seq for f in futures] == list(range(50))
    with pytest.raises(RecorderClosed, match="closed"):
        rec.submit("reading", DEVICE, b"late")


def test_a_bad_entry_is_refused_alone(path: Path) -> None:
    rec = recorder(path)
    good = rec.submit("reading", DEVICE, b"fine")
    with pytest.raises(DidgwError, match="not a DID"):
        rec.submit("reading", "nobody", b"x")
    assert good.result().seq == 0
    rec.close()


def test_a_storage_failure_reaches_every_waiter_of_the_batch(path: Path) -> None:
    db = connect(path)

    def full_store() -> ChainStore:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")
        return ChainStore(db)

    rec = Recorder(full_store, clock_ms=lambda: 0)
    futures = [rec.submit("reading", DEVICE, bytes(100_000)) for _ in range(3)]
    for future in futures:
        with pytest.raises(ChainError, match="full"):
            future.result()
    rec.close()


def test_append_async(path: Path) -> None:
    rec = recorder(path)

    async def main() -> list[int]:
        entries = await asyncio.gather(
            *(rec.append_async("reading", DEVICE, b"%d" % i) for i in range(100))
        )
        return [e.seq for e in entries]

    assert sorted(asyncio.run(main())) == list(range(100))
    rec.close()


def test_a_store_that_cannot_open_fails_the_constructor(tmp_path: Path) -> None:
    def broken() -> ChainStore:
        raise ChainError("cannot open the record: disk on fire")

    with pytest.raises(ChainError, match="disk on fire"):
        Recorder(broken, clock_ms=lambda: 0)

"""The recorder: a process's one writer to the record, with group commit.

Readings arrive from many producers at once (MQTT, CoAP, the meter, the
market). Each must be told "accepted" only after its entry is durably
committed, but one fsync per entry would cap the gateway at a few hundred
entries a second on an SD card. The recorder runs the chain store on one
thread: producers queue entries and wait on a future; the thread takes
everything queued, appends it in *one* transaction (one fsync), and completes
all the futures. When idle, a lone entry is committed at once. Under load the
thread lingers up to ``linger`` seconds for more entries before committing (as
PostgreSQL's ``commit_delay``): on a fast disk, entries otherwise trickle in
one or two per transaction while producers are still verifying the next ones,
and the cost per transaction, not the disk, becomes the limit.

Several recorders (one per reading worker process) may write one database. SQLite
serialises them, but a writer that finds the database locked sleeps in steps
(1, 2, 5, 10, … ms) and is not woken when the lock is released: with two busy
writers that put tens of milliseconds on the slowest acks. So recorders given a
``lock_path`` take an exclusive ``flock`` on that file around each transaction
first; the kernel wakes the next one the moment the lock is released.

This is an edge (it owns a thread and reads the clock); the store it drives is
the sans-IO core in :mod:`gateway.chain.store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from gateway.chain.store import ChainStore, Entry, NewEntry, check_new_entry
from gateway.errors import DidgwError

_STOP = object()

#: Who waits for an entry: a thread (concurrent future) or a coroutine (its loop and future).
Waiter = Future[Entry] | tuple[asyncio.AbstractEventLoop, "asyncio.Future[Entry]"]


def writer_lock_path(db_path: Path) -> Path:
    """The lock file the gateway's recorders share for the database at ``db_path``."""
    return db_path.with_name(db_path.name + "-writer.lock")


class RecorderClosed(DidgwError):
    code = "recorder_closed"


class Recorder:
    """Group-committing appender; see the module docstring."""

    def __init__(
        self,
        open_store: Callable[[], ChainStore],
        *,
        clock_ms: Callable[[], int],
        max_batch: int = 8192,
        linger: float = 0.002,
        lock_path: Path | None = None,
    ) -> None:
        self._open_store = open_store
        self._clock_ms = clock_ms
        self._max_batch = max_batch
        self._linger = linger
        self._lock_path = lock_path
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closed = False
        self._ready: Future[ChainStore] = Future()
        self._thread = threading.Thread(target=self._run, name="didgw-recorder", daemon=True)
        self._thread.start()
        self._ready.result()  # surface an error opening the store to the caller
        self.batches = 0  # how many transactions so far (for metrics and benchmarks)

    @property
    def backlog(self) -> int:
        """Entries queued and not yet taken into a transaction (approximate)."""
        return self._queue.qsize()

    def submit(
        self, kind: str, actor: str, payload: bytes, key: int | None = None
    ) -> Future[Entry]:
        """Queue an entry; the future completes once it is durably committed."""
        if self._closed:
            raise RecorderClosed("the recorder is closed; nothing more can be recorded")
        item = NewEntry(kind, actor, payload, key)
        check_new_entry(item)  # a bad entry must not fail the whole batch it would join
        future: Future[Entry] = Future()
        self._queue.put((item, future))
        return future

    def append(self, kind: str, actor: str, payload: bytes) -> Entry:
        """Record one entry and wait until it is durable."""
        return self.submit(kind, actor, payload).result()

    async def append_async(
        self, kind: str, actor: str, payload: bytes, key: int | None = None
    ) -> Entry:
        """As :meth:`append`, for asyncio code.

        The entry's asyncio future is completed from the recorder thread together
        with every other future of the same batch and event loop: one loop wake-up
        per batch instead of one per entry.
        """
        if self._closed:
            raise RecorderClosed("the recorder is closed; nothing more can be recorded")
        item = NewEntry(kind, actor, payload, key)
        check_new_entry(item)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Entry] = loop.create_future()
        self._queue.put((item, (loop, waiter)))
        return await waiter

    def close(self) -> None:
        """Commit everything already queued, then stop the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()

    def _run(self) -> None:
        try:
            store = self._open_store()
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(store)
        lock = contextlib.nullcontext() if self._lock_path is None else _WriterLock(self._lock_path)
        stopping = False
        while not stopping:
            batch, stopping = self._take_batch()
            if batch:
                with lock:
                    self._commit(store, batch)
        if isinstance(lock, _WriterLock):
            lock.close()

    def _take_batch(self) -> tuple[list[tuple[NewEntry, Waiter]], bool]:
        """The next batch (waiting for a first entry), and whether to stop after it."""
        batch: list[tuple[NewEntry, Waiter]] = []
        try:
            item = self._queue.get_nowait()
            busy = True  # entries were waiting: more are likely on their way
        except queue.Empty:
            item, busy = self._queue.get(), False
        deadline = time.monotonic() + self._linger if busy else 0.0
        while True:
            if item is _STOP:
                return batch, True
            batch.append(item)  # type: ignore[arg-type]
            if len(batch) >= self._max_batch:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return batch, False
                try:
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    return batch, False

    def _commit(self, store: ChainStore, batch: list[tuple[NewEntry, Waiter]]) -> None:
        live = [
            (item, waiter)
            for item, waiter in batch
            if not isinstance(waiter, Future) or waiter.set_running_or_notify_cancel()
        ]
        if not live:
            return
        outcomes: list[Entry | BaseException]
        try:
            entries = store.append_batch([item for item, _ in live], now_ms=self._clock_ms())
        except Exception as exc:  # every waiter learns why
            outcomes = [exc] * len(live)
        else:
            self.batches += 1
            outcomes = list(entries)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Entry], Outcome]]] = {}
        for (_, waiter), outcome in zip(live, outcomes, strict=True):
            if isinstance(waiter, Future):
                if isinstance(outcome, BaseException):
                    waiter.set_exception(outcome)
                else:
                    waiter.set_result(outcome)
            else:
                by_loop.setdefault(waiter[0], []).append((waiter[1], outcome))
        for loop, done in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_settle, done)


Outcome = Entry | BaseException


class _WriterLock:
    """An exclusive ``flock`` shared by the recorders of several processes (see above)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


def _settle(done: list[tuple[asyncio.Future[Entry], Outcome]]) -> None:
    """Complete asyncio futures, on their own loop."""
    for future, outcome in done:
        if future.done():
            continue  # cancelled while waiting; the entry is recorded all the same
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

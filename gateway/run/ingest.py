"""The reading pipeline: verify → record durably → acknowledge. Shared by every transport.

A device is told ``accepted`` only after its signed bytes are on the record
(the recorder returns once the entry's transaction is committed). Each
reading carries the device's sequence number, which is also the entry's key
on the record, so:

* each sequence number is accepted once: a reading whose number is already on
  the record is refused as a replay — unless it is byte for byte the reading
  recorded under that number (the device did not get its ack and sent it
  again): then the original entry is acknowledged again and nothing is
  recorded twice. A number more than ``REORDER_WINDOW`` below the newest
  accepted one is refused outright;
* two copies racing through the pipeline at once are still recorded once
  (the record's keyed append finds the first).

The last accepted sequence number per device is cached in memory and read
from the record on first use, so a restart does not reopen the replay window.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth.readings import ClockWindow, Reading, ReadingChecker, ReadingRefused
from gateway.auth.refusals import RefusalBook
from gateway.chain.store import ChainStore, Entry
from gateway.config import DevicesSection
from gateway.errors import DidgwError
from gateway.run.disk import DiskGuard
from gateway.run.recorder import Recorder

log = logging.getLogger(__name__)

READING = "reading"
#: How far behind the newest accepted sequence number a reading may arrive and still be
#: recorded (once). Readings of one device are verified in parallel and can overtake each
#: other; like IPsec's anti-replay window (RFC 4303), each number is accepted at most once.
REORDER_WINDOW = 1024


def clock_window(devices: DevicesSection) -> ClockWindow:
    """The readings' clock window that ``[devices]`` configures (MQTT and CoAP alike)."""
    return ClockWindow(devices.clock_skew_seconds * 1000, devices.max_reading_age_seconds * 1000)


@dataclass(frozen=True)
class Ack:
    """What the device is told about one reading."""

    seq: int | None
    accepted: bool
    entry: int | None = None
    reason: str | None = None
    duplicate: bool = False  # accepted earlier: these exact bytes were already on the record

    def payload(self) -> bytes:
        if self.accepted:  # one per reading: formatted directly (two integers)
            return b'{"seq":%d,"status":"accepted","entry":%d}' % (self.seq or 0, self.entry or 0)
        else:
            body = {"seq": self.seq, "status": "refused", "reason": self.reason}
        return json.dumps(body, separators=(",", ":")).encode()


#: Told what happened to one reading, exactly once: at once for a refusal, from the
#: recorder's thread once the entry is committed for an accepted one.
Reply = Callable[[Ack], None]


class ReadingPipeline:
    """Check a reading, append it through the recorder, and say what happened.

    Callback-driven, so that the hot path needs no event loop: a verification
    worker calls :meth:`handle` on its MQTT thread and the recorder's thread
    publishes the ack. The state it keeps (the newest sequence number per
    device, the counts) is guarded by a lock; :meth:`submit` is the asyncio form.
    """

    def __init__(
        self,
        checker: ReadingChecker,
        recorder: Recorder,
        lookups: ChainStore,
        *,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        storage: DiskGuard | None = None,
        refusals: RefusalBook | None = None,
    ) -> None:
        self._checker = checker
        #: the last refusal each device earned, for the console (``auth/refusals.py``)
        self.refusals = refusals
        self._storage = storage
        self._storage_full = False
        self._recorder = recorder
        self._lookups = lookups  # a read connection: last seq and already-recorded readings
        self._clock_ms = clock_ms
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}  # outcome ("accepted", "duplicate", reasons) -> count

    @property
    def checker(self) -> ReadingChecker:
        """The reading checks this pipeline applies (a CoAP reading is checked by its
        ``check_cose`` and then :meth:`record`-ed)."""
        return self._checker

    @property
    def backlog(self) -> int:
        """Readings accepted for recording and not yet in a transaction."""
        return self._recorder.backlog

    def snapshot_counts(self) -> dict[str, int]:
        """A copy of the counts, consistent at one moment (another thread may be counting)."""
        with self._lock:
            return dict(self.counts)

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def handle(self, did: str, token: bytes, reply: Reply) -> None:
        """Handle one reading that arrived on ``did``'s own readings channel."""
        try:
            reading = self._checker.check(did, token, self._clock_ms(), None)
        except ReadingRefused as refusal:
            reply(self.refused(refusal, did))
            return
        self.record(reading, reply)

    async def submit(self, did: str, token: bytes) -> Ack:
        """:meth:`handle` for asyncio code."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Ack] = loop.create_future()

        def reply(ack: Ack) -> None:
            loop.call_soon_threadsafe(_settle, answer, ack)

        self.handle(did, token, reply)
        return await answer

    def refused(self, refusal: ReadingRefused, did: str | None = None) -> Ack:
        """Count a refusal and say it to the device; note it as ``did``'s if the device
        earned it (its signature checked out: :data:`~gateway.auth.refusals.EARNED`)."""
        self._count(refusal.reason)
        if did is not None and self.refusals is not None:
            self.refusals.note(did, refusal.reason, self._clock_ms())
        return Ack(refusal.seq, False, reason=refusal.reason)

    def record(self, reading: Reading, reply: Reply) -> None:
        """The second half, for a reading whose signature, status, time and schema checked out:
        the sequence check, then the durable append; ``reply`` is called once it is settled."""
        if self._storage is not None and self._storage_is_full(self._storage):
            reply(
                self.refused(
                    ReadingRefused("storage_full", reading.seq, self._storage.why), reading.did
                )
            )
            return
        early, previous = self._claim(reading)
        if early is not None:
            reply(early)
            return
        try:
            future = self._recorder.submit(READING, reading.did, reading.token, key=reading.seq)
        except DidgwError:
            reply(self._settle(reading, previous, None))
            return
        future.add_done_callback(
            lambda done: reply(
                self._settle(reading, previous, None if done.exception() else done.result())
            )
        )

    def _storage_is_full(self, storage: DiskGuard) -> bool:
        full = storage.full()
        if full != self._storage_full:
            self._storage_full = full
            if full:
                log.warning("refusing readings: %s", storage.why)
            else:
                log.info("taking readings again: there is room on the disk")
        return full

    def _claim(self, reading: Reading) -> tuple[Ack | None, int | None]:
        """Refuse or re-acknowledge a number already seen; otherwise claim it, so a copy
        arriving while this one is being committed is seen as a replay (then found as a
        duplicate). Returns the answer if there is one already, and the previous newest."""
        did, seq = reading.did, reading.seq
        with self._lock:
            last = self._last.get(did)
            if last is None:
                last = self._lookups.last_key(did, READING)
                if last is not None:
                    self._last[did] = last
            if last is None or seq > last:
                self._last[did] = seq
                return None, last
        recorded = self._lookups.find_key(did, READING, seq)
        if recorded is not None and recorded.payload == reading.token:
            self._count("duplicate")
            return Ack(seq, True, entry=recorded.seq, duplicate=True), last
        if recorded is not None or seq <= last - REORDER_WINDOW:
            return self.refused(ReadingRefused("replay", seq), did), last
        return None, last  # a late number inside the window, not seen before

    def _settle(self, reading: Reading, previous: int | None, entry: Entry | None) -> Ack:
        """The ack for a reading the recorder took (``entry``) or could not take (None)."""
        did, seq = reading.did, reading.seq
        if entry is None:
            with self._lock:  # give the number back, unless a newer one was claimed since
                if self._last.get(did) == seq and (previous is None or seq > previous):
                    if previous is None:
                        self._last.pop(did, None)
                    else:
                        self._last[did] = previous
            self._count("unavailable")
            if self.refusals is not None:
                self.refusals.note(did, "unavailable", self._clock_ms())
            return Ack(seq, False, reason="unavailable")
        if entry.payload != reading.token:  # another reading already holds this number
            return self.refused(ReadingRefused("replay", seq), did)
        self._count("accepted")
        return Ack(seq, True, entry=entry.seq)


def _settle(future: asyncio.Future[Ack], ack: Ack) -> None:
    if not future.done():
        future.set_result(ack)

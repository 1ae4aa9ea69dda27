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

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth.readings import Reading, ReadingChecker, ReadingRefused
from gateway.chain.store import ChainStore
from gateway.errors import DidgwError
from gateway.recorder import Recorder

READING = "reading"
#: How far behind the newest accepted sequence number a reading may arrive and still be
#: recorded (once). Readings of one device are verified in parallel and can overtake each
#: other; like IPsec's anti-replay window (RFC 4303), each number is accepted at most once.
REORDER_WINDOW = 1024


@dataclass(frozen=True)
class Ack:
    """What the device is told about one reading."""

    seq: int | None
    accepted: bool
    entry: int | None = None
    reason: str | None = None

    def payload(self) -> bytes:
        if self.accepted:
            body = {"seq": self.seq, "status": "accepted", "entry": self.entry}
        else:
            body = {"seq": self.seq, "status": "refused", "reason": self.reason}
        return json.dumps(body, separators=(",", ":")).encode()


class ReadingPipeline:
    """Check a reading, append it through the recorder, and say what happened."""

    def __init__(
        self,
        checker: ReadingChecker,
        recorder: Recorder,
        lookups: ChainStore,
        *,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._checker = checker
        self._recorder = recorder
        self._lookups = lookups  # a read connection: last seq and already-recorded readings
        self._clock_ms = clock_ms
        self._last: dict[str, int] = {}
        self.counts: dict[str, int] = {}  # outcome ("accepted", "duplicate", reasons) -> count

    def _count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def _last_seq(self, did: str) -> int | None:
        last = self._last.get(did)
        if last is None:
            last = self._lookups.last_key(did, READING)
            if last is not None:
                self._last[did] = last
        return last

    async def submit(self, did: str, token: bytes) -> Ack:
        """Handle one reading that arrived on ``did``'s own readings channel."""
        try:
            reading = self._checker.check(did, token, self._clock_ms(), None)
        except ReadingRefused as refusal:
            return self.refused(refusal)
        return await self.record(reading)

    def refused(self, refusal: ReadingRefused) -> Ack:
        """Count a refusal and say it to the device."""
        self._count(refusal.reason)
        return Ack(refusal.seq, False, reason=refusal.reason)

    async def record(self, reading: Reading) -> Ack:
        """The second half, for a reading whose signature, status, time and schema checked out
        (here or in a verification worker): the sequence check, then the durable append."""
        did, token = reading.did, reading.token
        last = self._last_seq(did)
        if last is not None and reading.seq <= last:
            recorded = self._lookups.find_key(did, READING, reading.seq)
            if recorded is not None and recorded.payload == token:
                self._count("duplicate")
                return Ack(reading.seq, True, entry=recorded.seq)
            if recorded is not None or reading.seq <= last - REORDER_WINDOW:
                return self.refused(ReadingRefused("replay", reading.seq))
        # Claim the sequence number now, so a copy arriving while this one is being
        # committed is seen as a replay (and then found as a duplicate).
        if last is None or reading.seq > last:
            self._last[did] = reading.seq
        try:
            entry = await self._recorder.append_async(READING, did, token, key=reading.seq)
        except DidgwError:
            if self._last.get(did) == reading.seq and (last is None or reading.seq > last):
                if last is None:
                    self._last.pop(did, None)
                else:
                    self._last[did] = last
            self._count("unavailable")
            return Ack(reading.seq, False, reason="unavailable")
        if entry.payload != token:  # another reading already holds this sequence number
            return self.refused(ReadingRefused("replay", reading.seq))
        self._count("accepted")
        return Ack(reading.seq, True, entry=entry.seq)

"""The reading pipeline: each sequence number recorded once, duplicates re-acknowledged."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.auth.readings import READING_TYP, ReadingChecker
from gateway.auth.refusals import Refusal, RefusalBook
from gateway.chain.store import ChainStore
from gateway.db import connect, migrate
from gateway.identity import offline_resolver, sign_jws
from gateway.identity.keystore import generate_key
from gateway.identity.signing import Signer
from gateway.registry import Status
from gateway.run.ingest import REORDER_WINDOW, ReadingPipeline
from gateway.run.recorder import Recorder

NOW = 1_700_000_000_000


def reading(signer: Signer, seq: int, value: float = 1.0) -> bytes:
    body = {
        "did": signer.did,
        "seq": seq,
        "ts": NOW,
        "type": "energy",
        "values": {"import_kwh": {"value": value, "unit": "kWh"}},
    }
    return sign_jws(json.dumps(body).encode(), signer, headers={"typ": READING_TYP}).encode()


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    path = tmp_path / "g.db"
    db = connect(path)
    migrate(db, now=0)
    db.close()
    meter = Signer.for_did_key(generate_key())
    statuses = {meter.did: Status.ACTIVE}
    recorder = Recorder(lambda: ChainStore(connect(path)), clock_ms=lambda: NOW)
    lookups = ChainStore(connect(path))
    checker = ReadingChecker(offline_resolver(), statuses.get)
    pipeline = ReadingPipeline(checker, recorder, lookups, clock_ms=lambda: NOW)
    yield pipeline, meter, lookups, path
    recorder.close()
    lookups.close()


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_accepted_then_resent_is_acknowledged_again_and_recorded_once(setup: Any) -> None:
    pipeline, meter, lookups, _path = setup
    first = run(pipeline.submit(meter.did, reading(meter, 1)))
    again = run(pipeline.submit(meter.did, reading(meter, 1)))
    assert first.accepted and again.accepted and again.entry == first.entry
    other = run(pipeline.submit(meter.did, reading(meter, 1, value=99)))
    assert (other.accepted, other.reason) == (False, "replay")
    lookups.resync()
    assert lookups.size == 1
    assert pipeline.counts == {"accepted": 1, "duplicate": 1, "replay": 1}


def test_readings_overtaking_each_other_are_all_recorded(setup: Any) -> None:
    pipeline, meter, _lookups, _ = setup
    for seq in (1, 3, 2, 5, 4):
        assert run(pipeline.submit(meter.did, reading(meter, seq))).accepted, seq
    too_old = 10 + REORDER_WINDOW + 1
    assert run(pipeline.submit(meter.did, reading(meter, too_old))).accepted
    late = run(pipeline.submit(meter.did, reading(meter, 6)))
    assert (late.accepted, late.reason) == (False, "replay")  # fell out of the window


def test_copies_racing_through_are_recorded_once(setup: Any) -> None:
    pipeline, meter, lookups, _ = setup

    async def race() -> list[Any]:
        token = reading(meter, 7)
        return await asyncio.gather(*(pipeline.submit(meter.did, token) for _ in range(5)))

    acks = run(race())
    assert all(a.accepted for a in acks) and len({a.entry for a in acks}) == 1
    lookups.resync()
    assert lookups.size == 1


def test_the_replay_window_survives_a_restart(setup: Any) -> None:
    pipeline, meter, _lookups, path = setup
    run(pipeline.submit(meter.did, reading(meter, 5)))
    fresh = ReadingPipeline(
        pipeline._checker, pipeline._recorder, ChainStore(connect(path)), clock_ms=lambda: NOW
    )
    again = run(fresh.submit(meter.did, reading(meter, 5, value=2)))
    assert (again.accepted, again.reason) == (False, "replay")


def test_refusals_a_device_earned_are_noted_for_it_and_garbage_is_not(setup: Any) -> None:
    pipeline, meter, _lookups, _ = setup
    pipeline.refusals = book = RefusalBook()
    run(pipeline.submit(meter.did, reading(meter, 1)))
    assert book.last(meter.did) is None  # accepted
    run(pipeline.submit(meter.did, reading(meter, 1, value=2)))  # another reading, same seq
    assert book.last(meter.did) == Refusal("replay", NOW)
    stranger = Signer.for_did_key(generate_key())
    run(pipeline.submit(stranger.did, reading(stranger, 1)))  # unknown_device
    run(pipeline.submit(meter.did, b"garbage"))  # malformed, on the meter's own topic
    forged = reading(stranger, 2).replace(stranger.did.encode(), meter.did.encode())
    run(pipeline.submit(meter.did, forged))  # bad_signature
    assert book.last(stranger.did) is None and len(book) == 1
    assert book.last(meter.did) == Refusal("replay", NOW)
    pipeline._checker._lookup = {meter.did: Status.SUSPENDED}.get
    refused = run(pipeline.submit(meter.did, reading(meter, 3)))
    assert refused.reason == "not_active" and book.last(meter.did) == Refusal("not_active", NOW)

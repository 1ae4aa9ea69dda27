"""Block-wise transfers as the gateway does them (gateway/transports/coap_blocks.py), and the
status list's bytes kept between blocks (gateway/run/coap_devices.py): no sockets."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.run.coap_devices import SignedStatusList
from gateway.transports.coap_blocks import Block, Fed, PartialUploads, etag, response_block

PEER = "10.0.0.1"


def uploads(**kwargs: float) -> PartialUploads:
    return PartialUploads(4096, **kwargs)  # type: ignore[arg-type]


def feed(u: PartialUploads, key: object, block: Block, payload: bytes, *, now: float = 0.0,
         peer: str = PEER, size1: int | None = None) -> Fed:  # fmt: skip
    return u.feed(key, peer, block, payload, size1=size1, now=now)


def test_blocks_in_order_make_the_whole_body() -> None:
    u = uploads()
    assert feed(u, "a", Block(0, True, 0), b"A" * 16) == Fed("continue")
    assert feed(u, "a", Block(1, True, 0), b"B" * 16) == Fed("continue")
    assert len(u) == 1
    assert feed(u, "a", Block(2, False, 0), b"C") == Fed("done", b"A" * 16 + b"B" * 16 + b"C")
    assert len(u) == 0


def test_a_single_last_block_needs_no_state() -> None:
    u = uploads()
    assert feed(u, "a", Block(0, False, 6), b"whole") == Fed("done", b"whole")
    assert len(u) == 0


def test_a_gap_or_a_block_of_nothing_is_incomplete_and_forgets_the_upload() -> None:
    u = uploads()
    assert feed(u, "a", Block(3, True, 0), b"x" * 16) == Fed("incomplete")  # no block 0
    assert feed(u, "a", Block(0, True, 0), b"x" * 16) == Fed("continue")
    assert feed(u, "a", Block(2, True, 0), b"x" * 16) == Fed("incomplete")  # 1 skipped
    assert len(u) == 0
    assert feed(u, "a", Block(1, True, 0), b"x" * 16) == Fed("incomplete")  # dropped


def test_a_block_sent_again_is_continued_without_being_added_twice() -> None:
    u = uploads()
    feed(u, "a", Block(0, True, 0), b"A" * 16)
    feed(u, "a", Block(1, True, 0), b"B" * 16)
    assert feed(u, "a", Block(1, True, 0), b"B" * 16) == Fed("continue")
    assert feed(u, "a", Block(2, False, 0), b"C") == Fed("done", b"A" * 16 + b"B" * 16 + b"C")


def test_a_smaller_block_size_midway_is_followed() -> None:
    u = uploads()
    feed(u, "a", Block(0, True, 1), b"A" * 32)
    assert feed(u, "a", Block(2, False, 0), b"B" * 5) == Fed("done", b"A" * 32 + b"B" * 5)


def test_wrong_sizes_and_bert_are_malformed() -> None:
    u = uploads()
    assert feed(u, "a", Block(0, True, 0), b"short") == Fed("malformed")
    assert feed(u, "a", Block(0, True, 7), b"x" * 2048) == Fed("malformed")


def test_too_large_as_announced_or_as_sent() -> None:
    u = uploads()
    assert feed(u, "a", Block(0, True, 6), b"x" * 1024, size1=5000) == Fed("too_large")
    for n in range(4):
        assert feed(u, "a", Block(n, True, 6), b"x" * 1024) == Fed("continue")
    assert feed(u, "a", Block(4, False, 6), b"x") == Fed("too_large")
    assert len(u) == 0


def test_per_peer_the_newest_replace_the_oldest() -> None:
    u = uploads(per_peer=2)
    for key in ("a", "b", "c"):
        feed(u, key, Block(0, True, 0), b"x" * 16)
    assert len(u) == 2
    assert feed(u, "a", Block(1, True, 0), b"x" * 16) == Fed("incomplete")
    assert feed(u, "c", Block(1, True, 0), b"x" * 16) == Fed("continue")


def test_in_total_new_ones_are_refused_while_full() -> None:
    u = uploads(total=3, per_peer=1)
    for i in range(3):
        assert feed(u, i, Block(0, True, 0), b"x" * 16, peer=f"p{i}") == Fed("continue")
    assert feed(u, 9, Block(0, True, 0), b"x" * 16, peer="p9") == Fed("overloaded")
    assert feed(u, 0, Block(1, False, 0), b"end", peer="p0").word == "done"
    assert feed(u, 9, Block(0, True, 0), b"x" * 16, peer="p9") == Fed("continue")


def test_idle_uploads_expire() -> None:
    u = uploads(idle_seconds=10)
    feed(u, "a", Block(0, True, 0), b"x" * 16, now=0)
    feed(u, "b", Block(0, True, 0), b"x" * 16, now=5, peer="p2")
    u.expire(9.9)
    assert len(u) == 2
    u.expire(10)
    assert len(u) == 1  # "a" went; "b" is younger
    assert feed(u, "b", Block(1, True, 0), b"x" * 16, now=14, peer="p2") == Fed("continue")
    u.expire(23.9)
    assert len(u) == 1  # its last block renewed it
    assert feed(u, "b", Block(2, True, 0), b"x" * 16, now=24, peer="p2") == Fed("incomplete")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 40), st.booleans(),
                          st.integers(0, 7), st.binary(max_size=80), st.integers(0, 3)),
                max_size=60))  # fmt: skip
def test_any_sequence_of_blocks_keeps_the_bounds(
    steps: list[tuple[int, int, bool, int, bytes, int]],
) -> None:
    """Whatever arrives, in any order: only the documented answers, never more than the
    bounds held, and every body handed on within max_bytes."""
    u = PartialUploads(512, per_peer=2, total=3, idle_seconds=5)
    now = 0.0
    for key, number, more, szx, payload, peer in steps:
        now += 1
        fed = feed(u, key, Block(number, more, szx), payload, now=now, peer=f"p{peer}")
        assert fed.word in {"done", "continue", "incomplete", "too_large", "overloaded",
                            "malformed"}  # fmt: skip
        assert len(fed.body) <= 512
        assert len(u) <= 3


def test_get_answers_are_cut_in_our_block_size_whatever_is_asked() -> None:
    body = bytes(range(100))
    assert response_block(body, None, 32) == (Block(0, True, 1), body[:32])
    assert response_block(body, Block(1, False, 1), 32) == (Block(1, True, 1), body[32:64])
    assert response_block(body, Block(3, False, 1), 32) == (Block(3, False, 1), body[96:])
    # asked for 1 KiB blocks: block 0 in ours; block 0 of 64-byte blocks is our block 0
    assert response_block(body, Block(0, False, 6), 32) == (Block(0, True, 1), body[:32])
    assert response_block(body, Block(1, False, 2), 32) == (Block(2, True, 1), body[64:96])
    # asked for smaller blocks: those are used
    assert response_block(body, Block(6, False, 0), 32) == (Block(6, False, 0), body[96:])
    assert response_block(body, Block(4, False, 1), 32) is None  # past the end
    assert response_block(body, Block(0, False, 7), 32) is None  # BERT
    assert response_block(b"", None, 32) == (Block(0, False, 1), b"")


def test_etag_is_short_and_follows_the_bytes() -> None:
    assert len(etag(b"a")) == 4
    assert etag(b"a") != etag(b"b")


def test_the_status_list_is_signed_again_only_when_it_changes_or_ages() -> None:
    signed: list[float] = []
    revision, clock = [0], [1000.0]

    def sign(now: float) -> bytes:
        signed.append(now)
        return json.dumps({"at": now}).encode()

    status = SignedStatusList(sign, lambda: revision[0], 100, clock=lambda: clock[0])
    first = status()
    clock[0] += 49
    assert status() == first  # the same bytes for every block of a fetch
    revision[0] += 1  # a revocation: at once
    assert status() != first
    clock[0] += 50  # half the validity since the last signature
    status()
    assert signed == [1000.0, 1049.0, 1099.0]

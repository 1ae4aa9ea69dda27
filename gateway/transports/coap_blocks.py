"""Block-wise transfers (RFC 7959) as the gateway does them, instead of aiocoap's bookkeeping.

aiocoap's own reassembly keeps every unfinished request body for 93 to 186 s with no
bound on how many, answers a block out of order with 5.00 and a traceback, and is
reached only after the gateway's admission check has run on the first block. Here:

* **Request bodies** (Block1, :class:`PartialUploads`): blocks are taken in order only,
  each one after the per-peer rate limit like any request. A block that does not
  continue an upload the gateway holds (no block 0, a gap, an upload dropped) is
  answered 4.08 Request Entity Incomplete; the device starts again from block 0. At most
  ``per_peer`` unfinished uploads per peer address (its next one replaces its oldest)
  and ``total`` in all (past that: 5.03 with Max-Age, come back later); one whose next
  block has not come for ``idle_seconds`` is dropped. Memory is thereby bounded by
  ``total`` times ``max_bytes`` whatever peers send.
* **Response bodies** (Block2, :func:`response_block`): a GET answer is cut into blocks
  of at most ``block_bytes`` each, statelessly (each block is cut from the current
  representation again; its ETag tells a client when that changed between blocks), so
  that a request never makes the gateway send much more than it received.

Sans-IO: the clock comes in as ``now``; nothing here knows aiocoap's types.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import NamedTuple

MAX_SZX = 6  # 1024-byte blocks; SZX 7 (BERT, RFC 8323) is for reliable transports only


class Block(NamedTuple):
    """A Block1 or Block2 option's value: block number, more-flag, size exponent."""

    number: int
    more: bool
    szx: int

    @property
    def size(self) -> int:
        return 16 << self.szx


class Fed(NamedTuple):
    """What a block of a request body came to: ``done`` (``body`` is the whole request),
    ``continue`` (2.31: send the next block), or a refusal reason: ``incomplete`` (4.08),
    ``too_large`` (4.13), ``overloaded`` (5.03), ``malformed`` (4.00)."""

    word: str
    body: bytes = b""


@dataclass
class _Upload:
    peer: str
    body: bytearray
    last: float


@dataclass
class PartialUploads:
    """The request bodies being received block by block (see the module docstring)."""

    max_bytes: int
    per_peer: int = 4
    total: int = 64
    idle_seconds: float = 60.0
    _uploads: OrderedDict[Hashable, _Upload] = field(default_factory=OrderedDict)
    _per_peer: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._uploads)

    def feed(
        self,
        key: Hashable,
        peer: str,
        block: Block,
        payload: bytes,
        *,
        size1: int | None,
        now: float,
    ) -> Fed:
        """One block of the request ``key`` (its peer's address and port, method and path)
        from ``peer`` (the address alone, what the per-peer bound counts); ``size1`` is the
        request's Size1 option, if any."""
        self.expire(now)
        if block.szx > MAX_SZX or (block.more and len(payload) != block.size):
            self._drop(key)
            return Fed("malformed")
        if max(size1 or 0, block.number * block.size + len(payload)) > self.max_bytes:
            self._drop(key)
            return Fed("too_large")
        if block.number == 0:
            self._drop(key)  # a new start silently replaces an unfinished one (RFC 7959 §2.5)
            return self._start(key, peer, payload, now) if block.more else Fed("done", payload)
        return self._continue(key, block, payload, now)

    def expire(self, now: float) -> None:
        """Drop the uploads whose next block is overdue (the oldest activity comes first)."""
        while self._uploads:
            key, upload = next(iter(self._uploads.items()))
            if now - upload.last < self.idle_seconds:
                return
            self._drop(key)

    def _start(self, key: Hashable, peer: str, payload: bytes, now: float) -> Fed:
        if self._per_peer.get(peer, 0) >= self.per_peer:
            oldest = next(k for k, u in self._uploads.items() if u.peer == peer)
            self._drop(oldest)
        if len(self._uploads) >= self.total:
            return Fed("overloaded")
        self._uploads[key] = _Upload(peer, bytearray(payload), now)
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        return Fed("continue")

    def _continue(self, key: Hashable, block: Block, payload: bytes, now: float) -> Fed:
        upload = self._uploads.get(key)
        if upload is None:
            return Fed("incomplete")
        offset = block.number * block.size
        end = offset + len(payload)
        if block.more and end <= len(upload.body) and upload.body[offset:end] == payload:
            return Fed("continue")  # a block sent again (its answer was lost): nothing to add
        if offset != len(upload.body):
            self._drop(key)
            return Fed("incomplete")
        upload.body += payload
        if not block.more:
            self._drop(key)
            return Fed("done", bytes(upload.body))
        upload.last = now
        self._uploads.move_to_end(key)
        return Fed("continue")

    def _drop(self, key: Hashable) -> None:
        upload = self._uploads.pop(key, None)
        if upload is None:
            return
        left = self._per_peer[upload.peer] - 1
        if left:
            self._per_peer[upload.peer] = left
        else:
            del self._per_peer[upload.peer]


def etag(body: bytes) -> bytes:
    """A short ETag of a representation: 4 bytes of its SHA-256 (enough to tell a client
    that the representation changed between two of its blocks)."""
    return hashlib.sha256(body).digest()[:4]


def response_block(
    body: bytes, asked: Block | None, block_bytes: int
) -> tuple[Block, bytes] | None:
    """The block of ``body`` a GET asks for (``asked``: its Block2 option, None for the first
    request), at most ``block_bytes`` long: (the Block2 option to answer with, its payload).
    A client asking for larger blocks gets ours (RFC 7959 §2.4: the number is converted).
    None when the block starts past the end of ``body`` or ``asked`` is not a valid block."""
    ours = max(0, min(MAX_SZX, block_bytes.bit_length() - 5))  # the largest 16 << szx that fits
    if asked is None:
        asked = Block(0, False, ours)
    if asked.szx > MAX_SZX:
        return None
    offset = asked.number * asked.size
    szx = min(asked.szx, ours)
    size = 16 << szx
    if offset and offset >= len(body):
        return None
    chunk = body[offset : offset + size]
    return Block(offset // size, offset + size < len(body), szx), chunk

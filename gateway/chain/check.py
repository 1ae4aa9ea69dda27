"""Recompute the whole record and say exactly where it stops being what it claims.

Used by ``didgw chain verify``: on the gateway's own database, and offline on an
export checked against a signed checkpoint. The walk recomputes, for every
entry in order, the commitment (when the payload is still there), the Merkle
leaf, the chain hash and the Merkle tree, and stops at the first problem,
naming the seq and what is wrong:

``gap``                  an entry is missing (seq jumps);
``hash mismatch``        an entry's fields were altered (its hash no longer matches them);
``reordered``            an intact entry follows the wrong predecessor (moved, removed
                         or inserted entries);
``commitment mismatch``  a payload or salt was altered;
``payload missing``      a payload is gone without an erasure record;
``bad erasure``          an erasure mark that no erasure entry backs;
``merkle mismatch``      a stored subtree hash differs from the recomputed one;
``truncated``            a checkpoint (or a stored subtree) covers entries that are gone;
``checkpoint mismatch``  the record's root at a checkpoint's size is not the signed root.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway.chain import merkle
from gateway.chain.store import MIN_STORED_LEVEL, Entry
from gateway.chain.verify import GENESIS, entry_bytes


@dataclass(frozen=True)
class Problem:
    seq: int | None
    what: str  # one of the names in the module docstring
    detail: str

    def __str__(self) -> str:
        where = f"seq {self.seq}: " if self.seq is not None else ""
        return f"{where}{self.what}: {self.detail}"


@dataclass
class Report:
    """The outcome of a check: size and root of what verified, or the first problem."""

    size: int = 0
    root: bytes = field(default_factory=lambda: merkle.mth([]))
    problem: Problem | None = None
    erased: int = 0

    @property
    def ok(self) -> bool:
        return self.problem is None


#: (seq, ts, kind, actor DID, commitment, prev_hash, hash, salt, payload, erased_by,
#: leaf_hash claimed by an export or None): plain tuples, because the walk is the hot loop.
Row = tuple[
    int, int, str, str, bytes, bytes, bytes, bytes | None, bytes | None, int | None, bytes | None
]


def check_entries(  # noqa: PLR0911, PLR0912, PLR0915 - one flat loop, one branch per fault
    rows: Iterable[Row],
    *,
    stored_nodes: dict[tuple[int, int], bytes] | None = None,
    checkpoints: dict[int, bytes] | None = None,
) -> Report:
    """Walk ``rows`` in order; see the module docstring for what is checked.

    Written for speed (verification of a million entries should take about a
    second): local names, cached encodings of (kind, actor), no per-entry objects.
    """
    report = Report()
    frontier = merkle.Frontier()
    append_leaf = frontier.append
    sha256 = hashlib.sha256
    prev = GENESIS
    pending_erasures: dict[int, int] = {}  # erasure entry seq -> erased seq
    checkpoints = dict(checkpoints or {})
    nodes = stored_nodes if stored_nodes is not None else {}
    prefixes: dict[tuple[str, str], bytes] = {}

    def fail(seq: int | None, what: str, detail: str) -> Report:
        report.problem = Problem(seq, what, detail)
        return report

    index = -1
    for index, row in enumerate(rows):
        seq, ts, kind, actor, commitment, prev_hash, digest, salt, payload, erased_by, claim = row
        if seq != index:
            if seq > index:
                return fail(index, "gap", f"entries {index} to {seq - 1} are missing")
            return fail(seq, "reordered", f"seq {seq} appears again after seq {index - 1}")
        prefix = prefixes.get((kind, actor))
        if prefix is None:
            prefix = prefixes[(kind, actor)] = entry_bytes(0, kind, actor, GENESIS)[8:-32]
        leaf = sha256(b"\x00" + ts.to_bytes(8, "big", signed=True) + prefix + commitment).digest()
        if claim is not None and claim != leaf:
            return fail(index, "hash mismatch", "leaf_hash does not match the entry's fields")
        if sha256(prev_hash + leaf).digest() != digest:
            return fail(
                index, "hash mismatch", "the entry's fields were altered after it was recorded"
            )
        if prev_hash != prev:
            return fail(
                index, "reordered", f"entry follows a different predecessor than entry {index - 1}"
            )
        if payload is not None:
            if salt is None or sha256(salt + payload).digest() != commitment:
                return fail(index, "commitment mismatch", "the payload or its salt was altered")
        elif erased_by is None:
            return fail(index, "payload missing", "the payload is gone but no erasure is recorded")
        else:
            if erased_by <= index:
                return fail(index, "bad erasure", f"erased by entry {erased_by}, which is older")
            pending_erasures[erased_by] = index
            report.erased += 1
        if pending_erasures and index in pending_erasures:
            erased = pending_erasures.pop(index)
            if kind != "erasure" or not _names_erasure(payload, erased):
                return fail(
                    erased, "bad erasure", f"entry {index} is not the erasure of entry {erased}"
                )
        if index & 0xF == 0xF:  # a subtree of 16 or more leaves completes: compare stored ones
            for level, node_index, node in append_leaf(leaf):
                stored = nodes.pop((level, node_index), None) if level >= MIN_STORED_LEVEL else None
                if stored is not None and stored != node:
                    first = node_index << level
                    return fail(
                        first,
                        "merkle mismatch",
                        f"stored hash of leaves {first}-{first + (1 << level) - 1} is wrong",
                    )
        else:
            append_leaf(leaf)
        prev = digest
        signed = checkpoints.pop(index + 1, None) if checkpoints else None
        if signed is not None and signed != frontier.root():
            report.size = index + 1
            return fail(
                index,
                "checkpoint mismatch",
                f"the root at size {index + 1} differs from the signed checkpoint",
            )
    report.size = index + 1
    report.root = frontier.root()
    if checkpoints:
        size = max(checkpoints)
        return fail(
            report.size,
            "truncated",
            f"a checkpoint covers {size} entries but the record ends after {report.size}",
        )
    if pending_erasures:
        erasure, erased = min(pending_erasures.items())
        return fail(erased, "bad erasure", f"erasure entry {erasure} does not exist")
    if nodes:
        level, node_index = min(nodes, key=lambda k: k[1] << k[0])
        return fail(
            report.size,
            "truncated",
            f"a stored subtree covers leaf {node_index << level}, beyond the last entry",
        )
    return report


def _names_erasure(payload: bytes | None, seq: int) -> bool:
    if payload is None:
        return True  # an erasure record is never itself erased; but don't crash
    try:
        return json.loads(payload).get("erased") == seq  # type: ignore[no-any-return]
    except (ValueError, AttributeError):
        return False


# -- the gateway database ------------------------------------------------------


def check_database(conn: sqlite3.Connection) -> Report:
    """Check the record in a gateway database file, against its stored checkpoints."""
    actors = dict(conn.execute("SELECT id, did FROM chain_actors"))
    nodes = {
        (lv, ix): bytes(h) for lv, ix, h in conn.execute("SELECT level, idx, hash FROM chain_nodes")
    }
    checkpoints = {s: bytes(r) for s, r in conn.execute("SELECT size, root FROM chain_checkpoints")}

    def rows() -> Iterator[Row]:
        cursor = conn.execute(
            "SELECT seq, ts, kind, actor, commitment, prev_hash, hash, salt, payload, erased_by, "
            "NULL FROM chain_entries ORDER BY seq"
        )
        for row in cursor:
            actor = actors.get(row[3])
            yield (*row[:3], actor if actor is not None else f"<unknown actor {row[3]}>", *row[4:])

    return check_entries(rows(), stored_nodes=nodes, checkpoints=checkpoints)


# -- exports -----------------------------------------------------------------


def entry_fields(entry: Entry) -> dict[str, Any]:
    """The hashed fields of an entry, hashes as lowercase hex (export and ``chain show``)."""
    return {
        "seq": entry.seq,
        "ts": entry.ts,
        "kind": entry.kind,
        "actor": entry.actor,
        "commitment": entry.commitment.hex(),
        "leaf_hash": entry.leaf_hash.hex(),
        "prev_hash": entry.prev_hash.hex(),
        "hash": entry.hash.hex(),
    }


def export_line(entry: Entry) -> str:
    """One entry as a JSON line (the export format: docs/formats.md, "Export and proofs")."""
    payload = None if entry.payload is None else base64.b64encode(entry.payload).decode()
    return json.dumps(
        {
            **entry_fields(entry),
            "salt": None if entry.salt is None else entry.salt.hex(),
            "payload": payload,
            "erased_by": entry.erased_by,
        },
        separators=(",", ":"),
    )


class ExportError(ValueError):
    """A line of an export is not an entry."""


def parse_export(lines: Iterable[str]) -> Iterator[Row]:
    """Entries from an export, refusing malformed lines with their line number."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            salt, payload, erased_by = d.get("salt"), d.get("payload"), d.get("erased_by")
            row: Row = (
                _int(d["seq"]),
                _int(d["ts"]),
                str(d["kind"]),
                str(d["actor"]),
                _hash(d["commitment"]),
                _hash(d["prev_hash"]),
                _hash(d["hash"]),
                None if salt is None else bytes.fromhex(salt),
                None if payload is None else base64.b64decode(payload, validate=True),
                None if erased_by is None else _int(erased_by),
                _hash(d["leaf_hash"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ExportError(f"line {number} is not an export entry: {exc}") from None
        yield row


def _hash(value: Any) -> bytes:
    digest = bytes.fromhex(value)
    if len(digest) != 32:
        raise ValueError(f"{value!r} is not a 32-byte hash")
    return digest


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    return value

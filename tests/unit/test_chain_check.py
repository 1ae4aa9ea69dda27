"""``didgw chain verify`` names the first bad seq and what is wrong, for each way to tamper.

Each test edits the database file behind the gateway's back, as an attacker with
file access would: dropping the append-only triggers first.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.chain.check import check_database, check_entries, export_line, parse_export
from gateway.chain.store import ChainStore, NewEntry
from gateway.db import connect, migrate

DEVICE = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
GATEWAY = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
SIZE = 40


@pytest.fixture
def path(tmp_path: Path) -> Iterator[Path]:
    db = connect(tmp_path / "g.db")
    migrate(db, now=0)
    store = ChainStore(db)
    items = [NewEntry("reading", DEVICE, f'{{"i":{i}}}'.encode()) for i in range(SIZE)]
    for i in range(0, SIZE, 8):
        store.append_batch(items[i : i + 8], now_ms=1_700_000_000_000 + i)
    store.add_checkpoint(SIZE, store.root(), 0, "checkpoint text")
    store.close()
    yield tmp_path / "g.db"


def tamper(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    for sql in statements:
        conn.execute(sql)
    conn.commit()
    conn.close()


def check(path: Path) -> tuple[int | None, str]:
    conn = sqlite3.connect(path)
    try:
        report = check_database(conn)
    finally:
        conn.close()
    assert report.problem is not None, "tampering was not detected"
    return report.problem.seq, report.problem.what


def test_untouched_record_verifies(path: Path) -> None:
    conn = sqlite3.connect(path)
    report = check_database(conn)
    conn.close()
    assert report.ok and report.size == SIZE


SWAP = (
    "UPDATE chain_entries SET seq = -1 WHERE seq = 12",
    "UPDATE chain_entries SET seq = 12 WHERE seq = 13",
    "UPDATE chain_entries SET seq = 13 WHERE seq = -1",
)

CASES: dict[str, tuple[tuple[str, ...], int, str]] = {
    "edited time": (("UPDATE chain_entries SET ts = ts + 1 WHERE seq = 7",), 7, "hash mismatch"),
    "edited kind": (("UPDATE chain_entries SET kind = 'trade' WHERE seq = 9",), 9, "hash mismatch"),
    "edited actor": (
        (
            "INSERT INTO chain_actors (did) VALUES ('did:key:z6MkfakeXYZ')",
            "UPDATE chain_entries SET actor = (SELECT max(id) FROM chain_actors) WHERE seq = 2",
        ),
        2,
        "hash mismatch",
    ),
    "recomputed-looking hash": (
        ("UPDATE chain_entries SET hash = zeroblob(32) WHERE seq = 5",),
        5,
        "hash mismatch",
    ),
    "gap": (("DELETE FROM chain_entries WHERE seq = 20",), 20, "gap"),
    "reordered": (SWAP, 12, "reordered"),
    "truncated": (("DELETE FROM chain_entries WHERE seq >= 35",), 35, "truncated"),
    "altered payload": (
        ("UPDATE chain_entries SET payload = x'7b7d' WHERE seq = 30",),
        30,
        "commitment mismatch",
    ),
    "altered salt": (
        ("UPDATE chain_entries SET salt = zeroblob(16) WHERE seq = 31",),
        31,
        "commitment mismatch",
    ),
    "payload deleted": (
        ("UPDATE chain_entries SET payload = NULL, salt = NULL WHERE seq = 4",),
        4,
        "payload missing",
    ),
    "fake erasure": (
        ("UPDATE chain_entries SET payload = NULL, salt = NULL, erased_by = 39 WHERE seq = 4",),
        4,
        "bad erasure",
    ),
    "merkle node": (
        ("UPDATE chain_nodes SET hash = zeroblob(32) WHERE level = 4 AND idx = 1",),
        16,
        "merkle mismatch",
    ),
    "checkpoint root": (
        ("UPDATE chain_checkpoints SET root = zeroblob(32)",),
        SIZE - 1,
        "checkpoint mismatch",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tampering_is_named_with_the_first_bad_seq(path: Path, case: str) -> None:
    statements, seq, what = CASES[case]
    tamper(path, *statements)
    assert check(path) == (seq, what)


def test_truncation_without_a_checkpoint_is_caught_by_the_stored_subtrees(path: Path) -> None:
    tamper(path, "DELETE FROM chain_checkpoints", "DELETE FROM chain_entries WHERE seq >= 20")
    assert check(path) == (20, "truncated")


def export_of(path: Path) -> list[str]:
    store = ChainStore(connect(path))
    lines = [export_line(e) for e in store.entries()]
    store.close()
    return lines


def check_export(lines: list[str], root: bytes, size: int = SIZE) -> tuple[int | None, str] | None:
    report = check_entries(parse_export(lines), checkpoints={size: root})
    return None if report.ok else (report.problem.seq, report.problem.what)  # type: ignore[union-attr]


def test_export_checks_against_the_checkpoint_root(path: Path) -> None:
    store = ChainStore(connect(path))
    root = store.root()
    store.close()
    lines = export_of(path)
    assert check_export(lines, root) is None
    assert check_export(lines[:30], root) == (30, "truncated")
    assert check_export(lines[:10] + lines[11:], root) == (10, "gap")
    assert check_export(lines, bytes(32)) == (SIZE - 1, "checkpoint mismatch")
    edited = lines[:]
    edited[3] = edited[3].replace('"kind":"reading"', '"kind":"trade"')
    assert check_export(edited, root) == (3, "hash mismatch")


def test_malformed_export_lines_are_refused_with_their_number(path: Path) -> None:
    from gateway.chain.check import ExportError

    lines = export_of(path)
    for bad in ("{", '{"seq": "0"}', "[]", lines[0].replace('"hash":"', '"hash":"zz')):
        with pytest.raises(ExportError, match="line 2 "):
            list(parse_export([lines[0], bad]))


def test_erased_entries_still_verify_in_an_export(path: Path) -> None:
    store = ChainStore(connect(path))
    store.erase(5, reason="gdpr", by="fm", actor=GATEWAY, now_ms=1)
    root, size = store.root(), store.size
    store.close()
    lines = export_of(path)
    assert '"payload":null' in lines[5]
    assert check_export(lines, root, size) is None

"""Bulk registration: what a device file may hold, every problem with its line, and all or none."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlite_utils import Database

from gateway.chain.store import ChainStore, NewEntry
from gateway.identity import offline_resolver
from gateway.registry import Device, Registry, Status
from gateway.registry.bulk import (
    MAX_FILE_BYTES,
    MAX_ROWS,
    ImportRefused,
    Problem,
    parse,
    register_file,
)

T0 = 1_700_000_000.0
GATEWAY_DID = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"


def fake(i: int) -> str:
    """A DID of valid syntax (the parser never resolves)."""
    return f"did:key:z6Mkfake{i:06d}"


def where(problems: list[Problem]) -> list[tuple[int, str]]:
    return [(p.line, p.field) for p in problems]


# -- what the file may look like ------------------------------------------------------


def test_csv_with_bom_crlf_quoted_commas_blank_lines_and_any_column_order() -> None:
    data = (
        "\ufeffKind,DID,name,metadata,owner\r\n"
        f'sensor,{fake(1)},"cellar, north wall",vendor=acme; floor=-1,\r\n'
        "\r\n"
        f'meter,{fake(2)},meter 2,"{{""serial"": ""42""}}",{fake(9)}\r\n'
    ).encode()
    parsed = parse(data)
    assert parsed.problems == [] and parsed.ok and parsed.format == "csv"
    first, second = parsed.rows
    assert (first.line, first.did, first.name, first.kind) == (2, fake(1), "cellar, north wall",
                                                               "sensor")  # fmt: skip
    assert first.metadata == {"vendor": "acme", "floor": "-1"} and first.owner is None
    assert (second.line, second.metadata, second.owner) == (4, {"serial": "42"}, fake(9))


def test_json_rows_carry_the_line_their_object_starts_on() -> None:
    data = (
        "\ufeff[\r\n"
        f'  {{"did": "{fake(1)}", "name": "a", "kind": "sensor"}},\r\n'
        "  {\r\n"
        f'    "did": "{fake(2)}", "name": "b", "kind": "meter",\r\n'
        '    "metadata": {"site": "roof"}\r\n'
        "  }\r\n"
        "]\r\n"
    ).encode()
    parsed = parse(data)
    assert parsed.ok and parsed.format == "json"
    assert [(r.line, r.did, r.metadata) for r in parsed.rows] == [
        (2, fake(1), {}),
        (3, fake(2), {"site": "roof"}),
    ]


def test_every_problem_of_a_csv_file_with_its_line() -> None:
    long_name = "n" * 81
    lines = [
        "did,name,kind,owner,metadata",
        f"{fake(1)},good,sensor,,",  # 2: fine
        "not-a-did,bad did,sensor,,",  # 3
        f"{fake(3)},unknown kind,toaster,,",  # 4
        f"{fake(1)},again,sensor,,",  # 5: duplicate of line 2
        f"{fake(5)},,sensor,,",  # 6: no name
        f"{fake(6)},{long_name},sensor,,",  # 7
        f"{fake(7)},bad meta,sensor,,vendor",  # 8
        f"{fake(8)},bad owner,sensor,owner?,",  # 9
        f"did:key:{'z' * 600},long did,sensor,,",  # 10
        f"{fake(10)},too,many,cells,,",  # 11
        f'{fake(11)},json meta,sensor,,"{{""n"": 1}}"',  # 12
        f'{fake(12)},json meta,sensor,,"{{nope"',  # 13
    ]
    parsed = parse("\n".join(lines).encode())
    assert not parsed.ok
    assert where(parsed.problems) == [
        (3, "did"),
        (4, "kind"),
        (5, "did"),
        (6, "name"),
        (7, "name"),
        (8, "metadata"),
        (9, "owner"),
        (10, "did"),
        (11, ""),
        (12, "metadata"),
        (13, "metadata"),
    ]
    text = {p.line: p.message for p in parsed.problems}
    assert "also on line 2" in text[5]
    assert "unknown device kind 'toaster'" in text[4]
    assert "too long" in text[10]
    assert "needs quotes" in text[11]
    assert [r.line for r in parsed.rows] == [2]  # what is good is still read
    twice = next(p for p in parsed.problems if p.line == 5)  # a fixed sentence, values apart
    assert twice.text == "{did} is also on line {earlier}" and twice.values["earlier"] == 2
    assert twice.message == f"{twice.values['did']} is also on line 2"


def test_json_problems_with_their_lines() -> None:
    data = "\n".join(
        [
            "[",
            f'{{"did": "{fake(1)}", "name": "a", "kind": "sensor"}},',  # 2
            f'{{"did": "{fake(2)}", "name": 7, "kind": "sensor"}},',  # 3
            '"just text",',  # 4
            f'{{"did": "{fake(3)}", "name": "c", "kind": "sensor", "colour": "red"}},',  # 5
            f'{{"did": "{fake(4)}", "name": "d", "kind": "sensor", "metadata": ["x"]}}',  # 6
            "]",
        ]
    ).encode()
    assert where(parse(data).problems) == [(3, "name"), (4, ""), (5, ""), (6, "metadata")]


def test_broken_json_stops_at_the_line_it_breaks() -> None:
    data = f'[\n{{"did": "{fake(1)}", "name": "a", "kind": "sensor"}},\n{{"did": oops}}\n]'
    [problem] = parse(data.encode()).problems
    assert (problem.line, problem.field) == (3, "") and "not JSON" in problem.message
    # CPython's C decoder would overflow its stack on this (a crash): refused before
    nested = b"[\n" + b"[" * 300_000 + b"]" * 300_001
    [deep] = parse(nested).problems
    assert deep.line == 2 and "nested more than" in deep.message
    brackets = f'[{{"did": "{fake(1)}", "name": "[[[[[[[[[[{{{{", "kind": "sensor"}}]'
    assert parse(brackets.encode()).ok  # brackets inside a string are text
    assert "after the end" in parse(b'[]\n{"x": 1}').problems[0].message


@pytest.mark.parametrize(
    ("data", "line", "words"),
    [
        (b"", 0, "empty"),
        (b"\xef\xbb\xbf \r\n", 0, "empty"),
        (b"did,name,kind\r\n", 0, "no devices"),
        (b"[]", 0, "no devices"),
        (b"did,name\nx,y\n", 1, "missing column(s) kind"),
        (b"did,name,kind,colour\n", 1, "unknown column(s) 'colour'"),
        (b"did,name,kind,did\n", 1, "named twice: did"),
        (b"did,name,kind\nok\n\xff\xfe\n", 3, "not UTF-8"),
        (b'did,name,kind\n"a"b,c,d\n', 2, "cannot read"),
    ],
)
def test_files_that_cannot_be_read(data: bytes, line: int, words: str) -> None:
    parsed = parse(data)
    assert not parsed.ok and parsed.rows == []
    assert parsed.problems[0].line == line
    assert words in parsed.problems[0].message


def test_control_characters_in_a_name_are_refused() -> None:
    parsed = parse(f"did,name,kind\n{fake(1)},a\x00b,sensor\n{fake(2)},a\x1bc,sensor\n".encode())
    assert where(parsed.problems) == [(2, "name"), (3, "name")]


def test_the_caps_on_size_and_rows() -> None:
    header = b"did,name,kind\n"
    too_big = parse(header + b"x" * MAX_FILE_BYTES)
    assert [(p.line, "bytes; at most" in p.message) for p in too_big.problems] == [(0, True)]
    rows = "".join(f"{fake(i)},d{i},sensor\n" for i in range(MAX_ROWS + 5))
    over = parse(header + rows.encode())
    assert len(header + rows.encode()) <= MAX_FILE_BYTES
    assert over.problems[-1].line == MAX_ROWS + 2  # the first row past the cap
    assert f"more than {MAX_ROWS}" in over.problems[-1].message
    exact = parse(header + "".join(rows.splitlines(True)[:MAX_ROWS]).encode())
    assert exact.ok and len(exact.rows) == MAX_ROWS


def test_problems_shown_are_capped_but_all_are_counted() -> None:
    rows = "".join(f"bad{i},d,sensor\n" for i in range(2000))
    parsed = parse(b"did,name,kind\n" + rows.encode())
    assert parsed.problem_count == 2000 and len(parsed.problems) == 500
    assert parsed.to_json()["problem_count"] == 2000


# -- with the registry: all or none, on the record -------------------------------------


def csv_of(*devices: tuple[str, str, str]) -> bytes:
    return ("did,name,kind\r\n" + "".join(f"{d},{n},{k}\r\n" for d, n, k in devices)).encode()


def recorded_registry(db: Database) -> tuple[Registry, ChainStore]:
    chain = ChainStore(db)
    return Registry(db, offline_resolver(), chain=chain, gateway_did=GATEWAY_DID), chain


def test_a_file_with_a_registered_or_revoked_did_registers_nothing(
    db: Database, new_did: Any
) -> None:
    registry, chain = recorded_registry(db)
    taken, revoked, fresh = new_did().did, new_did().did, new_did().did
    registry.register(taken, name="old", kind="sensor", actor="fm", now=T0)
    registry.register(revoked, name="gone", kind="sensor", actor="fm", now=T0)
    registry.revoke(revoked, actor="fm", reason="broken", now=T0)
    size = chain.size
    data = csv_of((fresh, "new", "sensor"), (taken, "again", "sensor"), (revoked, "back", "meter"))
    with pytest.raises(ImportRefused) as refused:
        register_file(registry, data, actor="fm", now=T0 + 1)
    assert where(refused.value.parsed.problems) == [(3, "did"), (4, "did")]
    assert "cannot be registered again" in refused.value.parsed.problems[1].message
    assert registry.find(fresh) is None and chain.size == size


def test_a_did_whose_document_has_no_usable_key_is_a_problem(db: Database) -> None:
    registry, _ = recorded_registry(db)
    x25519 = "did:key:z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW"
    with pytest.raises(ImportRefused) as refused:
        register_file(registry, csv_of((x25519, "x", "sensor")), actor="fm", now=T0)
    assert where(refused.value.parsed.problems) == [(2, "did")]


def test_a_good_file_registers_every_device_audited_and_on_the_record(
    db: Database, new_did: Any
) -> None:
    registry, chain = recorded_registry(db)
    dids = [new_did().did for _ in range(3)]
    data = csv_of(*((d, f"dev {i}", "meter") for i, d in enumerate(dids)))
    checked, none = register_file(registry, data, actor="fm", now=T0, dry_run=True)
    assert checked.ok and none == [] and registry.devices() == [] and chain.size == 0

    def action(device: Device) -> list[NewEntry]:
        return [NewEntry("person-action", "did:key:z6Mkperson", device.did.encode())]

    _, devices = register_file(registry, data, actor="did:key:z6Mkperson", now=T0, also=action)
    assert [d.did for d in devices] == dids
    assert {d.did for d in registry.devices(Status.ACTIVE)} == set(dids)
    [record] = registry.history(dids[1])
    assert (record.action, record.actor, record.reason) == ("register", "did:key:z6Mkperson",
                                                            "imported")  # fmt: skip
    entries = list(chain.entries())
    assert [e.kind for e in entries] == ["registry", "person-action"] * 3
    first = json.loads(entries[0].payload or b"")
    assert (first["action"], first["device"], first["by"]) == ("register", dids[0],
                                                               "did:key:z6Mkperson")  # fmt: skip


def test_if_the_record_cannot_be_written_no_device_is_registered(
    db: Database, new_did: Any
) -> None:
    registry, chain = recorded_registry(db)
    data = csv_of(*((new_did().did, f"d{i}", "sensor") for i in range(50)))
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(Exception, match="nothing was changed"):
        register_file(registry, data, actor="fm", now=T0)
    db.execute("PRAGMA max_page_count = 1000000")
    assert registry.devices() == [] and chain.size == 0
    register_file(registry, data, actor="fm", now=T0)
    assert len(registry.devices()) == 50 and chain.size == 50

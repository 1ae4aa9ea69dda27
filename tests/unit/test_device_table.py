"""The devices table's core: filters, sorts and cursors over a real migrated database, the
activity counted from the record, the queries' plans, and the bounded refusal book."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from sqlite_utils import Database

from gateway.auth.refusals import RefusalBook
from gateway.chain import activity
from gateway.chain.store import ChainStore, NewEntry
from gateway.errors import RegistryError
from gateway.registry import Registry, Status, table
from gateway.registry.table import Cursor, DeviceFilter, metadata_filter

NOW = 1_700_000_000.0


def fill(registry: Registry, new_did: Any, count: int) -> list[str]:
    dids = []
    for i in range(count):
        did = new_did().did
        registry.register(
            did, name=f"dev {(i * 7) % count:03d}", kind=("meter", "sensor")[i % 2],
            actor="t", now=NOW + i, metadata={"site": f"s{i % 3}"},
        )  # fmt: skip
        dids.append(did)
    return dids


ALL = DeviceFilter()


def walk(db: Database, sort: str, where: DeviceFilter = ALL, limit: int = 4) -> list[str]:
    seen: list[str] = []
    after = None
    while True:
        page, after = table.page(db, limit=limit, sort=sort, after=after, where=where)
        seen += [d.did for d in page]
        if after is None:
            return seen


def test_every_order_walks_each_device_once_in_order(
    db: Database, registry: Registry, new_did: Any
) -> None:
    dids = fill(registry, new_did, 23)
    assert walk(db, "registered") == dids
    by_name = walk(db, "name")
    names = {d.did: d.name for d in registry.devices()}
    assert [names[d] for d in by_name] == sorted(names.values())
    chain = ChainStore(db)
    for n, did in enumerate(dids[5:9]):  # four devices read, the last most recently
        chain.append_batch([NewEntry("reading", did, b"x", k) for k in range(1, n + 2)], now_ms=1)
    by_seen = walk(db, "last_seen")
    assert by_seen[:4] == list(reversed(dids[5:9]))
    assert sorted(by_seen) == sorted(dids)


def test_filters_combine(db: Database, registry: Registry, new_did: Any) -> None:
    dids = fill(registry, new_did, 12)
    registry.suspend(dids[3], actor="t", reason="r", now=NOW + 100)
    where = DeviceFilter(status=Status.SUSPENDED)
    assert walk(db, "name", where) == [dids[3]]
    meters = walk(db, "registered", DeviceFilter(kind="meter", metadata=("site", "s0")))
    assert meters == [d for i, d in enumerate(dids) if i % 2 == 0 and i % 3 == 0]
    assert walk(db, "name", DeviceFilter(query=dids[7][-10:])) == [dids[7]]
    assert walk(db, "name", DeviceFilter(query="%")) == []  # LIKE wildcards are literal
    assert walk(db, "name", DeviceFilter(query="_")) == []


def test_bad_filters_and_cursors_are_refused_with_reasons() -> None:
    for text in ("site", "=x", 'a"b=1', "a b=1", "k" * 65 + "=v", "k=" + "v" * 513):
        with pytest.raises(RegistryError, match="key=value"):
            metadata_filter(text)
    assert metadata_filter("site=north=1") == ("site", "north=1")
    good = Cursor("name", "dev 001", "did:key:z").encode()
    assert Cursor.decode(good, "name") == Cursor("name", "dev 001", "did:key:z")

    def raw(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()

    for text, sort in (
        (good, "registered"),  # another order's cursor
        (raw(["name", 5, "did"]), "name"),
        (raw(["last_seen", "x", "did"]), "last_seen"),
        (raw(["registered", True, "did"]), "registered"),
        (raw({"a": 1}), "name"),
        ("[" * 5000, "name"),
        ("x" * 2000, "name"),
        ("%%%", "name"),
        (base64.urlsafe_b64encode(b"\xff\xfe").decode(), "name"),
        (raw([[[[[[]]]]]]), "name"),
    ):
        with pytest.raises(ValueError):
            Cursor.decode(text, sort)
    assert Cursor.decode(raw([1.5, "did"]), "registered").value == 1.5  # the older form


def test_a_page_is_an_index_range_and_activity_uses_the_keyed_index(db: Database) -> None:
    def plan(sql: str, args: list[Any]) -> str:
        return " | ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + sql, args))

    cases = {
        "registered": "devices_order",
        "name": "devices_name_order",
    }
    for sort, index in cases.items():
        sql, args = _captured(db, sort, DeviceFilter())
        assert index in plan(sql, args) and "TEMP B-TREE" not in plan(sql, args), sort
    sql, args = _captured(db, "registered", DeviceFilter(status=Status.ACTIVE))
    assert "devices_status_order" in plan(sql, args)
    sql, args = _captured(db, "registered", DeviceFilter(kind="meter"))
    assert "devices_kind" in plan(sql, args)
    sql, args = _captured(db, "last_seen", DeviceFilter())
    # every device (a scan of the devices, not of the record): one keyed lookup each
    assert "SEARCH k USING PRIMARY KEY (actor=? AND kind=?)" in plan(sql, args)
    counted = plan(
        "SELECT count(*) FROM chain_keys WHERE actor = ? AND kind = ? AND key >= ? AND seq >= ?",
        [1, "reading", 0, 0],
    )
    assert "USING PRIMARY KEY (actor=? AND kind=? AND key>?)" in counted


def _captured(db: Database, sort: str, where: DeviceFilter) -> tuple[str, list[Any]]:
    """The SQL and arguments :func:`table.page` runs for ``sort`` and ``where``."""
    seen: list[tuple[str, list[Any]]] = []

    class Spy:
        def execute(self, sql: str, args: list[Any]) -> Any:
            seen.append((sql, args))
            return db.execute(sql, args)

    table.page(Spy(), limit=10, sort=sort, where=where)
    return seen[0]


def test_readings_today_and_last_seen_come_from_the_record(
    db: Database, registry: Registry, new_did: Any
) -> None:
    a, b, quiet = fill(registry, new_did, 3)
    chain = ChainStore(db)
    day = 86_400_000
    chain.append_batch([NewEntry("reading", a, b"y", k) for k in range(1, 6)], now_ms=day - 10)
    chain.append_batch([NewEntry("reading", b, b"y", 1)], now_ms=day - 5)
    chain.append_batch([NewEntry("reading", a, b"y", k) for k in (6, 7, 9)], now_ms=day + 1)
    chain.append_batch([NewEntry("reading", a, b"y", 8)], now_ms=day + 2)  # overtaken
    chain.append_batch([NewEntry("other", a, b"y", 100)], now_ms=day + 3)
    found = activity.activity(db, [a, b, quiet, "did:key:nobody"], since_ms=day, slack=1024)
    assert found[a] == activity.Activity(day + 1, 4)  # key 9 is the newest key
    assert found[b] == activity.Activity(day - 5, 0)
    assert found[quiet] == found["did:key:nobody"] == activity.Activity(None, 0)
    assert activity.activity(db, [a], since_ms=0, slack=1024)[a].readings_since == 9
    assert activity.activity(db, [a], since_ms=day * 2, slack=1024)[a].readings_since == 0
    assert activity.first_seq_at(db, day) == 6
    assert len(activity.recent(db, a, limit=3)) == 3


def test_the_refusal_book_keeps_only_earned_refusals_and_is_bounded() -> None:
    book = RefusalBook(capacity=3)
    assert not book.note("did:key:a", "bad_signature", 1)  # anyone can cause these
    assert not book.note("did:key:a", "unknown_device", 1)
    assert not book.note("did:key:a", "malformed", 1)
    assert book.last("did:key:a") is None
    for i, did in enumerate("abcd"):
        assert book.note(f"did:key:{did}", "not_active", i)
    assert len(book) == 3 and book.last("did:key:a") is None  # the oldest went first
    assert book.last("did:key:d") is not None and book.last("did:key:d").reason == "not_active"  # type: ignore[union-attr]
    drained = book.drain()
    assert len(drained) == 3 and book.drain() == []
    other = RefusalBook()
    other.take(drained)
    other.take([("did:key:x", "replay", "soon"), "junk", ("did:key:y", "garbage", 5)])
    other.take("not a list")
    assert len(other) == 3 and other.last("did:key:y") is None

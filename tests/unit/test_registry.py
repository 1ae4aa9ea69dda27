"""The device registry: the facility manager's operations, their audit trail, and every refusal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlite_utils import Database

from gateway.errors import DidError, DidgwError, RegistryError, ResolutionError
from gateway.registry import Registry, Status

T0 = 1_700_000_000.0
X25519_KEY = "z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW"  # a keyAgreement key


def dump(db: Database) -> list[str]:
    return list(db.conn.iterdump())


def register(registry: Registry, did: str, **extra: Any) -> Any:
    args: dict[str, Any] = {"name": "roof PV", "kind": "inverter", "actor": "fm:alice", "now": T0}
    return registry.register(did, **{**args, **extra})


def test_register_list_show(registry: Registry, new_did: Any) -> None:
    owner = new_did().did
    did = new_did().did
    device = register(
        registry,
        did,
        owner=owner,
        topics=["site/roof/#", "site/roof/pv"],
        capabilities=["reading"],
        metadata={"vendor": "acme"},
    )
    assert device.status is Status.ACTIVE
    assert registry.get(did) == device
    assert registry.get(did).topics == ("site/roof/#", "site/roof/pv")
    assert [d.did for d in registry.devices()] == [did]
    assert registry.devices(Status.SUSPENDED) == []
    [record] = registry.history(did)
    assert (record.actor, record.action, record.ts, record.reason) == (
        "fm:alice",
        "register",
        T0,
        "registered",
    )


def test_lifecycle_is_audited_with_who_when_why(registry: Registry, new_did: Any) -> None:
    did = new_did().did
    assert registry.status(did) is None  # not registered
    register(registry, did)
    assert registry.status(did) is Status.ACTIVE
    registry.suspend(did, actor="fm:bob", reason="stolen", now=T0 + 1)
    assert registry.get(did).status is Status.SUSPENDED is registry.status(did)
    registry.resume(did, actor="fm:bob", reason="found", now=T0 + 2)
    assert registry.status(did) is Status.ACTIVE
    registry.revoke(did, actor="fm:carol", reason="decommissioned", now=T0 + 3)
    assert registry.get(did).status is Status.REVOKED is registry.status(did)
    history = [
        (r.action, r.actor, r.ts, r.reason, r.detail.get("to")) for r in registry.history(did)
    ]
    assert history == [
        ("register", "fm:alice", T0, "registered", None),
        ("suspend", "fm:bob", T0 + 1, "stolen", "suspended"),
        ("resume", "fm:bob", T0 + 2, "found", "active"),
        ("revoke", "fm:carol", T0 + 3, "decommissioned", "revoked"),
    ]


def test_rotate_links_old_and_new(registry: Registry, new_did: Any) -> None:
    old, new = new_did().did, new_did().did
    register(registry, old, topics=["site/a"], metadata={"serial": "42"})
    replacement = registry.rotate(old, new, actor="fm:alice", reason="key rotation", now=T0 + 5)
    assert replacement.did == new and replacement.replaces == old
    assert replacement.status is Status.ACTIVE
    assert (replacement.name, replacement.topics, replacement.metadata) == (
        "roof PV",
        ("site/a",),
        {"serial": "42"},
    )
    retired = registry.get(old)
    assert (retired.status, retired.replaced_by) == (Status.REVOKED, new)
    assert [r.action for r in registry.history(old)] == ["register", "rotate"]
    assert [r.detail for r in registry.history(new)] == [{"replaces": old}]


# -- refusals: each one leaves the database exactly as it was ---------------------


def _refusals(
    new_did: Any,
) -> list[tuple[str, Callable[[Registry, str, str], Any], type[DidgwError], str]]:
    other = new_did().did
    return [
        ("duplicate", lambda r, d, rv: register(r, d), RegistryError, "already registered"),
        (
            "duplicate of revoked",
            lambda r, d, rv: register(r, rv),
            RegistryError,
            "cannot be registered again",
        ),
        ("malformed DID", lambda r, d, rv: register(r, "did:key:"), DidError, "not a DID"),
        (
            "not a did:key",
            lambda r, d, rv: register(r, "did:key:z6MkINVALID0"),
            DidError,
            "not valid base58btc",
        ),
        (
            "unresolvable method",
            lambda r, d, rv: register(r, "did:example:123"),
            ResolutionError,
            "did:example is not supported",
        ),
        (
            "unknown device",
            lambda r, d, rv: r.suspend(other, actor="a", reason="b", now=T0),
            RegistryError,
            "no device",
        ),
        (
            "suspend revoked",
            lambda r, d, rv: r.suspend(rv, actor="a", reason="b", now=T0),
            RegistryError,
            "revoked, which is permanent",
        ),
        (
            "resume revoked",
            lambda r, d, rv: r.resume(rv, actor="a", reason="b", now=T0),
            RegistryError,
            "revoked",
        ),
        (
            "revoke revoked",
            lambda r, d, rv: r.revoke(rv, actor="a", reason="b", now=T0),
            RegistryError,
            "revoked",
        ),
        (
            "rotate revoked",
            lambda r, d, rv: r.rotate(rv, other, actor="a", reason="b", now=T0),
            RegistryError,
            "revoked",
        ),
        (
            "resume active",
            lambda r, d, rv: r.resume(d, actor="a", reason="b", now=T0),
            RegistryError,
            "already active",
        ),
        (
            "rotate onto registered",
            lambda r, d, rv: r.rotate(d, rv, actor="a", reason="b", now=T0),
            RegistryError,
            "already registered",
        ),
        (
            "rotate onto itself",
            lambda r, d, rv: r.rotate(d, d, actor="a", reason="b", now=T0),
            RegistryError,
            "same as the old",
        ),
        (
            "rotate onto bad DID",
            lambda r, d, rv: r.rotate(d, "did:nope", actor="a", reason="b", now=T0),
            DidError,
            "not a DID",
        ),
        (
            "no reason",
            lambda r, d, rv: r.suspend(d, actor="a", reason=" ", now=T0),
            RegistryError,
            "needs a reason",
        ),
        (
            "no actor",
            lambda r, d, rv: r.suspend(d, actor="", reason="x", now=T0),
            RegistryError,
            "needs an actor",
        ),
        (
            "bad kind",
            lambda r, d, rv: register(r, other, kind="toaster"),
            RegistryError,
            "unknown device kind 'toaster'",
        ),
        ("bad name", lambda r, d, rv: register(r, other, name=""), RegistryError, "device name"),
        ("bad owner", lambda r, d, rv: register(r, other, owner="alice"), DidError, "not a DID"),
        (
            "bad capability",
            lambda r, d, rv: register(r, other, capabilities=["Read Stuff"]),
            RegistryError,
            "capability",
        ),
        (
            "dollar topic",
            lambda r, d, rv: register(r, other, topics=["$SYS/#"]),
            RegistryError,
            "not allowed",
        ),
        (
            "wildcard mid-level",
            lambda r, d, rv: register(r, other, topics=["a/#/b"]),
            RegistryError,
            "not a valid MQTT topic filter",
        ),
        (
            "partial wildcard",
            lambda r, d, rv: register(r, other, topics=["a/b+"]),
            RegistryError,
            "not a valid MQTT topic filter",
        ),
        (
            "empty level",
            lambda r, d, rv: register(r, other, topics=["a//b"]),
            RegistryError,
            "not a valid MQTT topic filter",
        ),
    ]


@pytest.mark.parametrize("index", range(24))
def test_refusal_is_clear_and_changes_nothing(
    registry: Registry, db: Database, new_did: Any, index: int
) -> None:
    cases = _refusals(new_did)
    assert len(cases) == 24
    name, action, error, message = cases[index]
    active, revoked = new_did().did, new_did().did
    register(registry, active)
    register(registry, revoked)
    registry.revoke(revoked, actor="fm", reason="gone", now=T0)
    before = dump(db)
    with pytest.raises(error, match=message):
        action(registry, active, revoked)
    assert dump(db) == before, name


def test_did_document_without_an_ed25519_authentication_key_is_refused(db: Database) -> None:
    from gateway.identity.resolver import Resolution

    class X25519Only:
        def resolve(self, did: str, *, now: float) -> Resolution:
            return Resolution(
                did,
                {
                    "id": did,
                    "verificationMethod": [
                        {
                            "id": f"{did}#x",
                            "type": "Multikey",
                            "controller": did,
                            "publicKeyMultibase": X25519_KEY,
                        }
                    ],
                    "authentication": [f"{did}#x"],
                    "keyAgreement": [f"{did}#x"],
                },
                "test",
                now,
            )

    registry = Registry(db, X25519Only())
    before = dump(db)
    with pytest.raises(RegistryError, match="no Ed25519 authentication key"):
        register(registry, "did:web:example.com")
    assert dump(db) == before


# -- every change is also on the record, atomically ------------------------------

GATEWAY_DID = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"


def test_changes_are_recorded_on_the_chain_in_the_same_transaction(
    db: Database, new_did: Any
) -> None:
    import json

    from gateway.chain.store import ChainStore
    from gateway.identity import offline_resolver

    chain = ChainStore(db)
    registry = Registry(db, offline_resolver(), chain=chain, gateway_did=GATEWAY_DID)
    old, new = new_did().did, new_did().did
    register(registry, old)
    registry.suspend(old, actor="fm:bob", reason="stolen", now=T0 + 1)
    registry.rotate(old, new, actor="fm:bob", reason="new key", now=T0 + 2)
    entries = list(chain.entries())
    assert [e.kind for e in entries] == ["registry"] * 4
    assert all(e.actor == GATEWAY_DID for e in entries)
    records = [json.loads(e.payload or b"") for e in entries]
    assert [(r["action"], r["device"], r["by"]) for r in records] == [
        ("register", old, "fm:alice"),
        ("suspend", old, "fm:bob"),
        ("rotate", old, "fm:bob"),
        ("register", new, "fm:bob"),
    ]
    assert entries[1].ts == int((T0 + 1) * 1000)
    before = chain.size
    with pytest.raises(RegistryError):
        registry.suspend(new_did().did, actor="fm", reason="unknown device", now=T0)
    assert chain.size == before


def test_if_the_record_cannot_be_written_the_change_is_not_made(db: Database, new_did: Any) -> None:
    from gateway.chain.store import ChainStore
    from gateway.identity import offline_resolver

    chain = ChainStore(db)
    registry = Registry(db, offline_resolver(), chain=chain, gateway_did=GATEWAY_DID)
    did = new_did().did
    register(registry, did)
    before, size = dump(db), chain.size
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(RegistryError, match=r"disk is full; nothing was changed"):
        registry.suspend(did, actor="fm", reason="r" * 20000, now=T0 + 1)
    db.execute("PRAGMA max_page_count = 1000000")
    assert dump(db) == before
    assert registry.get(did).status is Status.ACTIVE
    assert chain.size == size  # resynchronised after the rollback
    registry.suspend(did, actor="fm", reason="battery", now=T0 + 2)
    assert chain.size == size + 1


def test_pages_follow_registration_order_by_an_index_and_escape_the_query(
    registry: Registry, db: Database, new_did: Any
) -> None:
    dids = [new_did().did for _ in range(7)]
    for i, did in enumerate(dids):
        registry.register(did, name=f"dev_{i}%", kind="sensor", actor="t", now=10.0 + i // 2)
    ordered = sorted(dids, key=lambda d: (10.0 + dids.index(d) // 2, d))
    first = registry.page(limit=3)
    rest = registry.page(limit=10, after=(first[-1].created_at, first[-1].did))
    assert [d.did for d in first + rest] == ordered
    assert [d.name for d in registry.page(limit=10, query="_3%")] == ["dev_3%"]
    assert registry.page(limit=10, query="v_3_") == []  # '_' is no wildcard
    assert registry.page(limit=10, status=Status.SUSPENDED) == []
    for status in (None, Status.ACTIVE):
        where = "" if status is None else "status = 'active' AND "
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM devices WHERE "  # noqa: S608 - constants
            f"{where}(created_at, did) > (1.0, 'x') ORDER BY created_at, did LIMIT 5"
        ).fetchall()
        assert "USING INDEX devices_" in str(plan) and "TEMP B-TREE" not in str(plan), plan

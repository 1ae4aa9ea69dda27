"""The reading path's device status cache: a change in the registry, from any connection,
reaches it within its recheck interval, and never later."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from gateway.identity import offline_resolver
from gateway.registry import Registry, Status
from gateway.registry.status_cache import StatusCache

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_revocation_from_another_connection_is_seen_after_the_recheck(
    db: Database, new_did: Any, tmp_path: Any
) -> None:
    registry = Registry(db, offline_resolver())
    did = new_did().did
    registry.register(did, name="meter", kind="meter", actor="fm:alice", now=T0)
    clock = Clock()
    cache = StatusCache(registry, recheck=0.1, clock=clock)
    assert cache(did) is Status.ACTIVE

    other = Registry(Database(db.conn), offline_resolver())  # as `didgw device revoke` would
    other.revoke(did, actor="fm:bob", reason="stolen", now=T0 + 1)
    clock.now = 0.05
    assert cache(did) is Status.ACTIVE  # inside the recheck interval: the cached answer
    clock.now = 0.1
    assert cache(did) is Status.REVOKED


def test_unknown_then_registered(db: Database, new_did: Any) -> None:
    registry = Registry(db, offline_resolver())
    did = new_did().did
    clock = Clock()
    cache = StatusCache(registry, recheck=0.1, clock=clock)
    assert cache(did) is None
    registry.register(did, name="meter", kind="meter", actor="fm:alice", now=T0)
    clock.now = 0.2
    assert cache(did) is Status.ACTIVE


def test_no_change_no_reload(db: Database, new_did: Any) -> None:
    registry = Registry(db, offline_resolver())
    did = new_did().did
    registry.register(did, name="meter", kind="meter", actor="fm:alice", now=T0)
    clock = Clock()
    cache = StatusCache(registry, recheck=0.1, clock=clock)
    assert cache(did) is Status.ACTIVE
    db.conn.execute("UPDATE devices SET status = 'suspended' WHERE did = ?", [did])  # no audit
    clock.now = 1.0
    assert cache(did) is Status.ACTIVE  # only an audited change drops the cache

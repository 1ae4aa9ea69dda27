"""API tokens (core): shown once, kept as a hash, on the record, revoked and expired for good;
and who may do what through the JSON API, for tokens and for signed-in people."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

from gateway.auth.api_access import Caller, market_scope, may, sees
from gateway.auth.api_tokens import (
    AREAS,
    ApiToken,
    ApiTokens,
    TokenError,
    parse_duration,
    permissions_of,
    role_may,
)
from gateway.chain.store import ChainStore
from gateway.credentials.permissions import Permissions
from gateway.db import connect, migrate

GATEWAY = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
NOW = 1_800_000_000_000


def fixed(n: int) -> bytes:
    return bytes(range(n))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[object]:
    database = connect(tmp_path / "g.db")
    migrate(database, now=0)
    yield database
    database.close()


@pytest.fixture
def tokens(db: object) -> ApiTokens:
    return ApiTokens(db, gateway_did=GATEWAY)  # type: ignore[arg-type]


def test_a_token_is_prefixed_random_and_kept_only_as_its_hash(
    tokens: ApiTokens, db: object, tmp_path: Path
) -> None:
    secret, token = tokens.create(
        "billing", "reader", by="local:ops", now_ms=NOW, random_bytes=fixed
    )
    assert re.fullmatch(r"didgw_[A-Za-z0-9_-]{43}", secret)
    assert token.role == "reader" and token.state(NOW) == "active"
    found = tokens.check(secret, NOW + 1)
    assert found is not None and found.name == "billing"
    rows = db.execute("SELECT * FROM api_tokens").fetchall()  # type: ignore[attr-defined]
    assert secret not in repr(rows) and secret[6:] not in repr(rows)
    db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[attr-defined]
    assert secret.encode() not in (tmp_path / "g.db").read_bytes()


def test_create_and_revoke_are_on_the_record_without_the_secret(
    tokens: ApiTokens, db: object
) -> None:
    secret, _ = tokens.create("ops", "operator", by="local:ann", now_ms=NOW, random_bytes=fixed)
    tokens.revoke("ops", by="local:bob", now_ms=NOW + 5)
    entries = list(ChainStore(db).entries())  # type: ignore[arg-type]
    bodies = [json.loads(e.payload or b"") for e in entries]
    assert [e.kind for e in entries] == ["api-token", "api-token"]
    assert bodies == [
        {
            "action": "create",
            "token": "ops",
            "role": "operator",
            "by": "local:ann",
            "expires": None,
        },
        {"action": "revoke", "token": "ops", "role": "operator", "by": "local:bob"},
    ]
    assert all(secret not in (e.payload or b"").decode() for e in entries)


def test_a_wrong_revoked_expired_or_malformed_token_is_refused(tokens: ApiTokens) -> None:
    good, _ = tokens.create("a", "reader", by="x", now_ms=NOW, random_bytes=fixed)
    short, _ = tokens.create(
        "b",
        "reader",
        by="x",
        now_ms=NOW,
        random_bytes=lambda n: b"\x01" * n,
        expires_ms=NOW + 1000,
    )
    assert tokens.check(good[:-1] + ("A" if good[-1] != "A" else "B"), NOW) is None
    assert tokens.check(good + "x", NOW) is None
    assert tokens.check("", NOW) is None
    assert tokens.check(good.replace("didgw_", "other_"), NOW) is None
    assert tokens.check(short, NOW + 999) is not None
    assert tokens.check(short, NOW + 1000) is None
    assert tokens.get("b").state(NOW + 1000) == "expired"
    tokens.revoke("a", by="x", now_ms=NOW + 1)
    assert tokens.check(good, NOW + 2) is None
    with pytest.raises(TokenError, match="already revoked"):
        tokens.revoke("a", by="x", now_ms=NOW + 3)


def test_names_roles_and_durations_are_checked_and_a_refusal_changes_nothing(
    tokens: ApiTokens, db: object
) -> None:
    with pytest.raises(TokenError, match="unknown role"):
        tokens.create("x", "admin", by="x", now_ms=NOW, random_bytes=fixed)
    with pytest.raises(TokenError, match="token name"):
        tokens.create("Bad Name", "reader", by="x", now_ms=NOW, random_bytes=fixed)
    with pytest.raises(TokenError, match="future"):
        tokens.create("x", "reader", by="x", now_ms=NOW, random_bytes=fixed, expires_ms=NOW)
    tokens.create("x", "reader", by="x", now_ms=NOW, random_bytes=fixed)
    tokens.revoke("x", by="x", now_ms=NOW)
    with pytest.raises(TokenError, match="exists already"):
        tokens.create("x", "operator", by="x", now_ms=NOW, random_bytes=lambda n: b"\x02" * n)
    with pytest.raises(TokenError, match="no API token"):
        tokens.revoke("nobody", by="x", now_ms=NOW)
    assert [t.name for t in tokens.tokens()] == ["x"]
    assert ChainStore(db).size == 2  # type: ignore[arg-type]
    assert parse_duration("90d") == 90 * 86_400_000
    assert parse_duration("12h") == 12 * 3_600_000
    for bad in ("", "0d", "90", "d", "1y", "-3d", "1.5d"):
        with pytest.raises(TokenError):
            parse_duration(bad)


def test_use_is_noted_at_most_once_a_minute(tokens: ApiTokens) -> None:
    secret, _ = tokens.create("a", "reader", by="x", now_ms=NOW, random_bytes=fixed)
    tokens.check(secret, NOW + 10)
    tokens.check(secret, NOW + 30_000)
    assert tokens.get("a").last_used_ms == NOW + 10
    tokens.check(secret, NOW + 70_000)
    assert tokens.get("a").last_used_ms == NOW + 70_000


# -- who may do what -------------------------------------------------------------------------


def household_member(role: str) -> Permissions:
    homes = MappingProxyType({"did:key:zHome": frozenset({role})})
    return Permissions("did:key:zH", households=homes)


def token(role: str) -> Caller:
    return Caller(f"token:{role}", Permissions(f"token:{role}"), role)


def test_roles_operator_everything_reader_reads_facility_manager_devices() -> None:
    for area in AREAS:
        assert may(token("operator"), area, change=False)
        assert may(token("operator"), area, change=True)
        assert may(token("reader"), area, change=False)
        assert not may(token("reader"), area, change=True)
        expected = area == "devices"
        assert bool(may(token("facility-manager"), area, change=False)) is expected
        assert bool(may(token("facility-manager"), area, change=True)) is expected
    assert not may(token("root"), "devices", change=False)
    assert not may(token("operator"), "secrets", change=False)
    assert not role_may("", "devices", change=False)


def test_a_person_manages_devices_only_as_facility_manager() -> None:
    manager = Caller("did:key:zM", Permissions("did:key:zM", facility_manager=True))
    member = Caller("did:key:zH", household_member("seller"))
    nobody = Caller("did:key:zN", Permissions("did:key:zN"))
    assert may(manager, "devices", change=True)
    assert may(manager, "devices", change=False)
    assert not may(member, "devices", change=False)
    assert not may(nobody, "devices", change=True)
    assert may(member, "market", change=False)
    assert not may(member, "market", change=True)
    assert not may(manager, "market", change=False)
    for area in ("credentials", "chain", "anchors", "status"):
        assert may(manager, area, change=False)  # her console's People, Record, Health
        assert not may(member, area, change=False)
        assert not may(nobody, area, change=False)
    assert may(manager, "credentials", change=True)  # suspend, resume, revoke
    for area in ("chain", "anchors", "status", "market"):
        assert not may(manager, area, change=True)


def test_a_household_member_sees_only_her_households_market_rows() -> None:
    member = Caller("did:key:zH", household_member("buyer"))
    scope = market_scope(member)
    assert sees(scope, ["did:key:zHome"])
    assert sees(scope, ["did:key:zOther", "did:key:zHome"])
    assert not sees(scope, ["did:key:zOther"])
    assert not sees(scope, [None])
    assert market_scope(token("reader")) is None
    assert sees(None, ["did:key:zOther"])


def test_a_token_role_as_permissions() -> None:
    assert permissions_of(ApiToken("a", "facility-manager", NOW, "x")).may_manage_devices()
    assert permissions_of(ApiToken("a", "operator", NOW, "x")).may_manage_devices()
    assert not permissions_of(ApiToken("a", "reader", NOW, "x")).may_manage_devices()
    assert permissions_of(ApiToken("a", "reader", NOW, "x")).holder == "token:a"

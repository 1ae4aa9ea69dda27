"""Server-side web sessions: lifetimes, sign-out, revocation, and nothing usable at rest."""

from __future__ import annotations

import os
from types import MappingProxyType

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlite_utils import Database

from gateway.auth.web_sessions import TOUCH_EVERY_MS, WebSessions
from gateway.credentials.issuer import CredentialIssuer
from gateway.credentials.permissions import Permissions
from gateway.identity.signing import Signer

NOW_MS = 1_700_000_000_000
GATEWAY = Signer.for_did_key(Ed25519PrivateKey.generate())
PERSON = Signer.for_did_key(Ed25519PrivateKey.generate())
HOUSEHOLD = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
PERMS = Permissions(
    PERSON.did, False, MappingProxyType({HOUSEHOLD: frozenset({"seller"})}), "ab" * 32
)


@pytest.fixture
def sessions(db: Database) -> WebSessions:
    return WebSessions(db, idle_ms=30 * 60_000, max_ms=12 * 3_600_000, random_bytes=os.urandom)


def test_a_session_is_found_by_its_token_with_what_sign_in_established(
    sessions: WebSessions,
) -> None:
    token, opened = sessions.open(
        PERSON.did, "presentation", PERMS, now_ms=NOW_MS, presentations=["d1"], disclosure=7
    )
    found = sessions.find(token, now_ms=NOW_MS + 1000)
    assert found is not None
    assert found.did == PERSON.did and found.method == "presentation"
    assert found.permissions == PERMS
    assert found.permissions.may_trade_for(HOUSEHOLD, "sell")
    assert not found.permissions.may_trade_for(HOUSEHOLD, "buy")
    assert found.presentations == ("d1",) and found.disclosure == 7
    assert found.csrf == opened.csrf and found.csrf_ok(opened.csrf)
    assert not found.csrf_ok(None) and not found.csrf_ok(opened.csrf + "x")


def test_the_database_holds_no_usable_token(sessions: WebSessions, db: Database) -> None:
    token, _ = sessions.open(PERSON.did, "presentation", PERMS, now_ms=NOW_MS)
    [row] = db.execute("SELECT * FROM web_sessions").fetchall()
    assert token not in [str(v) for v in row]
    assert sessions.find(str(row[0]), now_ms=NOW_MS) is None  # the stored hash signs no one in


def test_unknown_or_absurd_tokens_find_nothing(sessions: WebSessions) -> None:
    sessions.open(PERSON.did, "presentation", PERMS, now_ms=NOW_MS)
    for token in ("", "x", "A" * 43, "A" * 5000):
        assert sessions.find(token, now_ms=NOW_MS) is None


def test_an_idle_session_ends_and_a_used_one_does_not(sessions: WebSessions) -> None:
    idle, _ = sessions.open(PERSON.did, "presentation", PERMS, now_ms=NOW_MS)
    used, _ = sessions.open(PERSON.did, "presentation", PERMS, now_ms=NOW_MS)
    step = 20 * 60_000
    assert sessions.find(used, now_ms=NOW_MS + step) is not None
    assert sessions.find(used, now_ms=NOW_MS + 2 * step) is not None  # seen 20 min ago
    assert sessions.find(idle, now_ms=NOW_MS + 2 * step) is None  # 40 min without a request
    assert sessions.find(idle, now_ms=NOW_MS + step) is None  # and it was deleted


def test_a_request_does_not_always_cost_a_write(sessions: WebSessions, db: Database) -> None:
    token, _ = sessions.open(PERSON.did, "presentation", PERMS, now_ms=NOW_MS)
    sessions.find(token, now_ms=NOW_MS + TOUCH_EVERY_MS - 1)
    assert db.execute("SELECT seen_ms FROM web_sessions").fetchone()[0] == NOW_MS
    sessions.find(token, now_ms=NOW_MS + TOUCH_EVERY_MS)
    assert db.execute("SELECT seen_ms FROM web_sessions").fetchone()[0] == NOW_MS + TOUCH_EVERY_MS


def test_the_absolute_lifetime_and_a_credential_expiry_end_a_session(
    sessions: WebSessions,
) -> None:
    token, opened = sessions.open(PERSON.did, "presentation", PERMS, now_ms=NOW_MS)
    assert opened.expires_ms == NOW_MS + 12 * 3_600_000
    short, capped = sessions.open(
        PERSON.did, "presentation", PERMS, now_ms=NOW_MS, expires_ms=NOW_MS + 60_000
    )
    assert capped.expires_ms == NOW_MS + 60_000
    assert sessions.find(short, now_ms=NOW_MS + 60_000) is None
    # kept busy, it still ends at the absolute end
    t = NOW_MS
    while t < NOW_MS + 12 * 3_600_000 - 600_000:
        t += 600_000
        assert sessions.find(token, now_ms=t) is not None
    assert sessions.find(token, now_ms=NOW_MS + 12 * 3_600_000) is None


def test_sign_out_and_closing_a_persons_sessions(sessions: WebSessions) -> None:
    a, _ = sessions.open(PERSON.did, "presentation", PERMS, now_ms=NOW_MS)
    b, _ = sessions.open(PERSON.did, "passkey", PERMS, now_ms=NOW_MS)
    other, _ = sessions.open(GATEWAY.did, "presentation", PERMS, now_ms=NOW_MS)
    assert sessions.close(a) and not sessions.close(a)
    assert sessions.find(a, now_ms=NOW_MS) is None
    assert sessions.close_person(PERSON.did) == 1
    assert sessions.find(b, now_ms=NOW_MS) is None
    assert sessions.find(other, now_ms=NOW_MS) is not None


def test_revoking_a_credential_ends_the_sessions_it_is_behind(
    sessions: WebSessions, db: Database
) -> None:
    issuer = CredentialIssuer(
        db, gateway_did=GATEWAY.did, list_url="", validity_seconds=86400, status_valid_seconds=600
    )
    claims = {"household": HOUSEHOLD, "role": "seller"}
    issued = issuer.issue(
        "household",
        PERSON.did,
        claims,
        fmt="sd-jwt",
        signer=GATEWAY,
        now=NOW_MS / 1000,
        random_bytes=os.urandom,
    )
    other = issuer.issue(
        "household",
        PERSON.did,
        claims,
        fmt="sd-jwt",
        signer=GATEWAY,
        now=NOW_MS / 1000,
        random_bytes=os.urandom,
    )
    behind, _ = sessions.open(
        PERSON.did,
        "presentation",
        PERMS,
        now_ms=NOW_MS,
        status_indexes=[issued.record.status_index],
    )
    unrelated, _ = sessions.open(
        PERSON.did,
        "presentation",
        PERMS,
        now_ms=NOW_MS,
        status_indexes=[other.record.status_index],
    )
    swept, _ = sessions.open(
        PERSON.did, "passkey", PERMS, now_ms=NOW_MS, status_indexes=[issued.record.status_index]
    )
    issuer.revoke(issued.record.id, by="operator", reason="moved out", now=NOW_MS / 1000 + 1)
    assert sessions.find(behind, now_ms=NOW_MS + 2000) is None  # at the very next request
    assert sessions.close_revoked() == 1  # the other one behind it, without a request
    assert sessions.close_revoked() == 0  # nothing changed since: nothing searched
    assert sessions.find(swept, now_ms=NOW_MS + 2000) is None
    assert sessions.find(unrelated, now_ms=NOW_MS + 2000) is not None


def test_suspending_a_credential_ends_its_sessions_and_resuming_brings_none_back(
    sessions: WebSessions, db: Database
) -> None:
    issuer = CredentialIssuer(
        db, gateway_did=GATEWAY.did, list_url="", validity_seconds=86400, status_valid_seconds=600
    )
    issued = issuer.issue(
        "household",
        PERSON.did,
        {"household": HOUSEHOLD, "role": "seller"},
        fmt="sd-jwt",
        signer=GATEWAY,
        now=NOW_MS / 1000,
        random_bytes=os.urandom,
    )
    index = [issued.record.status_index]
    behind, _ = sessions.open(
        PERSON.did, "presentation", PERMS, now_ms=NOW_MS, status_indexes=index
    )
    swept, _ = sessions.open(PERSON.did, "passkey", PERMS, now_ms=NOW_MS, status_indexes=index)
    issuer.suspend(issued.record.id, by="operator", reason="lost phone", now=NOW_MS / 1000 + 1)
    assert sessions.find(behind, now_ms=NOW_MS + 2000) is None  # at the very next request
    assert sessions.close_revoked() == 1
    issuer.resume(issued.record.id, by="operator", reason="found", now=NOW_MS / 1000 + 3)
    assert sessions.find(swept, now_ms=NOW_MS + 4000) is None  # ended stays ended
    again, _ = sessions.open(PERSON.did, "presentation", PERMS, now_ms=NOW_MS, status_indexes=index)
    assert sessions.find(again, now_ms=NOW_MS + 4000) is not None


def test_an_unknown_sign_in_method_is_refused(sessions: WebSessions) -> None:
    with pytest.raises(ValueError, match="method"):
        sessions.open(PERSON.did, "password", PERMS, now_ms=NOW_MS)


def test_the_housekeeping_deletes_sessions_past_their_time_only(
    sessions: WebSessions, db: Database
) -> None:
    sessions.open(PERSON.did, "presentation", PERMS, now_ms=NOW_MS)
    sessions.open(PERSON.did, "presentation", PERMS, now_ms=NOW_MS, expires_ms=NOW_MS + 60_000)
    assert sessions.sweep(now_ms=NOW_MS + 60_000) == 1  # past its end
    assert sessions.count() == 1
    assert sessions.sweep(now_ms=NOW_MS + 30 * 60_000) == 1  # idle for 30 minutes
    assert sessions.count() == 0

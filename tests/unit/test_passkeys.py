"""The passkey core: relying party, options asked of the authenticator, single-use
challenges in a bounded pool, and the re-check of the credentials behind a passkey."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Collection
from pathlib import Path

import pytest

from gateway.auth.passkey_store import PasskeyStore
from gateway.auth.passkeys import (
    CHALLENGE_MS,
    Ceremonies,
    Challenges,
    NewPasskey,
    PasskeyRefused,
    Pending,
    RelyingParty,
)
from gateway.credentials.permissions import Permissions
from gateway.db import connect, migrate, write_transaction

DID = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
counter = itertools.count()


def rand(n: int) -> bytes:
    return next(counter).to_bytes(n, "big")


def ceremonies(limit: int = 16) -> Ceremonies:
    rp = RelyingParty.from_url("https://gw.example:8443")
    return Ceremonies(rp, max_pending_logins=limit, random_bytes=rand)


def test_the_relying_party_is_the_base_urls_host_and_origin() -> None:
    rp = RelyingParty.from_url("https://gw.example:8443/")
    assert (rp.rp_id, rp.origin) == ("gw.example", "https://gw.example:8443")
    assert RelyingParty.from_url("http://localhost:8080").rp_id == "localhost"


@pytest.mark.parametrize("url", ["https://192.168.1.5", "http://127.0.0.1:8080", "http://[::1]:80"])
def test_an_ip_address_cannot_be_a_relying_party(url: str) -> None:
    with pytest.raises(ValueError, match="need a host name, not the IP address"):
        RelyingParty.from_url(url)


def test_registration_asks_for_a_discoverable_user_verified_passkey() -> None:
    options = ceremonies().registration_options(DID, "s", ["AAEC"], now_ms=0)
    assert options["rp"] == {"id": "gw.example", "name": "didgw"}
    assert options["authenticatorSelection"]["residentKey"] == "preferred"
    assert options["authenticatorSelection"]["userVerification"] == "preferred"
    assert options["attestation"] == "none"
    assert options["excludeCredentials"][0]["id"] == "AAEC"
    assert DID not in json.dumps(options["user"]["id"])  # a digest, not the DID
    assert options["timeout"] == CHALLENGE_MS


def test_login_names_no_user() -> None:
    options = ceremonies().authentication_options(now_ms=0)
    assert options["rpId"] == "gw.example"
    assert options.get("allowCredentials", []) == []
    assert options["userVerification"] == "preferred"


def test_a_challenge_is_single_use_and_expires() -> None:
    pool = Challenges(4, random_bytes=rand)
    c = pool.new(Pending("login", 1000), now_ms=0)
    assert pool.take(c, "login", now_ms=10).purpose == "login"
    with pytest.raises(PasskeyRefused, match="unknown or was used"):
        pool.take(c, "login", now_ms=10)
    late = pool.new(Pending("login", 1000), now_ms=0)
    with pytest.raises(PasskeyRefused, match="expired"):
        pool.take(late, "login", now_ms=1000)
    other = pool.new(Pending("register", 1000, DID), now_ms=0)
    with pytest.raises(PasskeyRefused, match="unknown"):
        pool.take(other, "login", now_ms=0)  # a registration's challenge signs nobody in


def test_a_full_pool_refuses_rather_than_forgets() -> None:
    c = ceremonies(limit=2)
    first = c.authentication_options(now_ms=0)["challenge"]
    c.authentication_options(now_ms=0)
    with pytest.raises(PasskeyRefused) as refused:
        c.authentication_options(now_ms=1)
    assert refused.value.reason == "busy"
    assert len(c.logins) == 2  # the waiting ones were kept
    body = {"challenge": first, "credential": {"id": "AA", "rawId": "AA"}}
    assert c.login_challenge(body, now_ms=1)[2] == "AA"
    c.authentication_options(now_ms=CHALLENGE_MS + 1)  # expired ones make room


def test_a_registration_answers_only_the_session_that_asked() -> None:
    c = ceremonies()
    options = c.registration_options(DID, "session-a", [], now_ms=0)
    body = {"challenge": options["challenge"], "credential": {"id": "AA"}}
    with pytest.raises(PasskeyRefused, match="not made here"):
        c.verify_registration(body, DID, "session-b", now_ms=1)


@pytest.mark.parametrize(
    "body",
    [[], {"challenge": "AA"}, {"challenge": "AA", "credential": "x"}, {"x": 1, "credential": {}}],
)
def test_malformed_answers_are_refused(body: object) -> None:
    with pytest.raises(PasskeyRefused) as refused:
        ceremonies().login_challenge(body, now_ms=0)
    assert refused.value.reason == "malformed"


def store_with_credentials(
    tmp_path: Path, *rows: tuple[int, int, int | None], suspended: Collection[int] = ()
) -> PasskeyStore:
    db = connect(tmp_path / "didgw.db")
    migrate(db, now=0.0)
    with write_transaction(db.conn):
        for index, expires, revoked in rows:
            db.execute(
                "INSERT INTO credentials (id, type, subject, format, status_index, issued_ms, "
                "expires_ms, revoked_ms, suspended_ms) "
                "VALUES (?, 'household', ?, 'sd-jwt', ?, 0, ?, ?, ?)",
                [f"urn:uuid:{index}", DID, index, expires, revoked,
                 5 if index in suspended else None],
            )  # fmt: skip
    return PasskeyStore(db)


def test_the_credentials_behind_a_passkey_are_rechecked(tmp_path: Path) -> None:
    store = store_with_credentials(
        tmp_path, (1, 5000, None), (2, 9000, None), (3, 9000, 10), (4, 9000, None), suspended={4}
    )
    assert store.credentials_expiry({1, 2}, now_ms=100) == 5000
    for indexes, now, reason in (
        ({1, 3}, 100, "revoked"),
        ({1, 4}, 100, "suspended"),
        ({1}, 5000, "expired"),
        ({1, 99}, 100, "no_credential"),
        (set(), 100, "no_credential"),
    ):
        with pytest.raises(PasskeyRefused) as refused:
            store.credentials_expiry(indexes, now_ms=now)
        assert refused.value.reason == reason


def test_binding_and_removal_are_on_the_record(tmp_path: Path) -> None:
    store = store_with_credentials(tmp_path, (1, 5000, None))
    new = NewPasskey(base64.urlsafe_b64encode(b"id").decode().rstrip("="), b"k", 0, "h")
    passkey = store.bind(
        new, did=DID, name="  my\nphone ", permissions=Permissions(DID), status_indexes={1},
        presentations=["ab" * 32], disclosure=None, now_ms=100,
    )  # fmt: skip
    assert (passkey.name, passkey.expires_ms, passkey.status_indexes) == ("my phone", 5000, {1})
    with pytest.raises(PasskeyRefused, match="already bound"):
        store.bind(
            new, did=DID, name="", permissions=Permissions(DID), status_indexes={1},
            presentations=[], disclosure=None, now_ms=101,
        )  # fmt: skip
    assert store.remove(DID, new.credential_id, reason="by its owner", now_ms=200)
    assert not store.remove(DID, new.credential_id, reason="again", now_ms=201)
    kinds = [e.kind for e in store.chain.entries()]
    assert kinds == ["passkey-bound", "passkey-removed"]

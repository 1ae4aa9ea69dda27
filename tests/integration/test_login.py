"""Signing in with a wallet over OpenID4VP against a real ``didgw run`` (its HTTP edge).

The wallet is firmware-sim/web_wallet.py (it shares no code with the gateway): it follows
the ``openid4vp://`` link of ``/login``, checks the signed request object, presents and
posts to the response URI; the browser is ``requests`` holding the login cookie. Attacks
first: each refused presentation names its reason to the wallet and on the browser's
page, and leaves no session and no session on the record.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import device as dev
import pytest
import requests
import web_wallet as ww
from gateway_process import GatewayProcess
from joserfc.jwk import ECKey
from js_wallet import new_wallet, presented
from people_web import Browser, issue_credential
from support import Run

from gateway.chain.store import ChainStore
from gateway.config import load_config
from gateway.credentials import sd_jwt
from gateway.credentials.kinds import KINDS
from gateway.db import connect
from gateway.identity import Signer
from gateway.identity.keystore import generate_key
from gateway.service import open_gateway

pytestmark = pytest.mark.integration

HOUSEHOLD = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"


class Door:
    """The front door's gateway, its CLI, its record."""

    def __init__(self, process: GatewayProcess, didgw: Run, tmp: Path) -> None:
        self.process, self.didgw, self.tmp = process, didgw, tmp

    def cli(self, *args: str) -> str:
        result = self.didgw(*args, "--state-dir", str(self.process.state))
        assert result.returncode == 0, result.stderr
        return result.stdout + result.stderr

    def holder(self, name: str) -> dev.Identity:
        return dev.Identity.from_key(dev.load_or_create_key(self.tmp / f"{name}.pem"))

    def issue(self, kind: str, subject: str, *claims: str) -> tuple[str, str]:
        """(credential id, SD-JWT text) issued with ``didgw cred issue``."""
        path = self.tmp / f"{secrets.token_hex(4)}.sdjwt"
        return issue_credential(self.didgw, self.process.state, kind, subject, claims, out=path)

    def issue_expired(self, subject: str) -> str:
        gateway = open_gateway(load_config(self.process.config), self.process.state)
        try:
            return (
                gateway.issuer()
                .issue(
                    "facility-manager",
                    subject,
                    {},
                    fmt="sd-jwt",
                    signer=gateway.signer({}),
                    now=time.time() - 2 * 365 * 86400,
                    random_bytes=secrets.token_bytes,
                )
                .text
            )
        finally:
            gateway.close()

    def entries(self, kind: str) -> list[Any]:
        store = ChainStore(connect(self.process.state / "didgw.db"))
        try:
            return [e for e in store.entries() if e.kind == kind]
        finally:
            store.close()


@pytest.fixture
def door(front_door: GatewayProcess, didgw: Run, tmp_path: Path) -> Iterator[Door]:
    yield Door(front_door, didgw, tmp_path)


def forged(subject: dev.Identity) -> str:
    """A facility manager's credential for ``subject`` by an issuer the gateway does not
    trust (its own did:key), naming a status list on a host nobody should contact."""
    issuer = Signer.for_did_key(generate_key())
    now = int(time.time())
    body = {
        "iss": issuer.did,
        "vct": KINDS["facility-manager"].vct,
        "sub": subject.did,
        "cnf": {"jwk": sd_jwt.ed25519_jwk(dev.public_key_from_did(subject.did))},
        "iat": now,
        "exp": now + 3600,
        "status": {"status_list": {"idx": 3, "uri": "https://192.0.2.1/status"}},
    }
    return sd_jwt.issue(body, {}, issuer, random_bytes=secrets.token_bytes)


# -- attacks first -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "attack",
    [
        "wrong_nonce",
        "wrong_audience",
        "tampered_disclosure",
        "bad_key_binding",
        "expired_credential",
        "revoked",
        "suspended",
        "untrusted_issuer",
    ],
)
def test_a_bad_presentation_is_refused_with_its_reason_and_opens_nothing(
    door: Door, attack: str
) -> None:
    bob = door.holder("bob")
    cred_id, credential = door.issue("household", bob.did, f"household={HOUSEHOLD}", "role=seller")
    tamper = ww.Tamper()
    if attack == "wrong_nonce":
        tamper = ww.Tamper(nonce=ww._b64u(secrets.token_bytes(16)))
    elif attack == "wrong_audience":
        tamper = ww.Tamper(aud="decentralized_identifier:did:key:z6MkOther")
    elif attack == "tampered_disclosure":
        tamper = ww.Tamper(disclosure=True)
    elif attack == "bad_key_binding":
        tamper = ww.Tamper(kb_key=generate_key())
    elif attack == "expired_credential":
        credential = door.issue_expired(bob.did)
    elif attack == "revoked":
        door.cli("cred", "revoke", cred_id, "--reason", "lost")
    elif attack == "suspended":
        door.cli("cred", "suspend", cred_id, "--reason", "lost")
    elif attack == "untrusted_issuer":
        credential = forged(bob)
    door.process.start()
    browser = Browser(door.process.url)
    link, request_id = browser.start()
    answer = ww.sign_in(link, [credential], bob, tamper=tamper)
    assert answer.status == 400, answer.body
    assert answer.body["reason"] == attack
    status = browser.get(f"/login/status?id={request_id}").json()
    assert status == {"status": "refused", "reason": attack}
    page = browser.finish(request_id)
    assert page.status_code == 400
    assert attack in page.text  # the page says why
    assert "didgw_session" not in browser.cookies
    assert "signed in as" not in browser.get("/").text
    assert door.entries("person-session") == []
    assert door.entries("disclosure") == []


def test_a_response_is_taken_once_and_a_replay_is_refused(door: Door) -> None:
    bob = door.holder("bob")
    _, credential = door.issue("facility-manager", bob.did)
    door.process.start()
    browser = Browser(door.process.url)
    link, request_id = browser.start()
    request = ww.fetch_request(link)
    form = ww.respond(request, [credential], bob)
    assert ww.post(request, form).status == 200
    replay = ww.post(request, form)
    assert (replay.status, replay.body["reason"]) == (400, "replayed")
    assert browser.get(f"/oid4vp/requests/{request_id}").status_code == 404  # answered
    assert len(door.entries("person-session")) == 1
    # the browser that started it still signs in, once
    assert browser.finish(request_id).status_code == 303
    assert bob.did in browser.get("/").text


def test_unknown_state_malformed_and_oversized_responses_are_refused(door: Door) -> None:
    door.process.start()
    url = door.process.url + "/oid4vp/response"
    unknown = requests.post(url, data={"state": "x" * 22, "vp_token": "{}"}, timeout=10)
    assert unknown.status_code == 400
    assert unknown.json()["reason"] in {"malformed", "unknown_request"}
    token = json.dumps({"facility_manager": ["a~b~c"]})
    unknown = requests.post(url, data={"state": "x" * 22, "vp_token": token}, timeout=10)
    assert (unknown.status_code, unknown.json()["reason"]) == (400, "unknown_request")
    malformed = requests.post(url, data={"vp_token": token}, timeout=10)
    assert (malformed.status_code, malformed.json()["reason"]) == (400, "malformed")
    huge = requests.post(url, data={"state": "s", "vp_token": "x" * 70_000}, timeout=10)
    assert huge.status_code == 413
    junk = requests.post(url, data={"response": "a.b.c.d.e"}, timeout=10)
    assert (junk.status_code, junk.json()["reason"]) == (400, "bad_encryption")
    huge = requests.post(url, data={"response": "x" * 70_000}, timeout=10)
    assert huge.status_code == 413


@pytest.mark.parametrize(
    "attack", ["another_key", "another_enc", "tampered", "wrong_kid", "oversized"]
)
def test_a_bad_envelope_is_refused_and_the_sign_in_still_waits(door: Door, attack: str) -> None:
    """An encrypted response that does not open with the request's key names no state:
    refused (bad_encryption), it consumes nothing and the holder's own answer still works."""
    bob = door.holder("bob")
    _, credential = door.issue("facility-manager", bob.did)
    door.process.start()
    browser = Browser(door.process.url)
    link, request_id = browser.start()
    request = ww.fetch_request(link)
    assert request.claims["response_mode"] == "direct_post.jwt"
    other = {"kty": "EC", "crv": "P-256", "kid": "k"}
    other |= {k: v for k, v in ECKey.generate_key("P-256").as_dict().items() if k in "xy"}
    tamper = {
        "another_key": ww.Tamper(jwe_to=other),
        "another_enc": ww.Tamper(jwe_enc="A192GCM"),
        "tampered": ww.Tamper(jwe_flip=True),
        "wrong_kid": ww.Tamper(jwe_kid=ww._b64u(secrets.token_bytes(16))),
        "oversized": ww.Tamper(jwe_pad=40_000),
    }[attack]
    form = ww.respond(request, [credential], bob, tamper=tamper)
    assert set(form) == {"response"}
    answer = ww.post(request, form)
    assert (answer.status, answer.body["reason"]) == (400, "bad_encryption"), answer.body
    assert answer.body["error"] == "invalid_request"
    assert browser.get(f"/login/status?id={request_id}").json() == {"status": "waiting"}
    assert door.entries("person-session") == []
    assert door.entries("disclosure") == []
    assert ww.post(request, ww.respond(request, [credential], bob)).status == 200
    assert browser.finish(request_id).status_code == 303


def test_a_plain_answer_to_an_encrypted_request_is_refused(door: Door) -> None:
    bob = door.holder("bob")
    _, credential = door.issue("facility-manager", bob.did)
    door.process.start()
    browser = Browser(door.process.url)
    link, request_id = browser.start()
    answer = ww.sign_in(link, [credential], bob, tamper=ww.Tamper(plain=True))
    assert set(answer.form) == {"vp_token", "state"}
    assert (answer.status, answer.body["reason"]) == (400, "not_encrypted")
    assert answer.body["error"] == "invalid_request"
    status = browser.get(f"/login/status?id={request_id}").json()
    assert status == {"status": "refused", "reason": "not_encrypted"}
    page = browser.finish(request_id)
    assert page.status_code == 400
    assert "not_encrypted" in page.text
    assert "didgw_session" not in browser.cookies
    assert door.entries("person-session") == []


def test_response_mode_direct_post_takes_the_answer_in_the_clear(door: Door) -> None:
    with door.process.config.open("a") as f:
        f.write('response_mode = "direct_post"\n')
    bob = door.holder("bob")
    _, credential = door.issue("facility-manager", bob.did)
    door.process.start()
    browser = Browser(door.process.url)
    link, request_id = browser.start()
    request = ww.fetch_request(link)
    assert request.claims["response_mode"] == "direct_post"
    assert "jwks" not in request.claims["client_metadata"]  # no key to encrypt to
    stray = {"kty": "EC", "crv": "P-256", "kid": "k", "use": "enc"}
    stray |= {k: v for k, v in ECKey.generate_key("P-256").as_dict().items() if k in "xy"}
    form = ww.respond(request, [credential], bob)
    assert set(form) == {"vp_token", "state"}
    sealed = ww.encrypt(json.dumps(form).encode(), stray, "A128GCM")
    refused = ww.post(request, {"response": sealed})
    assert (refused.status, refused.body["reason"]) == (400, "bad_encryption")
    assert ww.post(request, form).status == 200
    assert browser.finish(request_id).status_code == 303
    assert bob.did in browser.get("/").text


def test_another_browser_cannot_finish_someone_elses_sign_in(door: Door) -> None:
    bob = door.holder("bob")
    _, credential = door.issue("facility-manager", bob.did)
    door.process.start()
    alice_browser, mallory_browser = Browser(door.process.url), Browser(door.process.url)
    link, request_id = alice_browser.start()
    mallory_browser.start()  # her own login cookie, not this request's
    assert ww.sign_in(link, [credential], bob).status == 200
    assert mallory_browser.get(f"/login/status?id={request_id}").json() == {"status": "expired"}
    assert mallory_browser.finish(request_id).status_code == 200  # "finished elsewhere"
    assert "didgw_session" not in mallory_browser.cookies
    assert alice_browser.finish(request_id).status_code == 303
    assert "didgw_session" in alice_browser.cookies


def test_a_full_pool_of_pending_sign_ins_refuses_a_new_one_with_503(door: Door) -> None:
    with door.process.config.open("a") as f:
        f.write("max_pending_logins = 16\nsource_burst = 100\n")
    door.process.start()
    browser = Browser(door.process.url)
    for _ in range(16):
        browser.start()
    full = browser.get("/login")
    assert full.status_code == 503
    assert "try again" in full.text


# -- signing in ----------------------------------------------------------------------------


def test_a_facility_manager_signs_in_and_the_record_holds_the_session(door: Door) -> None:
    bob = door.holder("bob")
    _, credential = door.issue("facility-manager", bob.did, "name=Bob Builder")
    door.process.start()
    browser = Browser(door.process.url)
    link, request_id = browser.start()
    assert browser.get(f"/login/status?id={request_id}").json() == {"status": "waiting"}
    answer = ww.sign_in(link, [credential], bob)
    assert answer.status == 200
    assert answer.body["redirect_uri"].endswith(f"/login/done?id={request_id}")
    assert browser.get(f"/login/status?id={request_id}").json() == {"status": "done"}
    done = browser.get(f"/login/done?id={request_id}")  # the same-device return
    assert (done.status_code, done.headers["Location"]) == (303, "/")
    assert bob.did in browser.get("/").text
    [disclosure] = door.entries("disclosure")
    [session] = door.entries("person-session")
    assert disclosure.actor == session.actor == bob.did
    claims = json.loads(disclosure.payload)["claims"]
    assert claims == {KINDS["facility-manager"].vct: {}}  # nothing personal: not the name
    assert json.loads(session.payload)["disclosure"] == disclosure.seq


def test_a_household_member_signs_in_disclosing_household_and_role_only(door: Door) -> None:
    alice = door.holder("alice")
    _, credential = door.issue(
        "household", alice.did, f"household={HOUSEHOLD}", "role=seller", "name=Alice"
    )
    door.process.start()
    browser = Browser(door.process.url)
    link, request_id = browser.start()
    assert ww.sign_in(link, [credential], alice).status == 200
    assert browser.finish(request_id).status_code == 303
    assert alice.did in browser.get("/").text
    [disclosure] = door.entries("disclosure")
    claims = json.loads(disclosure.payload)["claims"]
    assert claims == {KINDS["household"].vct: {"household": HOUSEHOLD, "role": "seller"}}


def test_signing_out_needs_the_anti_csrf_token(door: Door) -> None:
    bob = door.holder("bob")
    _, credential = door.issue("facility-manager", bob.did)
    door.process.start()
    browser = Browser(door.process.url)
    link, request_id = browser.start()
    assert ww.sign_in(link, [credential], bob).status == 200
    browser.finish(request_id)
    home = browser.get("/").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', home)[1]  # type: ignore[index]
    refused = browser.post("/logout")
    assert refused.status_code == 403
    assert bob.did in browser.get("/").text  # the session survived
    assert browser.post("/logout", data={"csrf_token": csrf}).status_code == 303
    browser.cookies.pop("didgw_session", None)  # the browser drops it; the server too:
    assert bob.did not in browser.get("/").text


def test_revoking_the_credential_ends_the_session_within_a_second(door: Door) -> None:
    bob = door.holder("bob")
    cred_id, credential = door.issue("facility-manager", bob.did)
    door.process.start()
    browser = Browser(door.process.url)
    link, request_id = browser.start()
    assert ww.sign_in(link, [credential], bob).status == 200
    browser.finish(request_id)
    token = browser.cookies["didgw_session"]
    assert bob.did in browser.get("/").text
    door.cli("cred", "revoke", cred_id, "--reason", "lost")
    answer = browser.get("/")
    assert bob.did not in answer.text  # the next request is anonymous
    browser.cookies["didgw_session"] = token  # and stays so: the row is gone
    assert bob.did not in browser.get("/").text


# -- the independent wallet (OpenWallet Foundation oid4vc-ts, sd-jwt-js, dcql) ------------


@pytest.mark.parametrize(
    ("kind", "curve"), [("household", None), ("facility-manager", None), ("household", "X25519")]
)
def test_the_independent_wallet_signs_in_with_an_encrypted_response(
    door: Door, tmp_path: Path, kind: str, curve: str | None
) -> None:
    key, did = new_wallet(tmp_path, "js-holder")
    claims = [f"household={HOUSEHOLD}", "role=buyer", "name=Carol"] if kind == "household" else []
    _, credential = door.issue(kind, did, *claims)
    door.process.start()
    browser = Browser(door.process.url)
    link, request_id = browser.start()
    (tmp_path / "js.sdjwt").write_text(credential)
    summary = presented(key, [tmp_path / "js.sdjwt"], link, curve=curve)
    assert summary["status"] == 200, summary
    assert summary["response_mode"] == "direct_post.jwt"
    # the library takes the verifier's first key unless told, and its own first enc
    assert summary["encryption"] == {"alg": "ECDH-ES", "enc": "A256GCM", "crv": curve or "P-256"}
    assert summary["body"]["redirect_uri"].endswith(f"/login/done?id={request_id}")
    assert browser.finish(request_id).status_code == 303
    assert did in browser.get("/").text
    [disclosure] = door.entries("disclosure")
    [session] = door.entries("person-session")
    assert disclosure.actor == session.actor == did
    shown = json.loads(disclosure.payload)["claims"][KINDS[kind].vct]
    if kind == "household":
        assert shown == {"household": HOUSEHOLD, "role": "buyer"}  # not the name
    else:
        assert shown == {}


def test_the_independent_wallet_answers_in_the_clear_when_asked_to(
    door: Door, tmp_path: Path
) -> None:
    with door.process.config.open("a") as f:
        f.write('response_mode = "direct_post"\n')
    key, did = new_wallet(tmp_path, "js-holder")
    _, credential = door.issue("facility-manager", did)
    door.process.start()
    browser = Browser(door.process.url)
    link, request_id = browser.start()
    (tmp_path / "js.sdjwt").write_text(credential)
    summary = presented(key, [tmp_path / "js.sdjwt"], link)
    assert (summary["status"], summary["response_mode"]) == (200, "direct_post"), summary
    assert summary["encryption"] is None
    assert browser.finish(request_id).status_code == 303
    assert did in browser.get("/").text


def test_the_independent_wallet_is_refused_a_revoked_credential(door: Door, tmp_path: Path) -> None:
    key, did = new_wallet(tmp_path, "js-holder")
    cred_id, credential = door.issue("facility-manager", did)
    door.cli("cred", "revoke", cred_id, "--reason", "lost")
    door.process.start()
    browser = Browser(door.process.url)
    link, request_id = browser.start()
    (tmp_path / "js.sdjwt").write_text(credential)
    summary = presented(key, [tmp_path / "js.sdjwt"], link)
    assert (summary["status"], summary["body"]["reason"]) == (400, "revoked")
    assert browser.finish(request_id).status_code == 400

"""Suspending a person's credential at a real ``didgw run``: her web sessions end without
another request from her, she cannot sign in while it is suspended (reason ``suspended``),
and after ``didgw cred resume`` she signs in again. The CLI refuses to touch a revoked
credential, and ``cred list`` shows each state.
"""

from __future__ import annotations

import json

import pytest
import requests
import web_wallet as ww
from gateway_process import GatewayProcess
from people_web import COOKIE, Browser, Person
from support import Run, wait_until

from gateway.db import connect

pytestmark = pytest.mark.integration


def sessions_of(front_door: GatewayProcess, did: str) -> int:
    db = connect(front_door.state / "didgw.db")
    try:
        row = db.execute("SELECT count(*) FROM web_sessions WHERE did = ?", [did]).fetchone()
        return int(row[0])
    finally:
        db.close()


def signed_in(front_door: GatewayProcess, cookie: str, did: str) -> bool:
    headers = {"Cookie": f"{COOKIE}={cookie}"}
    return did in requests.get(front_door.url + "/", headers=headers, timeout=10).text


def test_a_suspended_household_is_signed_out_refused_and_signs_in_after_resume(
    didgw: Run, front_door: GatewayProcess, person: Person
) -> None:
    front_door.start()
    token, _ = person.sign_in_http()
    other, _ = person.sign_in_http()  # a second device of hers
    assert signed_in(front_door, token, person.did)
    state = ("--state-dir", str(front_door.state))
    suspended = didgw("cred", "suspend", person.credential_id, "--reason", "phone lost", *state)
    assert suspended.returncode == 0, suspended.stderr
    # the sweeper ends both without a request from her (it runs every half second)
    wait_until(lambda: sessions_of(front_door, person.did) == 0, "her sessions to end")
    assert not signed_in(front_door, token, person.did)
    assert not signed_in(front_door, other, person.did)
    browser = Browser(front_door.url)
    link, request_id = browser.start()
    answer = ww.sign_in(link, [person.credential], person.identity)
    assert (answer.status, answer.body["reason"]) == (400, "suspended")
    assert browser.get(f"/login/status?id={request_id}").json() == {
        "status": "refused",
        "reason": "suspended",
    }
    refused_page = browser.finish(request_id)
    assert refused_page.status_code == 400 and "suspended" in refused_page.text
    assert COOKIE not in browser.cookies
    resumed = didgw("cred", "resume", person.credential_id, "--reason", "found it", *state)
    assert resumed.returncode == 0, resumed.stderr
    assert not signed_in(front_door, token, person.did)  # ended sessions stay ended
    assert not signed_in(front_door, other, person.did)
    again, _ = person.sign_in_http()
    assert signed_in(front_door, again, person.did)


def test_the_cli_shows_the_state_and_refuses_what_the_state_forbids(
    didgw: Run, front_door: GatewayProcess, person: Person
) -> None:
    state = ("--state-dir", str(front_door.state))

    def listed() -> dict[str, object]:
        out = didgw("cred", "list", "--json", *state)
        assert out.returncode == 0, out.stderr
        [record] = json.loads(out.stdout)
        return dict(record)

    assert listed()["suspended"] is False
    cred = person.credential_id
    resume = didgw("cred", "resume", cred, "--reason", "r", *state)
    assert resume.returncode != 0 and "not suspended" in resume.stderr
    assert didgw("cred", "suspend", cred, "--reason", "r", "--by", "fm:ann", *state).returncode == 0
    record = listed()
    assert (record["suspended"], record["suspended_by"], record["suspend_reason"]) == (
        True,
        "fm:ann",
        "r",
    )
    text = didgw("cred", "list", *state).stdout
    assert f"{cred}" in text and "suspended " in text
    again = didgw("cred", "suspend", cred, "--reason", "r", *state)
    assert again.returncode != 0 and "already suspended" in again.stderr
    no_reason = didgw("cred", "suspend", cred, *state)
    assert no_reason.returncode != 0 and "--reason" in no_reason.stderr
    assert didgw("cred", "revoke", cred, "--reason", "moved out", *state).returncode == 0
    for verb in ("suspend", "resume"):
        refused = didgw("cred", verb, cred, "--reason", "r", *state)
        assert refused.returncode != 0 and "revoked, which is permanent" in refused.stderr
    record = listed()
    assert (record["revoked"], record["suspended"]) == (True, False)
    assert "revoked " in didgw("cred", "list", *state).stdout

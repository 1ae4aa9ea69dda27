"""A person's own data and the receipts of her readings at the front door, end to end: the
real ``didgw run``, people signed in with their wallets, the operator's real commands.

Not covered here: a receipt of an anchored reading (that needs the ledger; the anchoring
tests check ``didgw receipt`` itself). These tests check who gets a receipt and the answer
before the reading is anchored."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests
from energy_web import household_member, one_reading
from gateway_process import GatewayProcess
from people_web import COOKIE, Person
from support import Run

pytestmark = pytest.mark.integration


def get(front_door: GatewayProcess, path: str, token: str | None) -> requests.Response:
    headers = {"Cookie": f"{COOKIE}={token}"} if token else {}
    return requests.get(front_door.url + path, headers=headers, timeout=10, allow_redirects=False)


def post(
    front_door: GatewayProcess, path: str, token: str, csrf: str, *, form: bool = False
) -> requests.Response:
    headers = {"Cookie": f"{COOKIE}={token}", "Origin": front_door.url}
    if form:
        return requests.post(
            front_door.url + path,
            data={"csrf_token": csrf},
            headers=headers,
            timeout=10,
            allow_redirects=False,
        )
    headers["X-CSRF-Token"] = csrf
    return requests.post(front_door.url + path, headers=headers, timeout=10, allow_redirects=False)


def test_strangers_tokens_and_others_get_nothing(
    didgw: Run, front_door: GatewayProcess, tmp_path: Path
) -> None:
    alice, _, meter = household_member(didgw, front_door, "alice", tmp_path / "ttyA")
    bob, _, bob_meter = household_member(didgw, front_door, "bob", tmp_path / "ttyB")
    mine, bobs = one_reading(front_door.state, meter), one_reading(front_door.state, bob_meter)
    front_door.start()
    for path in ("/api/my-data", f"/api/receipts/{mine}"):
        answer = get(front_door, path, None)
        assert (answer.status_code, answer.json()["error"]) == (401, "unauthenticated"), path
    stranger = requests.post(front_door.url + "/api/my-data/erasure", timeout=10)
    assert stranger.status_code in (401, 403), stranger.text
    for path in ("/my-data", "/proof/receipt/1"):
        answer = get(front_door, path, None)
        assert (answer.status_code, answer.headers["Location"]) == (303, "/login"), path
    assert get(front_door, "/my-data/download", None).status_code == 401
    assert get(front_door, "/proof", None).status_code == 200  # the explanation is public
    made = didgw(
        "api-token", "create", "t-reader", "--role", "reader",
        "--state-dir", str(front_door.state), "--config", str(front_door.config),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    as_token = requests.get(
        front_door.url + "/api/my-data",
        headers={"Authorization": f"Bearer {made.stdout.strip()}"},
        timeout=10,
    )
    assert as_token.status_code == 403, as_token.text

    token, _ = alice.sign_in_http()
    bob_token, bob_csrf = bob.sign_in_http()
    data = get(front_door, "/api/my-data", token).json()
    assert data["did"] == alice.did and bob.did not in json.dumps(data)
    assert {e["kind"] for e in data["record"]} >= {"disclosure", "person-session"}
    assert all(set(s) >= {"method", "created"} for s in data["sessions"])
    assert "token" not in json.dumps(data["sessions"]) and "csrf" not in json.dumps(data)
    assert [c["kind"] for c in data["credentials"]] == ["household"]
    assert data["erasure"] is None
    # her meter's reading: not anchored yet, said so; bob's, and nonsense: as if not there
    pending = get(front_door, f"/api/receipts/{mine}", token)
    assert pending.status_code == 409 and "not anchored yet" in pending.json()["detail"]
    page = get(front_door, f"/proof/receipt/{mine}", token)
    assert page.status_code == 409 and "not anchored on the ledger yet" in page.text
    for seq in (bobs, 0, 10**6, "x", "9" * 30):
        answer = get(front_door, f"/api/receipts/{seq}", token)
        assert answer.status_code == 404, (seq, answer.text)
    assert get(front_door, f"/proof/receipt/{bobs}", token).status_code == 404
    assert get(front_door, f"/api/receipts/{bobs}", bob_token).status_code == 409
    # bob asks for erasure over the API: recorded once; alice's data does not change
    first = post(front_door, "/api/my-data/erasure", bob_token, bob_csrf)
    assert first.status_code == 201 and first.json()["state"] == "pending"
    assert post(front_door, "/api/my-data/erasure", bob_token, bob_csrf).json() == first.json()
    assert get(front_door, "/api/my-data", token).json()["erasure"] is None
    assert get(front_door, "/api/my-data", bob_token).json()["erasure"] == first.json()
    energy = get(front_door, "/energy", token)
    assert f'href="/proof/receipt/{mine}"' in energy.text and 'href="/proof"' in energy.text


def test_an_erasure_from_the_page_to_the_operators_one_command(
    didgw: Run, front_door: GatewayProcess, person: Person
) -> None:
    front_door.start()
    on = ("--state-dir", str(front_door.state))
    token, csrf = person.sign_in_http()
    page = get(front_door, "/my-data", token)
    assert page.status_code == 200 and "Ask for erasure" in page.text
    download = get(front_door, "/my-data/download", token)
    assert "attachment" in download.headers["Content-Disposition"]
    disclosures = [e["seq"] for e in download.json()["record"] if e["kind"] == "disclosure"]
    assert disclosures and all(
        e["payload"] is not None for e in download.json()["record"] if e["seq"] in disclosures
    )
    # a form post without the CSRF token is refused and records nothing
    bare = requests.post(
        front_door.url + "/my-data/erasure",
        headers={"Cookie": f"{COOKIE}={token}", "Origin": front_door.url},
        timeout=10,
        allow_redirects=False,
    )
    assert bare.status_code == 403
    assert "no erasure request" in didgw("chain", "erasure-requests", *on).stdout
    # asked on the page, then again (the API): one request, not two
    asked = post(front_door, "/my-data/erasure", token, csrf, form=True)
    assert (asked.status_code, asked.headers["Location"]) == (303, "/my-data")
    again = post(front_door, "/api/my-data/erasure", token, csrf)
    assert again.status_code == 200 and again.json()["state"] == "pending"
    for _ in range(5):
        assert post(front_door, "/api/my-data/erasure", token, csrf).json() == again.json()
    assert "has not carried it out yet" in get(front_door, "/my-data", token).text
    listed = didgw("chain", "erasure-requests", "--json", *on)
    assert listed.returncode == 0, listed.stderr
    assert [(r["seq"], r["did"]) for r in json.loads(listed.stdout)] == [
        (again.json()["request"], person.did)
    ]
    # the operator's one command
    erased = didgw("chain", "erase", "--actor", person.did, *on)
    assert erased.returncode == 0, erased.stderr
    assert re.search(r"erased the payloads of \d+ entries", erased.stdout)
    assert "ended 1 sessions" in erased.stdout
    verified = didgw("chain", "verify", *on)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "erased" in verified.stdout
    for seq in disclosures:
        shown = didgw("chain", "show", str(seq), *on)
        assert shown.returncode == 0 and json.loads(shown.stdout)["erased"] is True
    assert "no erasure request" in didgw("chain", "erasure-requests", *on).stdout
    # she was signed out; signed in again, the page says it is done
    assert get(front_door, "/api/my-data", token).status_code == 401
    token, _ = person.sign_in_http()
    assert "was carried out" in get(front_door, "/my-data", token).text
    data = get(front_door, "/api/my-data", token).json()
    assert data["erasure"]["state"] == "done"
    old = [e for e in data["record"] if e["seq"] <= data["erasure"]["request"]]
    assert old and all(e["erased"] and e["payload"] is None for e in old)
    # a second erasure of the same DID erases what came since, and still verifies
    assert didgw("chain", "erase", "--actor", person.did, *on).returncode == 0
    assert didgw("chain", "verify", *on).returncode == 0


def test_erase_refuses_a_bad_call(didgw: Run, front_door: GatewayProcess) -> None:
    on = ("--state-dir", str(front_door.state))
    both = didgw("chain", "erase", "3", "--actor", "did:key:z6Mkx", "--reason", "r", *on)
    assert both.returncode == 2 and "either" in both.stderr
    neither = didgw("chain", "erase", *on)
    assert neither.returncode == 2
    no_reason = didgw("chain", "erase", "0", *on)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    bad = didgw("chain", "erase", "--actor", "not-a-did", *on)
    assert bad.returncode != 0 and "did" in bad.stderr.lower()

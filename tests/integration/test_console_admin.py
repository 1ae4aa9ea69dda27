"""The facility manager's People, Record and Health pages at a real ``didgw run``: who
gets in, what bad requests get, and a credential suspended and revoked through a
confirmation that lands on the record with who did it."""

from __future__ import annotations

import html
import json
import re
import sqlite3

import pytest
import requests
from gateway_process import GatewayProcess
from people_web import COOKIE, Person
from support import Run

pytestmark = pytest.mark.integration

PAGES = ("/console/people", "/console/record", "/console/record/0",
         "/console/record/0/proof.json", "/console/health",
         "/console/anchors/1/checkpoint.txt", "/console/anchors/1/consistency.json")  # fmt: skip


def get(door: GatewayProcess, path: str, cookie: str | None = None) -> requests.Response:
    headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie else {}
    return requests.get(door.url + path, headers=headers, timeout=10, allow_redirects=False)


def post(door: GatewayProcess, path: str, cookie: str, **form: str) -> requests.Response:
    return requests.post(
        door.url + path, data=form, headers={"Cookie": f"{COOKIE}={cookie}"}, timeout=10,
        allow_redirects=False,
    )  # fmt: skip


def credential_ids(page: requests.Response) -> list[str]:
    return re.findall(r'href="/console/people/([^/"]+)/revoke"', page.text)


def credential_entries(door: GatewayProcess) -> list[tuple[str, dict[str, object]]]:
    conn = sqlite3.connect(door.state / "didgw.db")
    try:
        rows = conn.execute(
            "SELECT kind, payload FROM chain_entries WHERE kind LIKE 'credential%' ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()
    return [(kind, json.loads(payload)) for kind, payload in rows if payload]


# -- attacks first -------------------------------------------------------------------------


def test_only_a_signed_in_facility_manager_gets_in(didgw: Run, front_door: GatewayProcess) -> None:
    member = Person.issued(didgw, front_door, "household", "hanna")
    front_door.start()
    cookie, csrf = member.sign_in_http()
    for path in PAGES:
        anonymous = get(front_door, path)
        assert anonymous.status_code == 403 and 'href="/login"' in anonymous.text, path
        household = get(front_door, path, cookie)
        assert household.status_code == 403, path
        assert "did:key" not in household.text.split("<main>")[1], path
    assert get(front_door, "/console/people", "forged").status_code == 403
    before = credential_entries(front_door)
    done = post(front_door, "/console/people/any/revoke", cookie, csrf_token=csrf, reason="x")
    assert done.status_code == 403
    for path in ("/api/credentials", "/api/chain/entries", "/api/status", "/api/anchors"):
        refused = requests.get(front_door.url + path, cookies={COOKIE: cookie}, timeout=10)
        assert refused.status_code == 403, path
    assert credential_entries(front_door) == before


def test_bad_parameters_and_a_change_without_csrf_or_reason(
    didgw: Run, front_door: GatewayProcess
) -> None:
    manager = Person.issued(didgw, front_door, "facility-manager", "frank")
    Person.issued(didgw, front_door, "household", "hanna")
    front_door.start()
    cookie, csrf = manager.sign_in_http()
    for query in ("kind=" + "x" * 65, "kind=%3Cscript%3E", "before=-1", "before=abc",
                  "before=" + "9" * 19):  # fmt: skip
        assert get(front_door, "/console/record?" + query, cookie).status_code == 400, query
    for path in ("/console/record/99999", "/console/record/x", "/console/record/99999/proof.json"):
        assert get(front_door, path, cookie).status_code == 404, path
    people = get(front_door, "/console/people", cookie)
    ids = credential_ids(people)
    assert len(ids) == 2
    target = ids[0]
    before = credential_entries(front_door)
    path = f"/console/people/{target}/suspend"
    assert post(front_door, path, cookie, reason="r").status_code == 403  # no CSRF token
    assert post(front_door, path, cookie, csrf_token=csrf[:-1] + "x", reason="r").status_code == 403
    empty = post(front_door, path, cookie, csrf_token=csrf, reason="  ")
    assert empty.status_code == 400 and "Give a reason" in empty.text
    assert post(front_door, path, cookie, csrf_token=csrf, reason="r" * 513).status_code == 400
    wrong = f"/console/people/{target}/delete"
    assert post(front_door, wrong, cookie, csrf_token=csrf, reason="r").status_code == 404
    unknown = post(front_door, "/console/people/nope/suspend", cookie, csrf_token=csrf, reason="r")
    assert unknown.status_code in (404, 409)
    resume = post(front_door, f"/console/people/{target}/resume", cookie, csrf_token=csrf,
                  reason="r")  # fmt: skip
    assert resume.status_code == 409 and "Not done" in resume.text
    assert credential_entries(front_door) == before


# -- what a facility manager does ----------------------------------------------------------


def test_suspend_then_revoke_a_credential_on_the_record_with_who(
    didgw: Run, front_door: GatewayProcess
) -> None:
    manager = Person.issued(didgw, front_door, "facility-manager", "frank")
    member = Person.issued(didgw, front_door, "household", "hanna")
    front_door.start()
    cookie, csrf = manager.sign_in_http()
    people = get(front_door, "/console/people", cookie)
    assert people.status_code == 200
    assert member.did in people.text and manager.did in people.text
    assert "hanna" not in people.text.split("<main>")[1]  # no claims shown
    row = re.search(
        r'<code class="did small">' + re.escape(member.did) + r"</code>.*?/console/people/"
        r'([^/"]+)/revoke', people.text, re.S,
    )  # fmt: skip
    assert row is not None
    target = row[1]
    confirm = get(front_door, f"/console/people/{target}/suspend", cookie)
    assert confirm.status_code == 200 and "Suspend this credential?" in confirm.text
    done = post(front_door, f"/console/people/{target}/suspend", cookie, csrf_token=csrf,
                reason="lost phone")  # fmt: skip
    assert done.status_code == 303 and done.headers["Location"].endswith("done=suspend")
    listed = requests.get(front_door.url + "/api/credentials", cookies={COOKIE: cookie},
                          timeout=10).json()["credentials"]  # fmt: skip
    [record] = [c for c in listed if c["id"] == target]
    assert record["suspended"] and record["suspended_by"] == manager.did
    assert record["suspend_reason"] == "lost phone"
    done = post(front_door, f"/console/people/{target}/revoke", cookie, csrf_token=csrf,
                reason="moved out")  # fmt: skip
    assert done.status_code == 303
    after = get(front_door, "/console/people", cookie)
    assert target not in credential_ids(after)  # revoked: no more changes offered
    entries = [e for _, e in credential_entries(front_door) if e.get("id") == target]
    assert any(manager.did in json.dumps(e) and "moved out" in json.dumps(e) for e in entries)


def test_the_record_newest_first_by_kind_with_a_proof_and_the_health_page(
    didgw: Run, front_door: GatewayProcess
) -> None:
    manager = Person.issued(didgw, front_door, "facility-manager", "frank")
    front_door.start()
    cookie, _ = manager.sign_in_http()
    page = get(front_door, "/console/record", cookie)
    assert page.status_code == 200
    seqs = [int(s) for s in re.findall(r'<a href="/console/record/(\d+)">', page.text)]
    assert seqs and seqs == sorted(seqs, reverse=True)
    kinds = re.findall(r'<option value="([^"]+)"', page.text.split('name="kind"')[1])
    assert kinds
    only = get(front_door, "/console/record?kind=" + kinds[0], cookie)
    shown = re.findall(r'<td data-label="Kind">([^<]+)</td>', only.text)
    assert shown and set(shown) == {kinds[0]}
    entry = get(front_door, f"/console/record/{seqs[-1]}", cookie)
    assert entry.status_code == 200 and "Download the inclusion proof" in entry.text
    proof = get(front_door, f"/console/record/{seqs[-1]}/proof.json", cookie)
    assert proof.status_code == 200
    assert "attachment" in proof.headers["Content-Disposition"]
    body = proof.json()
    assert body["entry"]["seq"] == seqs[-1]
    assert body["inclusion"]["leaf_index"] == seqs[-1]
    assert body["inclusion"]["tree_size"] >= seqs[0] + 1
    api = requests.get(front_door.url + f"/api/chain/entries/{seqs[-1]}/proof",
                       cookies={COOKIE: cookie}, timeout=10)  # fmt: skip
    assert api.status_code == 200 and api.json()["root"] == body["inclusion"]["root"]
    health = get(front_door, "/console/health", cookie)
    assert health.status_code == 200
    status = requests.get(front_door.url + "/api/status", cookies={COOKIE: cookie}, timeout=10)
    assert status.status_code == 200
    assert status.json()["gateway"] in html.unescape(health.text)
    assert f"<dd>{status.json()['record_entries']}</dd>" in health.text


# -- offers ----------------------------------------------------------------------------------


def test_an_offer_needs_a_manager_csrf_an_offerable_kind_and_good_claims(
    didgw: Run, front_door: GatewayProcess
) -> None:
    manager = Person.issued(didgw, front_door, "facility-manager", "frank")
    member = Person.issued(didgw, front_door, "household", "hanna")
    front_door.start()
    member_cookie, member_csrf = member.sign_in_http()
    claims = f"device={manager.did}"
    good = {"kind": "device-owner", "claims": claims, "expires": "1h"}
    refused = post(front_door, "/console/people/offer", member_cookie, csrf_token=member_csrf,
                   **good)  # fmt: skip
    assert refused.status_code == 403 and "PIN" not in refused.text
    cookie, csrf = manager.sign_in_http()
    assert post(front_door, "/console/people/offer", cookie, **good).status_code == 403
    for form, why in (
        ({**good, "kind": "facility-manager", "claims": "name=Eve"}, "a kind and a lifetime"),
        ({**good, "kind": "vouch"}, "a kind and a lifetime"),
        ({**good, "expires": "10y"}, "a kind and a lifetime"),
        ({**good, "claims": "device"}, "key=value"),
        ({**good, "claims": "device=not-a-did"}, "device"),
        ({**good, "claims": claims + "\nname=x"}, "unknown"),
        ({**good, "claims": claims + "\n" + claims}, "twice"),
        ({**good, "claims": "\n".join(f"k{i}=v" for i in range(9))}, "at most 8"),
        ({**good, "claims": "device=" + "x" * 3000}, "at most 2048"),
    ):
        answer = post(front_door, "/console/people/offer", cookie, csrf_token=csrf, **form)
        assert answer.status_code == 400, form
        assert why in html.unescape(answer.text), (form, answer.text[-2000:])
        assert 'id="offer-pin"' not in answer.text
    made = post(front_door, "/console/people/offer", cookie, csrf_token=csrf, **good)
    assert made.status_code == 200 and 'id="offer-pin"' in made.text
    assert made.headers["Cache-Control"] == "no-store"


def test_anchor_downloads_refuse_what_is_not_an_anchor(
    didgw: Run, front_door: GatewayProcess
) -> None:
    """A checkpoint or a consistency proof of a size that is no anchor, or not a number, is
    404 (no anchors here: anchoring is off); the anchors' JSON bounds its limit."""
    manager = Person.issued(didgw, front_door, "facility-manager", "frank")
    front_door.start()
    cookie, _ = manager.sign_in_http()
    for size in ("1", "0", "abc", "-1", "9" * 19, "1%2F..%2F..", "%00"):
        for what in ("checkpoint.txt", "consistency.json"):
            answer = get(front_door, f"/console/anchors/{size}/{what}", cookie)
            assert answer.status_code == 404, (size, what, answer.text[:200])
    made = didgw(
        "api-token", "create", "reader", "--role", "reader",
        "--state-dir", str(front_door.state), "--config", str(front_door.config),
    )  # fmt: skip
    bearer = {"Authorization": f"Bearer {made.stdout.strip()}"}
    ok = requests.get(front_door.url + "/api/anchors", headers=bearer, timeout=10)
    assert ok.status_code == 200 and ok.json() == {"anchors": []}
    for limit in ("0", "501", "x", "9" * 30):
        bad = requests.get(
            f"{front_door.url}/api/anchors?limit={limit}", headers=bearer, timeout=10
        )
        assert bad.status_code == 400, (limit, bad.text)
    assert requests.get(front_door.url + "/api/anchors", timeout=10).status_code == 401

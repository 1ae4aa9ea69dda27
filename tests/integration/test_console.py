"""The facility manager's console at a real ``didgw run``: who gets in, what a bad request
gets, the table's search, filters, sorts and pages, and changes made through a
confirmation that land on the record with who made them."""

from __future__ import annotations

import html
import json
import re
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
import requests
from gateway_process import GatewayProcess
from people_web import COOKIE, Person
from support import Run

from gateway.config import load_config
from gateway.identity.did_key import did_from_public_key
from gateway.identity.keystore import generate_key, public_bytes
from gateway.service import open_gateway

pytestmark = pytest.mark.integration


def new_did() -> str:
    return did_from_public_key(public_bytes(generate_key()))


def register_many(door: GatewayProcess, count: int) -> list[str]:
    """``count`` devices registered through the library before the gateway runs."""
    dids = []
    with open_gateway(load_config(door.config), door.state) as opened:
        for i in range(count):
            did = new_did()
            opened.registry.register(
                did, name=f"pump {i:03d}", kind=("meter", "sensor")[i % 2], actor="setup",
                now=1_800_000_000.0 + i, metadata={"site": "north" if i % 4 == 0 else "south"},
            )  # fmt: skip
            dids.append(did)
    return dids


def person_actions(state: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(state / "didgw.db")
    try:
        rows = conn.execute(
            "SELECT a.did, e.payload FROM chain_entries e JOIN chain_actors a ON a.id = e.actor "
            "WHERE e.kind = 'person-action' ORDER BY e.seq"
        ).fetchall()
    finally:
        conn.close()
    return [{"actor": actor, **json.loads(payload)} for actor, payload in rows]


def get(door: GatewayProcess, path: str, cookie: str | None = None) -> requests.Response:
    headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie else {}
    return requests.get(door.url + path, headers=headers, timeout=10, allow_redirects=False)


def post(door: GatewayProcess, path: str, cookie: str, **form: str) -> requests.Response:
    return requests.post(
        door.url + path, data=form, headers={"Cookie": f"{COOKIE}={cookie}"}, timeout=10,
        allow_redirects=False,
    )  # fmt: skip


def names(page: requests.Response) -> list[str]:
    return re.findall(r'<th scope="row"><a href="[^"]+">([^<]+)</a>', page.text)


def next_link(page: requests.Response) -> str | None:
    found = re.search(r'href="([^"]+)" rel="next"', page.text)
    return html.unescape(found[1]) if found else None


# -- attacks first -------------------------------------------------------------------------


def test_only_a_signed_in_facility_manager_gets_in_and_others_are_told_why(
    didgw: Run, front_door: GatewayProcess
) -> None:
    [did] = register_many(front_door, 1)
    member = Person.issued(didgw, front_door, "household", "hanna")
    front_door.start()
    member_cookie, member_csrf = member.sign_in_http()
    paths = ["/console/devices", f"/console/devices/{quote(did, safe='')}",
             f"/console/devices/{quote(did, safe='')}/suspend"]  # fmt: skip
    for path in paths:
        anonymous = get(front_door, path)
        assert anonymous.status_code == 403 and 'href="/login"' in anonymous.text, path
        household = get(front_door, path, member_cookie)
        assert household.status_code == 403, path
        assert "not a facility manager" in household.text
        assert "pump 000" not in anonymous.text + household.text
    forged = get(front_door, "/console/devices", "forged-session-value")
    assert forged.status_code == 403
    done = post(
        front_door, f"/console/devices/{quote(did, safe='')}/suspend", member_cookie,
        csrf_token=member_csrf, reason="mine now",
    )  # fmt: skip
    assert done.status_code == 403
    assert person_actions(front_door.state) == []


def test_a_change_needs_the_csrf_token_a_reason_and_a_known_device(
    didgw: Run, front_door: GatewayProcess
) -> None:
    [did] = register_many(front_door, 1)
    manager = Person.issued(didgw, front_door, "facility-manager", "frank")
    front_door.start()
    cookie, csrf = manager.sign_in_http()
    path = f"/console/devices/{quote(did, safe='')}"
    assert post(front_door, path + "/suspend", cookie, reason="r").status_code == 403
    wrong = post(front_door, path + "/suspend", cookie, csrf_token=csrf[:-1] + "x", reason="r")
    assert wrong.status_code == 403
    empty = post(front_door, path + "/suspend", cookie, csrf_token=csrf, reason="  ")
    assert empty.status_code == 400 and "Give a reason" in empty.text
    long = post(front_door, path + "/suspend", cookie, csrf_token=csrf, reason="r" * 513)
    assert long.status_code == 400
    rotate = post(front_door, path + "/rotate", cookie, csrf_token=csrf, reason="new key")
    assert rotate.status_code == 400  # no new DID
    bad_new = post(
        front_door, path + "/rotate", cookie, csrf_token=csrf, reason="k", new_did="not-a-did"
    )
    assert bad_new.status_code == 409 and "Not done" in bad_new.text
    deleted = post(front_door, path + "/delete", cookie, csrf_token=csrf, reason="r")
    assert deleted.status_code == 404
    assert get(front_door, path + "/delete", cookie).status_code == 404
    resume = post(front_door, path + "/resume", cookie, csrf_token=csrf, reason="r")
    assert resume.status_code == 409 and "already active" in resume.text
    unknown = quote(new_did(), safe="")
    for answer in (
        get(front_door, f"/console/devices/{unknown}", cookie),
        get(front_door, "/console/devices/garbage%00%ff", cookie),
        post(front_door, f"/console/devices/{unknown}/suspend", cookie, csrf_token=csrf,
             reason="r"),
    ):  # fmt: skip
        assert answer.status_code in (404, 409), answer.text
    assert person_actions(front_door.state) == []
    assert "active" in get(front_door, path, cookie).text


def test_bad_table_parameters_get_a_page_that_says_why(
    didgw: Run, front_door: GatewayProcess
) -> None:
    manager = Person.issued(didgw, front_door, "facility-manager", "frank")
    front_door.start()
    cookie, _ = manager.sign_in_http()
    for query, why in (
        ("status=gone", "status must be"),
        ("kind=toaster", "kind must be"),
        ("sort=price", "sort must be"),
        ("meta=nokey", "key=value"),
        ("meta=" + quote('a"b=1'), "key=value"),
        ("q=" + "x" * 129, "at most 128"),
        ("after=" + "A" * 30, "cursor"),
        ("after=" + "W10", "cursor"),  # "[]"
    ):
        page = get(front_door, "/console/devices?" + query, cookie)
        assert page.status_code == 400, query
        assert why in html.unescape(page.text), (query, page.text)
        api = requests.get(
            front_door.url + "/api/devices?" + query, headers={"Cookie": f"{COOKIE}={cookie}"},
            timeout=10,
        )  # fmt: skip
        assert api.status_code == 400 and api.json()["error"] == "bad_parameter", query


# -- what a facility manager does ----------------------------------------------------------


def test_search_filter_sort_and_page_through_the_table_and_its_json(
    didgw: Run, front_door: GatewayProcess
) -> None:
    dids = register_many(front_door, 120)
    manager = Person.issued(didgw, front_door, "facility-manager", "frank")
    front_door.start()
    cookie, _ = manager.sign_in_http()
    first = get(front_door, "/console/devices", cookie)
    assert first.status_code == 200
    assert names(first) == [f"pump {i:03d}" for i in range(50)]
    shown: list[str] = []
    page: requests.Response | None = first
    while page is not None:
        shown += names(page)
        link = next_link(page)
        page = get(front_door, link, cookie) if link else None
    assert shown == [f"pump {i:03d}" for i in range(120)]
    search = get(front_door, "/console/devices?q=pump+11", cookie)
    assert names(search) == [f"pump {i}" for i in range(110, 120)]
    by_did = get(front_door, "/console/devices?q=" + quote(dids[7][-12:]), cookie)
    assert names(by_did) == ["pump 007"]
    north = get(front_door, "/console/devices?kind=meter&meta=site%3Dnorth&sort=name", cookie)
    assert names(north) == [f"pump {i:03d}" for i in range(0, 120, 4)][:50]
    assert "never" in north.text and ">0</td>" in north.text  # no readings yet
    suspended = get(front_door, "/console/devices?status=suspended", cookie)
    assert names(suspended) == [] and "No device matches." in suspended.text
    jar = {"Cookie": f"{COOKIE}={cookie}"}
    api = requests.get(
        front_door.url + "/api/devices?kind=sensor&sort=name&limit=5", headers=jar, timeout=10
    ).json()
    assert [d["name"] for d in api["devices"]] == [f"pump {i:03d}" for i in range(1, 10, 2)]
    assert api["devices"][0]["last_seen"] is None and api["devices"][0]["readings_today"] == 0
    more = requests.get(
        front_door.url + f"/api/devices?kind=sensor&sort=name&limit=5&after={api['next']}",
        headers=jar, timeout=10,
    ).json()  # fmt: skip
    assert more["devices"][0]["name"] == "pump 011"
    mixed = requests.get(
        front_door.url + f"/api/devices?sort=registered&after={api['next']}", headers=jar,
        timeout=10,
    )  # fmt: skip
    assert mixed.status_code == 400  # a cursor of another order


def test_suspend_resume_and_rotate_through_confirmations_are_on_the_record(
    didgw: Run, front_door: GatewayProcess
) -> None:
    dids = register_many(front_door, 2)
    manager = Person.issued(didgw, front_door, "facility-manager", "frank")
    front_door.start()
    cookie, csrf = manager.sign_in_http()
    path = f"/console/devices/{quote(dids[0], safe='')}"
    device = get(front_door, path, cookie)
    assert device.status_code == 200 and dids[0] in device.text
    assert f'href="{path}/suspend"' in device.text and f'href="{path}/resume"' not in device.text
    confirm = get(front_door, path + "/suspend", cookie)
    assert confirm.status_code == 200 and "Suspend this device?" in confirm.text
    assert f'name="csrf_token" value="{csrf}"' in confirm.text
    assert person_actions(front_door.state) == []  # asking is not doing
    done = post(front_door, path + "/suspend", cookie, csrf_token=csrf, reason="stolen")
    assert done.status_code == 303
    assert unquote(done.headers["Location"]) == unquote(path) + "?done=suspend"
    after = get(front_door, done.headers["Location"], cookie)
    assert "The device is suspended." in after.text
    assert re.search(r'id="device-status">suspended<', after.text)
    assert "stolen" in after.text and manager.did in after.text  # the history: who and why
    [action] = person_actions(front_door.state)
    assert (action["actor"], action["action"], action["device"]) == (
        manager.did, "suspend", dids[0],
    )  # fmt: skip
    assert action["presentations"]  # the digests of her sign-in's presentation
    listed = get(front_door, "/console/devices?status=suspended", cookie)
    assert names(listed) == ["pump 000"]
    post(front_door, path + "/resume", cookie, csrf_token=csrf, reason="found")
    new = new_did()
    rotated = post(
        front_door, path + "/rotate", cookie, csrf_token=csrf, reason="new key", new_did=new
    )
    assert rotated.status_code == 303
    assert [a["action"] for a in person_actions(front_door.state)] == [
        "suspend", "resume", "rotate",
    ]  # fmt: skip
    assert person_actions(front_door.state)[-1]["new_device"] == new
    revoked = get(front_door, path, cookie)
    assert "revoked" in revoked.text and f'href="{path}/' not in revoked.text  # no actions
    shown = requests.get(
        front_door.url + f"/api/devices/{dids[0]}", headers={"Cookie": f"{COOKIE}={cookie}"},
        timeout=10,
    ).json()  # fmt: skip
    assert shown["status"] == "revoked" and shown["replaced_by"] == new
    assert shown["recent_readings"] == [] and shown["readings_today"] == 0

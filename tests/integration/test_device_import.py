"""Bulk registration against a real ``didgw``: the command, the JSON API and the facility
manager's page (plain HTTP and a real browser). A file with a bad row registers nothing
and says which line; a good file registers every device, each on the record."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import requests
from browser import DESKTOP, PHONE, Browser, accessibility_problems
from device_files import csv_file, new_did, registered
from gateway_process import GatewayProcess
from jsonschema import Draft202012Validator
from people_web import Person
from support import Run

from gateway.registry.model import KINDS

pytestmark = pytest.mark.integration

SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
OPENAPI = Path(__file__).resolve().parents[2] / "gateway" / "run" / "http" / "openapi.json"


def records(state: Path, kind: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(state / "didgw.db")
    try:
        rows = conn.execute(
            "SELECT a.did, e.payload FROM chain_entries e JOIN chain_actors a ON a.id = e.actor "
            "WHERE e.kind = ? ORDER BY e.seq",
            [kind],
        ).fetchall()
    finally:
        conn.close()
    return [{"actor": actor, **json.loads(payload)} for actor, payload in rows]


# -- the command -----------------------------------------------------------------------


def test_the_command_registers_nothing_from_a_file_with_a_bad_row_then_all_of_a_good_one(
    didgw: Run, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    assert didgw("init", "--state-dir", str(state)).returncode == 0
    dids = [new_did() for _ in range(30)]
    bad = tmp_path / "bad.csv"
    bad.write_text(csv_file(dids, bad_line=17), newline="")
    refused = didgw("device", "import", str(bad), "--state-dir", str(state))
    assert refused.returncode == 1
    assert f"{bad}:line 17: kind: unknown device kind 'toaster'" in refused.stderr
    assert "nothing was registered" in refused.stderr
    assert registered(state) == set()
    good = tmp_path / "good.csv"
    good.write_text(csv_file(dids), newline="")
    checked = didgw("device", "import", str(good), "--dry-run", "--state-dir", str(state))
    assert checked.returncode == 0, checked.stderr
    assert "30 devices, no problems" in checked.stdout and registered(state) == set()
    done = didgw("device", "import", str(good), "--by", "fm:ops", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    assert "registered 30 devices" in done.stdout
    assert registered(state) == set(dids)
    entries = records(state, "registry")
    assert [(e["action"], e["device"], e["by"]) for e in entries] == [
        ("register", did, "fm:ops") for did in dids
    ]
    shown = json.loads(didgw("device", "show", dids[4], "--json", "--state-dir", str(state)).stdout)
    assert (shown["name"], shown["metadata"]) == ("sensor 4, hall", {"floor": "1"})
    again = didgw("device", "import", str(good), "--state-dir", str(state))
    assert again.returncode == 1 and "line 2: did: already registered" in again.stderr
    missing = didgw("device", "import", str(tmp_path / "nope.csv"), "--state-dir", str(state))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


# -- the JSON API: attacks first -----------------------------------------------------------


def make_token(didgw: Run, door: GatewayProcess, name: str, role: str) -> str:
    done = didgw(
        "api-token", "create", name, "--role", role,
        "--state-dir", str(door.state), "--config", str(door.config),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def post_file(door: GatewayProcess, body: str | bytes, token: str | None = None,
              query: str = "", content_type: str = "text/csv",
              **headers: str) -> requests.Response:  # fmt: skip
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(
        door.url + "/api/devices/import" + query,
        data=body.encode() if isinstance(body, str) else body,
        headers={"Content-Type": content_type, **headers},
        timeout=30,
    )


def check_schema(answer: requests.Response) -> None:
    document = json.loads(OPENAPI.read_text())
    operation = document["paths"]["/api/devices/import"]["post"]
    described = operation["responses"][str(answer.status_code)]
    if "$ref" in described:
        described = document["components"]["responses"][described["$ref"].rsplit("/", 1)[1]]
    schema = described["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**schema, "components": document["components"]})
    assert not [e.message for e in validator.iter_errors(answer.json())]


def test_the_api_refuses_strangers_readers_and_big_bodies_then_imports_all_or_none(
    didgw: Run, front_door: GatewayProcess
) -> None:
    reader = make_token(didgw, front_door, "watch", "reader")
    manager = make_token(didgw, front_door, "fm", "facility-manager")
    front_door.start()
    dids = [new_did() for _ in range(40)]
    good = csv_file(dids)
    stranger = post_file(front_door, good)
    assert stranger.status_code == 401 and stranger.json()["error"] == "unauthenticated"
    big = "did,name,kind\r\n" + "x" * (100 * 1024)
    assert post_file(front_door, big).status_code == 413  # a stranger keeps the 64 KiB cap
    assert post_file(front_door, good, reader).status_code == 403
    too_big = post_file(front_door, "x" * (5 * 1024 * 1024), manager)
    assert too_big.status_code == 413 and too_big.json()["error"] == "too_large"
    assert post_file(front_door, good, manager, content_type="image/png").status_code == 400
    assert post_file(front_door, good, manager, query="?dry_run=maybe").status_code == 400
    check_schema(post_file(front_door, good, manager, content_type="image/png"))

    bad = post_file(front_door, csv_file(dids, bad_line=9), manager)
    assert bad.status_code == 422, bad.text
    check_schema(bad)
    assert bad.json()["problems"] == [
        {"line": 9, "field": "kind", "message": bad.json()["problems"][0]["message"]}
    ]
    assert registered(front_door.state) == set()
    dry = post_file(front_door, good, manager, query="?dry_run=true")
    assert dry.status_code == 200 and dry.json()["devices"] == 40
    assert dry.json()["registered"] == 0 and registered(front_door.state) == set()
    check_schema(dry)
    # the same file as JSON, bigger than the usual 64 KiB cap: a token may send it
    many = [new_did() for _ in range(600)]
    as_json = json.dumps(
        [{"did": d, "name": f"meter {i}", "kind": "meter", "metadata": {"site": "north"}}
         for i, d in enumerate(many)], indent=1,
    )  # fmt: skip
    assert len(as_json) > 64 * 1024
    done = post_file(front_door, as_json, manager, content_type="application/json")
    assert done.status_code == 201, done.text
    check_schema(done)
    assert done.json()["registered"] == 600 and done.json()["format"] == "json"
    assert registered(front_door.state) == set(many)
    again = post_file(front_door, as_json, manager, content_type="application/json")
    assert again.status_code == 422 and again.json()["problem_count"] == 600
    assert again.json()["problems"][0]["line"] == 2  # the first object's line


# -- the page over plain HTTP: who may, the CSRF token, the kept file ---------------------


def upload(jar: dict[str, str], door: GatewayProcess, body: str, csrf: str | None,
           name: str = "devices.csv", *, language: str = "en") -> requests.Response:  # fmt: skip
    data = {"csrf_token": csrf} if csrf is not None else {}
    return requests.post(
        door.url + "/console/devices/import", data=data, files={"file": (name, body.encode())},
        cookies=jar, timeout=30, allow_redirects=False,
        headers={"Accept-Language": language},
    )  # fmt: skip


def test_the_page_is_a_facility_managers_with_the_csrf_token_and_her_own_kept_file(
    didgw: Run, front_door: GatewayProcess
) -> None:
    frank = Person.issued(didgw, front_door, "facility-manager", "frank")
    gina = Person.issued(didgw, front_door, "facility-manager", "gina")
    member = Person.issued(didgw, front_door, "household", "hanna")
    front_door.start()
    page = front_door.url + "/console/devices/import"
    nobody = requests.get(page, timeout=10, allow_redirects=False)
    assert nobody.status_code == 303 and nobody.headers["Location"] == "/login"
    member_cookie, member_csrf = member.sign_in_http()
    member_jar = {"didgw_session": member_cookie}
    assert requests.get(page, cookies=member_jar, timeout=10).status_code == 403
    dids = [new_did() for _ in range(25)]
    good = csv_file(dids)
    assert upload(member_jar, front_door, good, member_csrf).status_code == 403
    cookie, csrf = frank.sign_in_http()
    jar = {"didgw_session": cookie}
    assert upload(jar, front_door, good, None).status_code == 403  # no anti-CSRF token
    assert upload(jar, front_door, good, "wrong").status_code == 403

    bad = upload(jar, front_door, csv_file(dids, bad_line=5), csrf)
    assert bad.status_code == 422
    assert re.search(r"<td>5</td><td>kind</td><td>unknown device kind", bad.text)
    in_korean = upload(jar, front_door, csv_file(dids, bad_line=5), csrf, language="ko-KR,ko")
    assert in_korean.status_code == 422
    assert (
        "<td>5</td><td>kind</td><td>알 수 없는 기기 종류 &#39;toaster&#39;입니다." in in_korean.text
    )
    assert "Register all" not in bad.text and registered(front_door.state) == set()

    checked = upload(jar, front_door, good, csrf)
    assert checked.status_code == 200 and "Register all 25 devices" in checked.text
    kept = re.search(r'name="import" value="([^"]+)"', checked.text)
    assert kept is not None
    gina_cookie, gina_csrf = gina.sign_in_http()
    stolen = requests.post(
        front_door.url + "/console/devices/import/register",
        data={"csrf_token": gina_csrf, "import": kept[1]},
        cookies={"didgw_session": gina_cookie}, timeout=10,
    )  # fmt: skip
    assert stolen.status_code == 409 and registered(front_door.state) == set()
    done = requests.post(
        front_door.url + "/console/devices/import/register",
        data={"csrf_token": csrf, "import": kept[1]}, cookies=jar, timeout=30,
    )  # fmt: skip
    assert done.status_code == 200 and "Registered 25 devices." in done.text
    assert registered(front_door.state) == set(dids)
    twice = requests.post(
        front_door.url + "/console/devices/import/register",
        data={"csrf_token": csrf, "import": kept[1]}, cookies=jar, timeout=30,
    )  # fmt: skip
    assert twice.status_code == 409  # kept once, registered once
    actions = records(front_door.state, "person-action")
    assert [(a["actor"], a["action"], a["device"]) for a in actions] == [
        (frank.did, "register", did) for did in dids
    ]
    [session] = [r for r in records(front_door.state, "person-session") if r["actor"] == frank.did]
    assert all(a["presentations"] == session["presentations"] for a in actions)
    assert {r["by"] for r in records(front_door.state, "registry")} == {frank.did}


# -- the page in a real browser ----------------------------------------------------------------


def test_a_manager_uploads_a_file_with_a_bad_row_sees_it_then_registers_a_good_file(
    didgw: Run, front_door: GatewayProcess, browser: Browser, tmp_path: Path
) -> None:
    frank = Person.issued(didgw, front_door, "facility-manager", "frank")
    front_door.start()
    dids = [new_did() for _ in range(12)]
    bad, good = tmp_path / "devices-bad.csv", tmp_path / "devices.csv"
    bad.write_text(csv_file(dids, bad_line=7), newline="")
    good.write_text(csv_file(dids), newline="")
    SHOTS.mkdir(parents=True, exist_ok=True)
    for viewport, label in ((PHONE, "phone"), (DESKTOP, "desktop")):
        if label == "desktop":  # a second import of the same devices: new ones
            dids = [new_did() for _ in range(12)]
            bad.write_text(csv_file(dids, bad_line=7), newline="")
            good.write_text(csv_file(dids), newline="")
        page = browser.page(viewport)
        frank.sign_in_browser(page)
        page.goto(front_door.url + "/console/devices/import")
        page.screenshot(path=str(SHOTS / f"device-import-{label}.png"), full_page=True)
        page.get_by_label("Device file").set_input_files(str(bad))
        page.get_by_role("button", name="Check the file").click()
        problems = page.locator("table.problems tbody tr")
        assert problems.count() == 1
        assert problems.first.inner_text().split("\t")[:2] == ["7", "kind"]
        assert page.get_by_role("button", name=re.compile("Register all")).count() == 0
        page.screenshot(path=str(SHOTS / f"device-import-problems-{label}.png"), full_page=True)
        page.get_by_label("Device file").set_input_files(str(good))
        page.get_by_role("button", name="Check the file").click()
        page.screenshot(path=str(SHOTS / f"device-import-preview-{label}.png"), full_page=True)
        page.get_by_role("button", name="Register all 12 devices").click()
        assert page.get_by_role("status").inner_text() == "Registered 12 devices."
        page.screenshot(path=str(SHOTS / f"device-import-done-{label}.png"), full_page=True)
        assert set(dids) <= registered(front_door.state)
        page.context.close()
    # in Korean (the language switch): the page's words and each problem's own words
    page = browser.page(PHONE, axe=True)
    frank.sign_in_browser(page)
    page.goto(front_door.url + "/console/devices/import")
    page.select_option("#lang-choice", "ko")
    page.locator(".lang button").click()
    worse = tmp_path / "devices-worse.csv"
    again = f"{dids[0]},again,sensor,\r\nonly,two\r\n"  # lines 14 and 15
    worse.write_text(csv_file(dids, bad_line=7) + again, newline="")
    page.get_by_label("기기 파일").set_input_files(str(worse))
    page.get_by_role("button", name="파일 확인").click()
    assert page.locator("#problems-title").inner_text() == "문제 3건: 아무것도 등록되지 않았습니다"
    kinds = ", ".join(KINDS)
    rows = [r.split("\t") for r in page.locator("table.problems tbody tr").all_inner_texts()]
    assert rows == [
        ["7", "kind", f"알 수 없는 기기 종류 'toaster'입니다. 다음 중 하나를 쓰세요: {kinds}"],
        ["14", "did", f"{dids[0]}이(가) 2번째 줄에도 있습니다"],
        ["15", "", "칸이 2개인데 머리글은 4개입니다(값 안의 쉼표는 따옴표로 감싸야 합니다)"],
    ]  # fmt: skip
    assert accessibility_problems(page) == []
    page.screenshot(path=str(SHOTS / "device-import-problems-phone-ko.png"), full_page=True)
    page.context.close()

"""The JSON API of a real ``didgw run``: who gets in (tokens, sessions), what each may do,
what the record says, how devices page, and that a token's secret goes nowhere."""

from __future__ import annotations

import json
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import requests
from gateway_process import GatewayProcess
from jsonschema import Draft202012Validator
from people_web import Person
from support import Run

from gateway.config import load_config
from gateway.identity.did_key import did_from_public_key
from gateway.identity.keystore import generate_key, public_bytes
from gateway.service import open_gateway

pytestmark = pytest.mark.integration


def new_did() -> str:
    return did_from_public_key(public_bytes(generate_key()))


def device_body(**members: Any) -> str:
    return json.dumps({"did": new_did(), "name": "x", "kind": "sensor", **members})


def make_token(didgw: Run, door: GatewayProcess, name: str, role: str, *extra: str) -> str:
    done = didgw(
        "api-token", "create", name, "--role", role, *extra,
        "--state-dir", str(door.state), "--config", str(door.config),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def call(door: GatewayProcess, method: str, path: str, token: str | None = None,
         body: Any = None, **kwargs: Any) -> requests.Response:  # fmt: skip
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(
        method, door.url + path, json=body, headers=headers, timeout=10, **kwargs
    )


def register(door: GatewayProcess, token: str, name: str = "roof pv") -> str:
    did = new_did()
    answer = call(door, "POST", "/api/devices", token, {"did": did, "name": name, "kind": "sensor"})
    assert answer.status_code == 201, answer.text
    return did


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


# -- attacks first -------------------------------------------------------------------------


def test_no_token_a_wrong_revoked_or_expired_one_is_401_with_www_authenticate(
    didgw: Run, front_door: GatewayProcess
) -> None:
    revoked = make_token(didgw, front_door, "gone", "operator")
    expired = make_token(didgw, front_door, "soon", "operator", "--expires", "1h")
    good = make_token(didgw, front_door, "good", "reader")
    assert (
        didgw("api-token", "revoke", "gone", "--state-dir", str(front_door.state)).returncode == 0
    )
    conn = sqlite3.connect(front_door.state / "didgw.db")
    with conn:  # an hour passing: the expiry moved into the past
        conn.execute("UPDATE api_tokens SET expires_ms = 1 WHERE name = 'soon'")
    conn.close()
    front_door.start()
    forged = "didgw_" + secrets.token_urlsafe(32)
    for token in (None, "", "nonsense", forged, good[:-2], revoked, expired, good + "A"):
        for method, path in (("GET", "/api/devices"), ("POST", "/api/devices")):
            answer = call(front_door, method, path, token, {"did": new_did()})
            assert answer.status_code == 401, (token, path, answer.text)
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
            assert answer.json()["error"] == "unauthenticated"
    assert call(front_door, "GET", "/api/devices", good).status_code == 200
    bearer_in_cookie = requests.get(
        front_door.url + "/api/devices", cookies={"didgw_session": good}, timeout=10
    )
    assert bearer_in_cookie.status_code == 401


def test_a_reader_changes_nothing_and_a_facility_manager_token_only_devices(
    didgw: Run, front_door: GatewayProcess
) -> None:
    reader = make_token(didgw, front_door, "reader", "reader")
    manager = make_token(didgw, front_door, "fm", "facility-manager")
    operator = make_token(didgw, front_door, "ops", "operator")
    front_door.start()
    did = register(front_door, operator)
    before = call(front_door, "GET", "/api/chain/entries", reader).json()["size"]
    refused = [
        call(front_door, "POST", "/api/devices", reader, json.loads(device_body())),
        call(front_door, "POST", f"/api/devices/{did}/suspend", reader, {"reason": "r"}),
        call(front_door, "POST", f"/api/devices/{did}/revoke", reader, {"reason": "r"}),
        call(front_door, "POST", "/api/credentials/c1/revoke", reader, {"reason": "r"}),
        call(front_door, "POST", "/api/credentials/c1/revoke", manager, {"reason": "r"}),
        call(front_door, "POST", "/api/credentials/c1/suspend", reader, {"reason": "r"}),
        call(front_door, "POST", "/api/credentials/c1/suspend", manager, {"reason": "r"}),
        call(front_door, "POST", "/api/credentials/c1/resume", manager, {"reason": "r"}),
        call(front_door, "GET", "/api/credentials", manager),
        call(front_door, "GET", "/api/chain/entries", manager),
        call(front_door, "GET", "/api/market/trades", manager),
        call(front_door, "GET", "/api/status", manager),
    ]  # fmt: skip
    assert [r.status_code for r in refused] == [403] * len(refused), [r.text for r in refused]
    assert all(r.json()["error"] == "forbidden" for r in refused)
    assert call(front_door, "GET", f"/api/devices/{did}", reader).json()["status"] == "active"
    assert call(front_door, "GET", "/api/chain/entries", reader).json()["size"] == before
    for path in ("/api/devices", "/api/credentials", "/api/market/orders", "/api/status",
                 "/api/anchors/status", "/api/chain/entries"):  # fmt: skip
        assert call(front_door, "GET", path, reader).status_code == 200, path
    assert call(front_door, "GET", "/api/devices", manager).status_code == 200
    changed = call(front_door, "POST", f"/api/devices/{did}/suspend", manager, {"reason": "r"})
    assert changed.status_code == 200 and changed.json()["status"] == "suspended"


def test_bad_requests_get_json_errors_that_say_why(didgw: Run, front_door: GatewayProcess) -> None:
    operator = make_token(didgw, front_door, "ops", "operator")
    front_door.start()
    did = register(front_door, operator)
    cases = {
        ("GET", "/api/devices?limit=501", None): 400,
        ("GET", "/api/devices?limit=0", None): 400,
        ("GET", "/api/devices?limit=ten", None): 400,
        ("GET", "/api/devices?after=bm90LWEtY3Vyc29y", None): 400,
        ("GET", "/api/devices?status=lost", None): 400,
        ("GET", "/api/chain/entries?limit=100000", None): 400,
        ("GET", "/api/chain/entries/99999", None): 404,
        ("GET", "/api/chain/entries/-1", None): 400,
        ("GET", f"/api/devices/{new_did()}", None): 404,
        ("GET", "/api/devices/not-a-did", None): 400,
        ("GET", "/api/no-such-thing", None): 404,
        ("POST", "/api/devices", json.dumps({"did": did, "name": "again", "kind": "sensor"})): 409,
        ("POST", "/api/devices", device_body(kind="toaster")): 400,
        ("POST", "/api/devices", device_body(admin=True)): 400,
        ("POST", "/api/devices", json.dumps(["not", "an", "object"])): 400,
        ("POST", "/api/devices", "{not json"): 400,
        ("POST", f"/api/devices/{did}/suspend", json.dumps({})): 400,
        ("POST", f"/api/devices/{did}/resume", json.dumps({"reason": "not suspended"})): 409,
        ("POST", "/api/credentials/nope/revoke", json.dumps({"reason": "r"})): 404,
        ("GET", "/api/market/statements", None): 400,
    }  # fmt: skip
    for (method, path, body), status in cases.items():
        answer = requests.request(
            method, front_door.url + path, data=body, timeout=10,
            headers={"Authorization": f"Bearer {operator}", "Content-Type": "application/json"},
        )  # fmt: skip
        assert answer.status_code == status, (method, path, answer.text)
        error = answer.json()
        assert set(error) == {"error", "detail"} and error["detail"], (path, error)
        assert "Traceback" not in answer.text
    big = call(front_door, "POST", "/api/devices", operator, {"name": "x" * 70_000})
    assert big.status_code == 413 and big.json()["error"] == "too_large"
    assert call(front_door, "GET", f"/api/devices/{did}", operator).json()["status"] == "active"


def test_strangers_are_rate_limited_with_json_and_retry_after(
    didgw: Run, front_door: GatewayProcess
) -> None:
    operator = make_token(didgw, front_door, "ops", "operator")
    with front_door.config.open("a") as f:
        f.write("source_rate = 1.0\nsource_burst = 3\n")
    front_door.start()
    codes = [call(front_door, "GET", "/api/devices", "didgw_wrong").status_code for _ in range(6)]
    assert codes[:3] == [401] * 3 and 429 in codes[3:]
    limited = call(front_door, "GET", "/api/devices", "didgw_wrong")
    assert limited.status_code == 429 and limited.json()["error"] == "too_many_requests"
    assert int(limited.headers["Retry-After"]) >= 1
    assert call(front_door, "GET", "/api/devices", operator).status_code == 200


# -- what works --------------------------------------------------------------------------------


def test_an_operator_token_registers_suspends_revokes_and_the_record_names_it(
    didgw: Run, front_door: GatewayProcess
) -> None:
    operator = make_token(didgw, front_door, "ops", "operator")
    front_door.start()
    did = register(front_door, operator, "meter 7")
    new = new_did()
    steps = [
        ("suspend", {"reason": "meter under repair"}, "suspended"),
        ("resume", {"reason": "repaired"}, "active"),
        ("rotate", {"reason": "new key", "new_did": new}, "active"),
    ]
    for action, body, status in steps:
        answer = call(front_door, "POST", f"/api/devices/{did}/{action}", operator, body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == status
    revoked = call(front_door, "POST", f"/api/devices/{new}/revoke", operator, {"reason": "stolen"})
    assert revoked.json()["status"] == "revoked"
    shown = call(front_door, "GET", f"/api/devices/{did}", operator).json()
    assert shown["status"] == "revoked" and shown["replaced_by"] == new
    assert [h["action"] for h in shown["history"]] == ["register", "suspend", "resume", "rotate"]
    assert {h["actor"] for h in shown["history"]} == {"token:ops"}
    recorded = records(front_door.state, "registry")
    assert [(r["action"], r["by"]) for r in recorded] == [
        ("register", "token:ops"), ("suspend", "token:ops"), ("resume", "token:ops"),
        ("rotate", "token:ops"), ("register", "token:ops"), ("revoke", "token:ops"),
    ]  # fmt: skip
    tokens = records(front_door.state, "api-token")
    assert [(t["action"], t["token"], t["role"]) for t in tokens] == [("create", "ops", "operator")]


def test_devices_page_by_a_stable_cursor_filtered_by_status_and_text(
    didgw: Run, front_door: GatewayProcess
) -> None:
    operator = make_token(didgw, front_door, "ops", "operator")
    config = load_config(front_door.config)
    with open_gateway(config, front_door.state) as gateway:
        made = [
            gateway.registry.register(
                new_did(), name=f"sensor {i:02}", kind="sensor", actor="test", now=1000.0 + i // 3
            ).did
            for i in range(23)
        ]  # some share a registration time: the DID orders them
        gateway.registry.suspend(made[4], actor="test", reason="r", now=2000.0)
    front_door.start()
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = "?limit=5" + (f"&after={cursor}" if cursor else "")
        page = call(front_door, "GET", "/api/devices" + query, operator).json()
        seen += [d["did"] for d in page["devices"]]
        pages += 1
        if pages == 2:  # a device registered meanwhile comes last, nothing shifts
            late = register(front_door, operator, "late one")
        cursor = page["next"]
        if cursor is None:
            break
        assert len(page["devices"]) == 5
    expected = sorted(made, key=lambda d: (1000.0 + made.index(d) // 3, d))
    assert seen == [*expected, late]
    assert pages == 5
    suspended = call(front_door, "GET", "/api/devices?status=suspended", operator).json()
    assert [d["did"] for d in suspended["devices"]] == [made[4]]
    named = call(front_door, "GET", "/api/devices?q=sensor 1", operator).json()
    assert sorted(d["name"] for d in named["devices"]) == [f"sensor {i}" for i in range(10, 20)]
    wild = call(front_door, "GET", "/api/devices?q=%25", operator).json()
    assert wild["devices"] == []  # % and _ are literal in q
    default = call(front_door, "GET", "/api/devices", operator).json()
    assert len(default["devices"]) == 24 and default["next"] is None


def test_a_token_secret_never_appears_in_output_database_or_list(
    didgw: Run, front_door: GatewayProcess
) -> None:
    created = didgw(
        "api-token", "create", "ci", "--role", "operator",
        "--state-dir", str(front_door.state), "--config", str(front_door.config),
    )  # fmt: skip
    token = created.stdout.strip()
    assert token.startswith("didgw_") and token not in created.stderr
    front_door.start()
    register(front_door, token)
    assert call(front_door, "GET", "/api/devices", token + "x").status_code == 401
    assert front_door.stop() == 0
    listed = didgw("api-token", "list", "--state-dir", str(front_door.state))
    as_json = didgw("api-token", "list", "--json", "--state-dir", str(front_door.state))
    assert "ci" in listed.stdout and token not in listed.stdout + listed.stderr
    assert json.loads(as_json.stdout)[0]["last_used_ms"] is not None
    assert token not in as_json.stdout
    assert token not in front_door.output and token[6:20] not in front_door.output
    for path in front_door.state.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert token.encode() not in data and token[6:].encode() not in data, path


def test_a_signed_in_person_changes_devices_with_the_csrf_token_and_is_on_the_record(
    front_door: GatewayProcess, didgw: Run
) -> None:
    """People use the session of their sign-in at /login (OpenID4VP): a facility manager
    changes devices, a household member reads only her own market data."""
    manager = Person.issued(didgw, front_door, "facility-manager", "frank")
    member = Person.issued(didgw, front_door, "household", "hanna")
    front_door.start()
    cookie, csrf = manager.sign_in_http()
    member_cookie, _ = member.sign_in_http()
    person = manager.did
    [sign_in] = [r for r in records(front_door.state, "person-session") if r["actor"] == person]
    jar = {"didgw_session": cookie}
    did = new_did()
    body = {"did": did, "name": "hall sensor", "kind": "sensor"}
    no_csrf = requests.post(front_door.url + "/api/devices", json=body, cookies=jar, timeout=10)
    assert no_csrf.status_code == 403 and no_csrf.json()["error"] == "forbidden"
    assert (
        requests.get(front_door.url + f"/api/devices/{did}", cookies=jar, timeout=10).status_code
        == 404
    )
    made = requests.post(
        front_door.url + "/api/devices", json=body, cookies=jar, timeout=10,
        headers={"X-CSRF-Token": csrf},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    [action] = records(front_door.state, "person-action")
    assert action["actor"] == person and action["action"] == "register"
    assert action["device"] == did
    assert action["presentations"] == sign_in["presentations"]  # the sign-in's digests
    shown = requests.get(front_door.url + f"/api/devices/{did}", cookies=jar, timeout=10).json()
    assert shown["history"][0]["actor"] == person
    member = {"didgw_session": member_cookie}
    for path in ("/api/devices", "/api/credentials", "/api/chain/entries", "/api/status"):
        assert requests.get(front_door.url + path, cookies=member, timeout=10).status_code == 403
    orders = requests.get(front_door.url + "/api/market/orders", cookies=member, timeout=10)
    assert orders.status_code == 200
    others = requests.get(
        front_door.url + f"/api/market/statements?household={did}", cookies=member, timeout=10
    )
    assert others.status_code == 403


def test_answers_match_the_openapi_document(didgw: Run, front_door: GatewayProcess) -> None:
    operator = make_token(didgw, front_door, "ops", "operator")
    household = new_did()
    issued = didgw(
        "cred", "issue", "household", "--subject", household, "--format", "sd-jwt",
        "--claim", f"household={household}", "--claim", "role=seller",
        "--state-dir", str(front_door.state), "--config", str(front_door.config),
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    front_door.start()
    document = requests.get(front_door.url + "/api/openapi.json", timeout=10).json()
    did = register(front_door, operator)
    credential = call(front_door, "GET", "/api/credentials", operator).json()["credentials"][0]

    def check(path: str, method: str = "get", body: Any = None, template: str = "") -> None:
        answer = call(front_door, method.upper(), path, operator, body)
        operation = document["paths"][template or path.split("?", maxsplit=1)[0]][method]
        described = operation["responses"][str(answer.status_code)]
        if "$ref" in described:
            name = described["$ref"].rsplit("/", 1)[1]
            described = document["components"]["responses"][name]
        schema = described["content"]["application/json"]["schema"]
        validator = Draft202012Validator({**schema, "components": document["components"]})
        errors = [e.message for e in validator.iter_errors(answer.json())]
        assert not errors, (path, answer.status_code, errors)

    check("/api/devices?limit=2")
    check(f"/api/devices/{did}", template="/api/devices/{did}")
    check(f"/api/devices/{new_did()}", template="/api/devices/{did}")  # 404
    check("/api/devices", "post", {"did": new_did(), "name": "n", "kind": "meter"})
    check("/api/devices", "post", {"did": did, "name": "n", "kind": "meter"})  # 409
    check(f"/api/devices/{did}/suspend", "post", {"reason": "r"}, "/api/devices/{did}/suspend")
    check(f"/api/devices/{did}/resume", "post", {"reason": "r"}, "/api/devices/{did}/resume")
    rotate = {"reason": "r", "new_did": new_did()}
    check(f"/api/devices/{did}/rotate", "post", rotate, "/api/devices/{did}/rotate")
    check(f"/api/devices/{did}/revoke", "post", {"reason": "r"}, "/api/devices/{did}/revoke")
    check("/api/credentials")
    changes = f"/api/credentials/{credential['id']}"
    for action in ("suspend", "suspend", "resume", "resume"):  # the second of each: 409
        check(f"{changes}/{action}", "post", {"reason": "r"}, f"/api/credentials/{{id}}/{action}")
    check(f"{changes}/suspend", "post", {"reason": "r"}, "/api/credentials/{id}/suspend")
    check("/api/credentials")  # one suspended
    revoke = f"/api/credentials/{credential['id']}/revoke"
    check(revoke, "post", {"reason": "left"}, "/api/credentials/{id}/revoke")
    check(revoke, "post", {"reason": "left"}, "/api/credentials/{id}/revoke")  # 409
    check(f"{changes}/resume", "post", {"reason": "r"}, "/api/credentials/{id}/resume")  # 409
    check("/api/market/orders?interval=next")
    check("/api/market/trades")
    check(f"/api/market/statements?household={household}")
    check("/api/chain/entries?limit=3")
    check("/api/chain/entries/1", template="/api/chain/entries/{seq}")
    check("/api/chain/entries/1/proof", template="/api/chain/entries/{seq}/proof")
    check("/api/chain/consistency?first=1&second=3")
    check("/api/anchors/status")
    check("/api/status")
    check("/api/devices?limit=9999")  # 400

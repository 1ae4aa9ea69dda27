"""The passkey endpoints of a real ``didgw run`` against what a stranger or a careless
page can send (the whole ceremony is in test_passkeys_browser.py)."""

from __future__ import annotations

import pytest
import requests
from gateway_process import GatewayProcess
from people_web import COOKIE, Person

pytestmark = pytest.mark.integration


def test_binding_needs_a_session_and_its_anti_csrf_token(
    front_door: GatewayProcess, person: Person
) -> None:
    front_door.start()
    token, csrf = person.sign_in_http()
    url = front_door.url + "/passkeys/register/options"
    stranger = requests.post(url, json={}, timeout=10)
    assert stranger.status_code == 401 and stranger.json()["error"] == "not_signed_in"
    cookie = {COOKIE: token}
    forged = requests.post(url, json={}, cookies=cookie, timeout=10)
    assert forged.status_code == 403 and "anti-CSRF" in forged.text
    other_site = requests.post(
        url,
        json={},
        cookies=cookie,
        headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"},
        timeout=10,
    )
    assert other_site.status_code == 403 and "another site" in other_site.text
    asked = requests.post(
        url, json={}, cookies=cookie, headers={"X-CSRF-Token": csrf},
        timeout=10,
    )  # fmt: skip
    assert asked.status_code == 200, asked.text
    assert asked.json()["rp"]["id"] == "localhost"


def test_a_login_answer_to_no_challenge_or_no_json_is_refused(front_door: GatewayProcess) -> None:
    front_door.start()
    url = front_door.url + "/passkeys/login"
    made_up = requests.post(
        url, json={"challenge": "AAAA", "credential": {"id": "AA", "rawId": "AA"}}, timeout=10
    )
    assert made_up.status_code == 403 and made_up.json()["error"] == "unknown_challenge"
    not_json = requests.post(url, data="x", timeout=10)
    assert not_json.status_code == 400 and not_json.json()["error"] == "malformed"
    real = requests.post(front_door.url + "/passkeys/login/options", timeout=10).json()
    forged = requests.post(
        url,
        json={"challenge": real["challenge"], "credential": {"id": "AA", "rawId": "AA"}},
        timeout=10,
    )
    assert forged.status_code == 403 and forged.json()["error"] == "unknown_passkey"
    again = requests.post(
        url,
        json={"challenge": real["challenge"], "credential": {"id": "AA", "rawId": "AA"}},
        timeout=10,
    )
    assert again.json()["error"] == "unknown_challenge"  # single use, even when refused


def test_a_korean_reader_is_refused_in_korean_with_the_same_reason_code(
    front_door: GatewayProcess, person: Person
) -> None:
    front_door.start()
    url = front_door.url + "/passkeys/login"
    made_up = {"challenge": "AAAA", "credential": {"id": "AA", "rawId": "AA"}}
    by_header = requests.post(url, json=made_up, headers={"Accept-Language": "ko-KR"}, timeout=10)
    by_switch = requests.post(url, json=made_up, cookies={"didgw_lang": "ko"}, timeout=10)
    for answer in (by_header, by_switch):
        assert answer.status_code == 403
        assert answer.json() == {
            "error": "unknown_challenge",  # the machine's field is the same in every language
            "message": "알 수 없거나 이미 사용된 패스키 요청입니다. 처음부터 다시 하세요",
        }
    english = requests.post(url, json=made_up, timeout=10).json()
    assert english["message"] == "this passkey request is unknown or was used; start again"
    token, _ = person.sign_in_http()
    forged = requests.post(
        front_door.url + "/passkeys/register/options",
        json={},
        cookies={COOKIE: token, "didgw_lang": "ko"},
        timeout=10,
    )
    assert forged.status_code == 403
    assert "CSRF 방지 토큰이 없거나 틀렸습니다" in forged.text


def test_waiting_logins_are_bounded(front_door: GatewayProcess) -> None:
    with front_door.config.open("a") as f:
        f.write("max_pending_logins = 16\nsource_burst = 100\nsource_rate = 100.0\n")
    front_door.start()
    url = front_door.url + "/passkeys/login/options"
    codes = [requests.post(url, timeout=10).status_code for _ in range(17)]
    assert codes == [200] * 16 + [503]
    assert "too many passkey ceremonies" in requests.post(url, timeout=10).json()["message"]


def test_an_ip_address_base_url_turns_passkeys_off_with_the_reason(
    front_door: GatewayProcess,
) -> None:
    port = front_door.url.rsplit(":", 1)[1]
    with front_door.config.open("a") as f:
        f.write(f'public_url = "http://127.0.0.1:{port}"\n')
    front_door.start()
    answer = requests.post(f"http://127.0.0.1:{port}/passkeys/login/options", timeout=10)
    assert answer.status_code == 403
    assert "need a host name, not the IP address 127.0.0.1" in answer.json()["message"]

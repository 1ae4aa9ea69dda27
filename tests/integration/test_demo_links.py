"""``didgw demo``'s one-time sign-in links at a real ``didgw run``: a signed-in person's
session handed to the first browser that opens the link, and to no one else; no such
route at all when ``[http] demo_links`` is off (any ``didgw run`` that is not a demo)."""

from __future__ import annotations

import re

import pytest
import requests
from gateway_process import GatewayProcess
from people_web import COOKIE, Person
from support import Run

pytestmark = pytest.mark.integration


def demo_door(front_door: GatewayProcess) -> GatewayProcess:
    with front_door.config.open("a") as config:
        config.write("demo_links = true\n")
    front_door.start()
    return front_door


def make_link(door: GatewayProcess, session: str, csrf: str | None) -> requests.Response:
    headers = {"Cookie": f"{COOKIE}={session}"}
    if csrf is not None:
        headers["X-CSRF-Token"] = csrf
    return requests.post(door.url + "/demo/links", headers=headers, timeout=10)


def open_link(link: str) -> requests.Response:
    return requests.get(link, allow_redirects=False, timeout=10)


def signed_in_as(door: GatewayProcess, session: str) -> bool:
    home = requests.get(door.url + "/", headers={"Cookie": f"{COOKIE}={session}"}, timeout=10)
    return re.search(r'name="csrf_token" value="[^"]+"', home.text) is not None


def test_a_link_hands_the_session_over_once(didgw: Run, front_door: GatewayProcess) -> None:
    door = demo_door(front_door)
    alice = Person.issued(didgw, door)
    session, csrf = alice.sign_in_http()
    made = make_link(door, session, csrf)
    assert made.status_code == 200, made.text
    link = made.json()["link"]
    assert link.startswith(door.url + "/demo/link/") and made.json()["expires_in"] == 600

    first = open_link(link)
    assert first.status_code == 303 and first.headers["Location"] == "/energy"
    handed = first.cookies[COOKIE]
    assert handed != session and signed_in_as(door, handed)
    energy = requests.get(door.url + "/energy", headers={"Cookie": f"{COOKIE}={handed}"},
                          timeout=10)  # fmt: skip
    assert energy.status_code == 200
    assert not signed_in_as(door, session)  # the maker's session ended: one way in, the link's

    again = open_link(link)  # used twice
    assert again.status_code == 404 and COOKIE not in again.cookies
    assert "already used, has expired, or never existed" in again.text


def test_a_managers_link_lands_on_the_devices(didgw: Run, front_door: GatewayProcess) -> None:
    door = demo_door(front_door)
    frank = Person.issued(didgw, door, "facility-manager", "frank")
    session, csrf = frank.sign_in_http()
    first = open_link(make_link(door, session, csrf).json()["link"])
    assert first.status_code == 303 and first.headers["Location"] == "/console/devices"


def test_links_are_made_by_a_signed_in_person_with_her_token(
    didgw: Run, front_door: GatewayProcess
) -> None:
    door = demo_door(front_door)
    assert requests.post(door.url + "/demo/links", timeout=10).status_code == 401
    alice = Person.issued(didgw, door)
    session, _ = alice.sign_in_http()
    assert make_link(door, session, None).status_code == 403  # no anti-CSRF token
    assert make_link(door, session, "wrong").status_code == 403
    assert make_link(door, "not-a-session", None).status_code == 401


@pytest.mark.parametrize("secret", ["x", "A" * 43, "A" * 5000, "..%2F..%2Flogin", "%00"])
def test_a_guessed_link_signs_no_one_in(front_door: GatewayProcess, secret: str) -> None:
    door = demo_door(front_door)
    guessed = open_link(f"{door.url}/demo/link/{secret}")
    assert guessed.status_code in (404, 414) and COOKIE not in guessed.cookies


def test_a_link_of_a_session_ended_since_signs_no_one_in(
    didgw: Run, front_door: GatewayProcess
) -> None:
    door = demo_door(front_door)
    alice = Person.issued(didgw, door)
    session, csrf = alice.sign_in_http()
    link = make_link(door, session, csrf).json()["link"]
    out = requests.post(door.url + "/logout", data={"csrf_token": csrf}, allow_redirects=False,
                        headers={"Cookie": f"{COOKIE}={session}"}, timeout=10)  # fmt: skip
    assert out.status_code == 303
    late = open_link(link)
    assert late.status_code == 404 and COOKIE not in late.cookies


def test_no_links_when_not_a_demo(didgw: Run, front_door: GatewayProcess) -> None:
    front_door.start()  # demo_links defaults to false: a plain didgw run
    alice = Person.issued(didgw, front_door)
    session, csrf = alice.sign_in_http()
    assert make_link(front_door, session, csrf).status_code in (404, 405)
    assert open_link(front_door.url + "/demo/link/" + "A" * 43).status_code == 404

"""The pages as axe-core (Deque's accessibility checker, injected into a real chromium) sees
them: no serious or critical WCAG 2.1 A/AA violation, in English and in Korean, on a phone
and on a desktop, signed out and signed in."""

from __future__ import annotations

import os

import pytest
from browser import DESKTOP, PHONE, Browser, accessibility_problems
from gateway_process import GatewayProcess
from people_web import Person
from support import Run

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("locale", ["en-GB", "ko-KR"])
def test_the_pages_have_no_serious_accessibility_violations(
    front_door: GatewayProcess, person: Person, browser: Browser, locale: str
) -> None:
    with front_door.config.open("a") as config:
        config.write("demo_links = true\n")  # for the page of a spent one-time link
    front_door.start()
    problems: dict[str, list[str]] = {}
    for name, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        page = browser.page(viewport, locale=locale, axe=True)
        paths = ("/", "/login", "/login/passkey", "/login/done?id=none", "/proof")
        for path in (*paths, "/demo/link/spent"):
            page.goto(front_door.url + path)
            problems[f"{name} {path}"] = accessibility_problems(page)
        person.sign_in_browser(page)
        signed_in = ("/", "/passkeys", "/energy", "/energy/readings", "/market", "/my-data")
        for path in (*signed_in, "/proof", "/proof/receipt/0"):
            page.goto(front_door.url + path)
            problems[f"{name} {path} signed in"] = accessibility_problems(page)
        page.context.close()
    found = {where: p for where, p in problems.items() if p}
    assert not found, found


@pytest.mark.parametrize("locale", ["en-GB", "ko-KR"])
def test_the_facility_managers_pages_too(
    didgw: Run, front_door: GatewayProcess, browser: Browser, locale: str
) -> None:
    manager = Person.issued(didgw, front_door, "facility-manager", "frank")
    household = Person.issued(didgw, front_door, "household", "hanna")
    device = household.did  # any did:key will do for a device's page
    registered = didgw(
        "device", "register", device, "--name", "hall meter", "--kind", "meter",
        "--meta", "site=north", "--state-dir", str(front_door.state),
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    front_door.start()
    problems: dict[str, list[str]] = {}
    for name, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        page = browser.page(viewport, locale=locale, axe=True)
        manager.sign_in_browser(page)
        for path in ("/console/people", "/console/record", "/console/record/0",
                     "/console/health", "/console/devices", "/console/devices?q=hall",
                     f"/console/devices/{device}", "/console/devices/import"):  # fmt: skip
            page.goto(front_door.url + path)
            problems[f"{name} {path}"] = accessibility_problems(page)
            if shots := os.environ.get("DIDGW_SCREENSHOTS"):
                shot = f"{shots}/{name}-{locale}{path.replace('/', '-')}.png"
                page.screenshot(path=shot, full_page=True)
        page.goto(front_door.url + "/console/people")
        confirm = page.get_attribute('a[href$="/suspend"]', "href")
        assert confirm
        page.goto(front_door.url + confirm)
        problems[f"{name} {confirm}"] = accessibility_problems(page)
        page.goto(front_door.url + "/console/people")
        page.fill("textarea[name=claims]", "wrong")
        page.locator("form[action='/console/people/offer'] button").click()
        problems[f"{name} offer refused"] = accessibility_problems(page)
        page.select_option("select[name=kind]", "device-owner")
        page.fill("textarea[name=claims]", f"device={manager.did}")
        page.locator("form[action='/console/people/offer'] button").click()
        page.locator("svg.qr").wait_for()
        problems[f"{name} offer"] = accessibility_problems(page)
        page.context.close()
    found = {where: p for where, p in problems.items() if p}
    assert not found, found

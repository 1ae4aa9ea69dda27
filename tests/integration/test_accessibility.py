"""The pages as axe-core (Deque's accessibility checker, injected into a real chromium) sees
them: no serious or critical WCAG 2.1 A/AA violation, in English and in Korean, on a phone
and on a desktop, signed out and signed in."""

from __future__ import annotations

import pytest
from browser import DESKTOP, PHONE, Browser, accessibility_problems
from gateway_process import GatewayProcess
from people_web import Person

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
        for path in ("/", "/passkeys", "/energy", "/my-data", "/proof", "/proof/receipt/0"):
            page.goto(front_door.url + path)
            problems[f"{name} {path} signed in"] = accessibility_problems(page)
        page.context.close()
    found = {where: p for where, p in problems.items() if p}
    assert not found, found

"""The sign-in page in a real browser (Playwright, Debian's chromium): the QR code it draws
scans (zbarimg, as a phone's camera would) to the same wallet link as its button, and the
page finishes the sign-in by itself once the wallet has answered."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import DESKTOP, Browser, scan_qr_code
from gateway_process import GatewayProcess
from people_web import Person

pytestmark = pytest.mark.integration


def test_the_qr_code_scans_to_the_wallet_link_and_the_page_signs_in_by_itself(
    front_door: GatewayProcess, person: Person, browser: Browser, tmp_path: Path
) -> None:
    front_door.start()
    page = browser.page(DESKTOP)
    page.goto(front_door.url + "/login")
    link = page.get_attribute("#open-wallet", "href")
    code = page.locator("svg.qr")
    code.wait_for()
    shot = tmp_path / "qr.png"
    code.screenshot(path=str(shot))
    assert scan_qr_code(shot) == link
    person.answer(link)
    page.wait_for_url(front_door.url + "/", timeout=10_000)
    assert person.did in page.inner_text("main")

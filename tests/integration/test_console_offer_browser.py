"""A credential offer made on the console's People page in a real browser: the QR code the
page draws scans (zbarimg) to the offer, an independent wallet (tests/interop/oid4vc-js)
receives the credential with the PIN the page showed, and People then lists it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser import DESKTOP, PHONE, Browser, scan_qr_code
from gateway_process import GatewayProcess
from js_wallet import new_wallet, receive
from people_web import Person
from support import Run

pytestmark = pytest.mark.integration


def test_the_offers_qr_code_scans_and_a_wallet_receives_the_credential(
    didgw: Run, front_door: GatewayProcess, browser: Browser, tmp_path: Path
) -> None:
    manager = Person.issued(didgw, front_door, "facility-manager", "frank")
    front_door.start()
    key, holder = new_wallet(tmp_path)
    for viewport in (PHONE, DESKTOP):
        page = browser.page(viewport)
        manager.sign_in_browser(page)
        page.goto(front_door.url + "/console/people")
        page.select_option("select[name=kind]", "device-owner")
        page.fill("textarea[name=claims]", f"device={manager.did}")
        page.get_by_role("button", name="Make the offer").click()
        code = page.locator("svg.qr")
        code.wait_for()
        if shots := os.environ.get("DIDGW_SCREENSHOTS"):
            page.screenshot(path=f"{shots}/offer-{viewport['width']}.png", full_page=True)
        uri = page.get_attribute("#offer-link", "href")
        pin = page.inner_text("#offer-pin").strip()
        shot = tmp_path / "qr.png"
        code.screenshot(path=str(shot))
        assert uri and scan_qr_code(shot) == uri
        page.context.close()
    status, summary = receive(key, {"uri": uri, "pin": pin}, tmp_path / "credential.sdjwt")
    assert status == 0, summary
    page = browser.page(DESKTOP)
    manager.sign_in_browser(page)
    page.goto(front_door.url + "/console/people")
    assert holder in page.inner_text("main")

"""The facility manager's console in a real browser (Playwright, Debian's chromium) against
``didgw run`` with a real broker and a simulated device: she searches, filters, opens the
device, suspends it through the confirmation, sees it suspended and her action in its
history; the device's next sign-in is refused and the console shows why. Screenshots of
each page at phone and desktop widths go to build/screenshots/."""

from __future__ import annotations

import re
from pathlib import Path

import device as dev
import pytest
from broker import Mosquitto
from browser import DESKTOP, PHONE, Browser
from gateway_process import GatewayProcess, gateway_did, make_device, register
from people_web import Person
from support import Run, wait_until

pytestmark = pytest.mark.integration

SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"


def shoot(page: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    for label, size in (("phone", PHONE), ("desktop", DESKTOP)):
        page.set_viewport_size(size)  # type: ignore[attr-defined]
        page.screenshot(path=str(SHOTS / f"console-{name}-{label}.png"), full_page=True)  # type: ignore[attr-defined]


def test_a_manager_finds_suspends_and_sees_the_device_refused(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, browser: Browser, tmp_path: Path
) -> None:
    port = re.search(r"\[http\]\nport = (\d+)", gateway.config.read_text())[1]  # type: ignore[index]
    gateway.url = f"http://localhost:{port}"
    gw = gateway_did(didgw, gateway.state)
    meter = make_device(tmp_path, mosquitto, "meter", gw)
    register(didgw, gateway.state, meter.did, "hall meter")
    for name in ("roof inverter", "cellar sensor"):
        other = dev.Identity.from_key(dev.load_or_create_key(tmp_path / f"{name}.pem"))
        register(didgw, gateway.state, other.did, name)
    manager = Person.issued(didgw, gateway, "facility-manager", "frank")
    gateway.start()
    try:
        meter.start(timeout=15)
        for i in range(3):
            meter.publish_reading("energy", {"import_kwh": {"value": 10 + i, "unit": "kWh"}})
        assert meter.wait_acked(timeout=20), meter.stats
        page = browser.page(DESKTOP)
        manager.sign_in_browser(page)
        page.click("nav >> text=Devices")
        page.wait_for_url(gateway.url + "/console/devices")
        assert page.locator("tbody tr").count() == 3
        shoot(page, "devices")
        page.fill("input[name=q]", "meter")
        page.select_option("select[name=status]", "active")
        page.click("form.filters button[type=submit]")
        page.wait_for_url(re.compile(r".*q=meter.*status=active.*"))
        rows = page.locator("tbody tr")
        assert rows.count() == 1
        assert "3" in rows.first.locator("td.num").inner_text()  # readings today
        page.click("tbody a:text('hall meter')")
        assert meter.did in page.inner_text("main")
        shoot(page, "device")
        page.click("a.button:text('Suspend')")
        assert "Suspend this device?" in page.inner_text("h1")
        shoot(page, "confirm")
        page.fill("input[name=reason]", "meter under repair")
        page.click("button:text('Confirm')")
        page.wait_for_selector("p.notice")
        assert page.inner_text("#device-status") == "suspended"
        history = page.inner_text("ol.history")
        assert "suspend" in history and manager.did in history
        assert "meter under repair" in history
        wait_until(lambda: not meter.connected, "the suspended meter to be disconnected", 5)
        with pytest.raises(dev.AuthRefused, match="not_active"):
            meter.authenticate(timeout=10)
        page.reload()
        refused = page.inner_text("#last-refusal")  # in plain words, the code kept for support
        assert "the device is suspended or revoked here not_active" in refused
        shoot(page, "device-refused")
        page.goto(gateway.url + "/console/devices?status=suspended")
        assert "not_active" in page.inner_text("tbody")
        page.set_viewport_size(PHONE)
        assert page.locator("tbody tr").count() == 1
        page.select_option("#lang-choice", "ko")
        page.click("form.lang button")
        page.wait_for_selector("h1:text('기기')")
        assert "정지됨" in page.inner_text("tbody")  # suspended, in Korean
        assert "이 게이트웨이에서 정지되었거나 폐기된 기기입니다 not_active" in page.inner_text(
            "tbody"
        )
        shoot(page, "devices-ko")
    finally:
        meter.stop()
        assert gateway.stop() == 0, gateway.output

"""/energy in a real browser (Playwright, Debian's chromium), as a household member sees
it on her phone and her desktop: five weeks of history from one meter on the record, a
second meter read live from a pty, the figures changing as its readings arrive."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from browser import DESKTOP, PHONE, Browser
from energy_web import SIM, TZ, ZONE, household_member, priced, record_readings
from gateway_process import GatewayProcess
from support import Run, wait_until

pytestmark = pytest.mark.integration

SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"


@pytest.fixture
def sim() -> Iterator[list[subprocess.Popen[bytes]]]:
    sims: list[subprocess.Popen[bytes]] = []
    yield sims
    for p in sims:
        p.terminate()
        p.wait(10)


def test_a_household_sees_her_energy_live_and_in_the_past_on_phone_and_desktop(
    didgw: Run,
    front_door: GatewayProcess,
    browser: Browser,
    tmp_path: Path,
    sim: list[subprocess.Popen[bytes]],
) -> None:
    energy_door = priced(front_door)
    alice, home, old_meter = household_member(didgw, energy_door, "alice", tmp_path / "ttyOld")
    live_port = tmp_path / "ttyLive"
    enrolled = didgw(
        "meter", "enroll", "--household", home, "--name", "alice live meter",
        "--port", str(live_port), "--state-dir", str(energy_door.state),
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    record_readings(energy_door.state, old_meter, datetime.now(TZ))
    with energy_door.config.open("a") as f:
        f.write("\n[meter]\nenabled = true\nrecord_every_seconds = 0.0\nreconnect_seconds = 0.5\n")
    sim.append(
        subprocess.Popen(
            [sys.executable, str(SIM), "--pty", str(live_port), "--rate", "2", "--seed", "4"],
            stderr=subprocess.DEVNULL,
        )
    )
    wait_until(live_port.exists, "the simulated meter's pty", 10)
    energy_door.start(env={"TZ": ZONE})
    SHOTS.mkdir(parents=True, exist_ok=True)
    for name, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        page = browser.page(viewport)
        alice.sign_in_browser(page)
        page.click("nav >> text=My energy")
        page.wait_for_url(re.compile(r".*/energy$"))
        page.wait_for_selector("[data-energy-stream][data-live='on']")
        before = page.inner_text("[data-now='last']")
        page.wait_for_function(
            "(before) => document.querySelector(\"[data-now='last']\").textContent !== before",
            arg=before,
            timeout=10_000,
        )
        links = page.locator(".link-state").all_inner_texts()
        assert sorted(links) == ["connected", "not connected"], links
        assert page.locator(".chart rect.bar-import").count() > 0
        page.screenshot(path=str(SHOTS / f"energy-now-{name}.png"), full_page=True)
        page.click("text=Days of a month")
        page.wait_for_url(re.compile(r".*by=day.*"))
        rows = page.locator("table.numbers tbody tr").count()
        assert 28 <= rows <= 31
        page.screenshot(path=str(SHOTS / f"energy-days-{name}.png"), full_page=True)
        page.click("text=Earlier")
        page.click("text=Months of a year")
        assert page.locator("table.numbers tbody tr").count() == 12
        page.context.close()
    # in Korean
    page = browser.page(PHONE)
    alice.sign_in_browser(page)
    page.goto(energy_door.url + "/energy")
    page.select_option("#lang-choice", "ko")
    page.click("footer button")
    page.wait_for_selector("text=전력망에서 사용 중")
    page.screenshot(path=str(SHOTS / "energy-now-phone-ko.png"), full_page=True)

"""My data and Proof in a real browser (Playwright, Debian's chromium) against ``didgw run``:
she opens My data from the navigation, asks for erasure with the button, the operator
carries it out with one command, and signed in again she reads that it is done; her energy
page links to a reading's receipt (not anchored yet: the page says so) and to /proof.
Screenshots of each page, in English and Korean, at phone and desktop widths go to
build/screenshots/."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import DESKTOP, PHONE, Browser
from energy_web import household_member, one_reading
from gateway_process import GatewayProcess
from support import Run

pytestmark = pytest.mark.integration

SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"


def shoot(page: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    for label, size in (("phone", PHONE), ("desktop", DESKTOP)):
        page.set_viewport_size(size)  # type: ignore[attr-defined]
        page.screenshot(path=str(SHOTS / f"mydata-{name}-{label}.png"), full_page=True)  # type: ignore[attr-defined]


@pytest.mark.parametrize("locale", ["en-GB", "ko-KR"])
def test_she_asks_for_erasure_and_sees_it_done(
    didgw: Run, front_door: GatewayProcess, browser: Browser, tmp_path: Path, locale: str
) -> None:
    alice, _, meter = household_member(didgw, front_door, "alice", tmp_path / "ttyA")
    seq = one_reading(front_door.state, meter)
    front_door.start()
    page = browser.page(PHONE, locale=locale)
    alice.sign_in_browser(page)
    page.click("nav a[href='/my-data']")  # type: ignore[attr-defined]
    page.wait_for_url(front_door.url + "/my-data")  # type: ignore[attr-defined]
    shoot(page, f"asked-not-{locale}")
    page.click("form[action='/my-data/erasure'] button")  # type: ignore[attr-defined]
    page.wait_for_url(front_door.url + "/my-data")  # type: ignore[attr-defined]
    pending = page.text_content("[role=status]")  # type: ignore[attr-defined]
    assert pending and ("not carried it out yet" in pending or "아직 처리하지" in pending)
    shoot(page, f"pending-{locale}")
    page.goto(front_door.url + "/energy")  # type: ignore[attr-defined]
    page.click(f"a[href='/proof/receipt/{seq}']")  # type: ignore[attr-defined]
    shoot(page, f"receipt-pending-{locale}")
    page.click("main a[href='/proof']")  # type: ignore[attr-defined]
    assert page.locator("pre code").text_content().startswith("didgw verify-receipt")  # type: ignore[attr-defined]
    shoot(page, f"proof-{locale}")
    erased = didgw("chain", "erase", "--actor", alice.did, "--state-dir", str(front_door.state))
    assert erased.returncode == 0, erased.stderr
    page.goto(front_door.url + "/my-data")  # type: ignore[attr-defined]
    assert "/login" in page.url  # type: ignore[attr-defined]  # her sessions ended
    alice.sign_in_browser(page)
    page.goto(front_door.url + "/my-data")  # type: ignore[attr-defined]
    done = page.text_content("[role=status]")  # type: ignore[attr-defined]
    assert done and ("was carried out" in done or "처리되었습니다" in done)
    shoot(page, f"done-{locale}")
    page.context.close()

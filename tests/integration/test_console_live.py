"""The health page's live counts (``/console/health/live``, server-sent events) at a real
``didgw run``: who may open the stream, how many, and, with a real broker and a device
that authenticates and publishes, the counts going up in the stream, in ``/api/status``
and on the page in a real browser."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from broker import Mosquitto
from browser import DESKTOP, PHONE, Browser
from gateway_process import GatewayProcess, gateway_did, make_device, register
from people_web import COOKIE, Person
from support import Run

pytestmark = pytest.mark.integration

SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
LIVE = "/console/health/live"


def open_stream(door: GatewayProcess, cookie: str | None) -> requests.Response:
    cookies = {COOKIE: cookie} if cookie else {}
    return requests.get(door.url + LIVE, cookies=cookies, stream=True, timeout=20)


def events(response: requests.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    name = ""
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            yield name, json.loads(line[6:])


# -- attacks first -------------------------------------------------------------------------


def test_no_session_a_household_and_too_many_streams_are_refused(
    didgw: Run, front_door: GatewayProcess
) -> None:
    member = Person.issued(didgw, front_door, "household", "hanna")
    manager = Person.issued(didgw, front_door, "facility-manager", "frank")
    front_door.start()
    nobody = open_stream(front_door, None)
    assert nobody.status_code == 401 and "sign in" in nobody.text
    assert open_stream(front_door, "forged").status_code == 401
    cookie, _ = member.sign_in_http()
    household = open_stream(front_door, cookie)
    assert household.status_code == 403 and "facility managers" in household.text
    cookie, _ = manager.sign_in_http()
    first, second = open_stream(front_door, cookie), open_stream(front_door, cookie)
    try:
        for s in (first, second):
            assert s.status_code == 200
            assert s.headers["Content-Type"].startswith("text/event-stream")
        name, counts = next(events(first))
        assert name == "counts" and counts["known"] is True  # didgw run counts (no transports)
        assert counts["readings"] == {"accepted": 0, "refused": 0}
        third = open_stream(front_door, cookie)
        assert third.status_code == 429
        assert "at most 2 live views per session" in third.text
        assert third.headers["Retry-After"]
    finally:
        first.close()
        second.close()


def test_the_stream_ends_when_the_session_ends(didgw: Run, front_door: GatewayProcess) -> None:
    manager = Person.issued(didgw, front_door, "facility-manager", "frank")
    front_door.start()
    cookie, csrf = manager.sign_in_http()
    stream = open_stream(front_door, cookie)
    try:
        seen = events(stream)
        assert next(seen)[0] == "counts"
        out = requests.post(
            front_door.url + "/logout", cookies={COOKIE: cookie}, data={"csrf_token": csrf},
            headers={"Origin": front_door.url}, timeout=10, allow_redirects=False,
        )  # fmt: skip
        assert out.status_code in (200, 303), out.text
        _, why = next(e for e in seen if e[0] == "end")
        assert "session ended" in why["reason"]
    finally:
        stream.close()


# -- for real: a broker, a device, the counts going up --------------------------------------


def test_a_manager_sees_authentications_and_readings_climb(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, browser: Browser, tmp_path: Path
) -> None:
    port = re.search(r"\[http\]\nport = (\d+)", gateway.config.read_text())[1]  # type: ignore[index]
    gateway.url = f"http://localhost:{port}"
    meter = make_device(tmp_path, mosquitto, "meter", gateway_did(didgw, gateway.state))
    register(didgw, gateway.state, meter.did, "hall meter")
    manager = Person.issued(didgw, gateway, "facility-manager", "frank")
    gateway.start()
    cookie, _ = manager.sign_in_http()
    stream = open_stream(gateway, cookie)
    try:
        seen = events(stream)
        name, before = next(seen)
        assert name == "counts" and before["known"]
        assert before["readings"]["accepted"] == 0
        assert before["authentications"]["granted"] == 0
        meter.start(timeout=15)
        for i in range(3):
            meter.publish_reading("energy", {"import_kwh": {"value": 10 + i, "unit": "kWh"}})
        assert meter.wait_acked(timeout=20), meter.stats
        for name, counts in seen:
            assert name == "counts"
            if counts["readings"]["accepted"] >= 3:
                break
        assert counts["authentications"]["granted"] >= 1
        assert counts["readings"]["refused"] == 0
        assert set(counts["rates"]) == {
            "readings_accepted", "readings_refused",
            "authentications_granted", "authentications_refused",
        }  # fmt: skip
        status = requests.get(gateway.url + "/api/status", cookies={COOKIE: cookie}, timeout=10)
        assert status.json()["live"]["readings"]["accepted"] >= 3
        page = browser.page(DESKTOP)
        manager.sign_in_browser(page)
        page.goto(gateway.url + "/console/health")
        shown = page.locator('[data-count="readings_accepted"]')
        assert int(shown.inner_text()) >= 3
        page.wait_for_selector("[data-health-stream][data-live=on]")
        meter.publish_reading("energy", {"import_kwh": {"value": 20, "unit": "kWh"}})
        assert meter.wait_acked(timeout=20), meter.stats
        page.wait_for_function(
            "() => Number(document.querySelector('[data-count=readings_accepted]')"
            ".textContent) >= 4"
        )
        SHOTS.mkdir(parents=True, exist_ok=True)
        for label, size in (("phone", PHONE), ("desktop", DESKTOP)):
            page.set_viewport_size(size)
            page.screenshot(path=str(SHOTS / f"console-health-live-{label}.png"), full_page=True)
    finally:
        stream.close()
        meter.stop()
        assert gateway.stop() == 0, gateway.output

"""README.md's first command: ``didgw demo`` runs the whole product and checks it; Ctrl-C
stops every process it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from browser import DESKTOP, PHONE, Browser

pytestmark = pytest.mark.integration

DIDGW = str(Path(sys.executable).with_name("didgw"))


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


def test_the_demo_runs_every_part_and_its_receipt_verifies(tmp_path: Path) -> None:
    temporary, state = tmp_path / "tmp", tmp_path / "state"
    temporary.mkdir()
    env = {**os.environ, "TMPDIR": str(temporary)}
    result = subprocess.run(
        [DIDGW, "demo", "--seconds", "20", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "forged reading (another device's DID): bad_signature" in out
    assert "replayed reading (seq 1 again): replay" in out
    assert "the record: ok:" in out
    assert "receipt verifies" in out
    assert list(temporary.iterdir()) == []  # its files are removed
    assert _processes_mentioning(str(tmp_path)) == []
    # ... but the gateway's state, asked for with --state-dir, is kept and holds the record.
    assert f"the gateway's state kept in {state}" in out
    verify = subprocess.run(
        [DIDGW, "chain", "verify", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verify.returncode == 0 and verify.stdout.startswith("ok:"), verify.stdout + verify.stderr


def test_the_demo_refuses_a_state_dir_in_use_and_a_config(tmp_path: Path) -> None:
    (tmp_path / "didgw.db").write_bytes(b"")
    used = subprocess.run(
        [DIDGW, "demo", "--state-dir", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert used.returncode == 1
    assert f"{tmp_path} is not empty: the demo initialises a gateway from nothing" in used.stderr
    config = subprocess.run(
        [DIDGW, "demo", "--config", str(tmp_path / "gateway.toml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert config.returncode == 1
    assert "didgw demo writes its own configuration: --config is not used" in config.stderr
    assert (tmp_path / "didgw.db").read_bytes() == b""  # untouched


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    demo = subprocess.Popen(
        [DIDGW, "demo", "--seconds", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # so that a failure below can stop the demo's processes too
    )
    assert demo.stdout is not None
    output = ""
    try:
        deadline = time.monotonic() + 180
        while "running for" not in output and time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            output += line
        assert "running for" in output, output
        assert _processes_mentioning(str(tmp_path))  # mosquitto, anvil, the gateway, devices
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:  # a failure above: leave nothing of the demo running
            os.killpg(demo.pid, signal.SIGKILL)
            demo.communicate()
    assert demo.returncode == 130, output + rest
    assert "stopping every process" in rest
    assert _processes_mentioning(str(tmp_path)) == []
    assert list(tmp_path.iterdir()) == []


def test_the_demo_prints_console_links_that_sign_a_browser_in_once(
    tmp_path: Path, browser: Browser
) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    demo = subprocess.Popen(
        [DIDGW, "demo", "--seconds", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert demo.stdout is not None
    output = ""
    try:
        deadline = time.monotonic() + 180
        while "running for" not in output and time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            output += line
        links = dict(re.findall(r"^console (facility manager|household): (\S+)$", output, re.M))
        assert set(links) == {"facility manager", "household"}, output
        base = links["household"].split("/demo/link/")[0]
        for who, landing in (("facility manager", "/console/devices"), ("household", "/energy")):
            page = browser.page(DESKTOP)
            page.goto(links[who])
            assert page.url == base + landing
            assert page.locator("form[action='/logout']").count() == 1  # signed in
            if shots := os.environ.get("DIDGW_DEMO_SHOTS"):  # pictures for the docs, on demand
                take_screenshots(page, Path(shots), who, base, browser)
            again = browser.page(PHONE)  # another browser, the same link
            answer = again.goto(links[who])
            assert answer is not None and answer.status == 404
            assert again.locator("form[action='/logout']").count() == 0
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.communicate()
        demo.stdout.close()  # already closed, unless the demo ended before it was told to
    assert demo.returncode == 130, output + rest
    assert _processes_mentioning(str(tmp_path)) == []


def take_screenshots(page: Any, folder: Path, who: str, base: str, browser: Browser) -> None:
    """The signed-in person's pages at desktop and phone width (and, once, the sign-in)."""
    folder.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(20_000)  # the devices report in, the meters count
    name = "manager" if who == "facility manager" else "household"
    cookies = page.context.cookies()
    phone = browser.page(PHONE)
    phone.context.add_cookies(cookies)
    paths = ["/console/devices"] if name == "manager" else ["/energy", "/market"]
    if name == "manager":
        page.goto(base + "/console/devices")
        first = page.locator("table a[href^='/console/devices/']").first.get_attribute("href")
        paths.append(str(first))
    for path in paths:
        slug = "device" if path.count("/") > 2 else path.strip("/").split("/")[-1]
        for width, tab in (("desktop", page), ("phone", phone)):
            tab.goto(base + path)
            tab.wait_for_timeout(1500)  # let the live figures and charts arrive
            tab.screenshot(path=str(folder / f"{slug}-{width}.png"), full_page=slug != "devices")
    if name == "household":
        stranger = browser.page(PHONE)
        stranger.goto(base + "/login")
        stranger.screenshot(path=str(folder / "login-phone.png"), full_page=True)

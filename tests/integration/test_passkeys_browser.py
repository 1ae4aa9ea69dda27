"""The passkey ceremony in a real browser (chromium, a CDP virtual authenticator) against
a real ``didgw run``: bind after a presentation sign-in, sign in with the passkey alone,
and what suspending, resuming and revoking the credential behind it do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from browser import DESKTOP, PHONE, Browser, add_authenticator, credentials_of
from gateway_process import GatewayProcess
from people_web import Person
from support import Run, wait_until

from gateway.chain.store import ChainStore
from gateway.db import connect

pytestmark = pytest.mark.integration

SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"


def entries(front_door: GatewayProcess, kind: str, actor: str) -> list[dict[str, object]]:
    db = connect(front_door.state / "didgw.db")
    try:
        return [
            json.loads(e.payload)
            for e in ChainStore(db).entries()
            if e.kind == kind and e.actor == actor and e.payload is not None
        ]
    finally:
        db.close()


def wait_for_passkeys(page: Any, front_door: GatewayProcess) -> None:
    """After "Add a passkey": the list shows one, or fail with what the page said."""
    page.wait_for_function(
        "() => document.querySelector('.passkeys li') || "
        "!document.querySelector('[data-passkey-status]').hidden"
    )
    status = page.locator("[data-passkey-status]")
    if page.locator(".passkeys li").count() == 0:
        raise AssertionError(f"{status.inner_text()}\n{front_door.output}")


def test_bind_a_passkey_sign_in_with_it_alone_and_lose_it_with_the_credential(
    front_door: GatewayProcess,
    person: Person,
    browser: Browser,
    didgw: Run,
) -> None:
    front_door.start()
    page = browser.page(PHONE)
    cdp, authenticator = add_authenticator(page)
    person.sign_in_browser(page)

    # Signed in by presentation: bind a passkey.
    page.goto(front_door.url + "/passkeys")
    assert person.did in page.inner_text("main")
    page.fill("[data-passkey-name]", "my phone")
    page.click("[data-passkey-bind]")
    wait_for_passkeys(page, front_door)
    assert "my phone" in page.inner_text(".passkeys")
    [held] = credentials_of(cdp, authenticator)
    assert held["isResidentCredential"], "a discoverable passkey, so sign-in needs no name"
    [bound] = entries(front_door, "passkey-bound", person.did)
    assert len(bound["presentations"]) == 1 and len(str(bound["passkey"])) == 64
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "passkeys-phone.png"), full_page=True)

    # Sign out; sign in with the passkey alone.
    page.click("header >> text=Sign out")
    page.wait_for_url(front_door.url + "/")
    assert not [c for c in page.context.cookies() if c["name"] == "didgw_session"]
    page.goto(front_door.url + "/login/passkey")
    page.screenshot(path=str(SHOTS / "passkey-login-phone.png"), full_page=True)
    page.click("[data-passkey-login]")
    page.wait_for_url(front_door.url + "/passkeys")
    main = page.inner_text("main")
    assert person.did in main and "my phone" in main
    assert "sign in with your wallet" in main  # a passkey session cannot bind another
    sessions = entries(front_door, "person-session", person.did)
    assert sessions[-1]["method"] == "passkey"
    assert sessions[-1]["presentations"] == bound["presentations"]
    assert sessions[-1]["passkey"] == bound["passkey"]

    # Suspend the credential: the session ends, the passkey is refused; resumed, it works.
    state = ("--state-dir", str(front_door.state))
    changed = didgw("cred", "suspend", person.credential_id, "--reason", "phone lost", *state)
    assert changed.returncode == 0, changed.stderr

    def signed_out() -> bool:
        page.goto(front_door.url + "/passkeys")
        return page.url.endswith("/login/passkey")

    wait_until(signed_out, "the open session to end")
    page.click("[data-passkey-login]")
    status = page.locator("[data-passkey-status]")
    page.wait_for_function(
        "() => document.querySelector('[data-passkey-status]').textContent.includes('suspended')"
    )
    assert "the credential behind this passkey is suspended" in status.inner_text()
    changed = didgw("cred", "resume", person.credential_id, "--reason", "phone found", *state)
    assert changed.returncode == 0, changed.stderr
    page.goto(front_door.url + "/login/passkey")
    page.click("[data-passkey-login]")
    page.wait_for_url(front_door.url + "/passkeys")
    assert person.did in page.inner_text("main")

    # Revoke the credential: the open session ends, the passkey no longer signs in.
    revoked = didgw(
        "cred", "revoke", person.credential_id, "--reason", "moved out",
        "--state-dir", str(front_door.state),
    )  # fmt: skip
    assert revoked.returncode == 0, revoked.stderr
    wait_until(signed_out, "the open session to end", timeout=1.0)
    page.click("[data-passkey-login]")
    status = page.locator("[data-passkey-status]")
    status.wait_for(state="visible")
    page.wait_for_function(
        "() => document.querySelector('[data-passkey-status]').textContent.includes('revoked')"
    )
    assert "the credential behind this passkey was revoked" in status.inner_text()
    assert page.url.endswith("/login/passkey")
    page.screenshot(path=str(SHOTS / "passkey-login-revoked-phone.png"), full_page=True)

    # A Korean reader (the language switch) is told the same in Korean.
    page.select_option("#lang-choice", "ko")
    page.locator(".lang button").click()
    page.wait_for_url(front_door.url + "/login/passkey")
    page.click("[data-passkey-login]")
    page.wait_for_function(
        "() => document.querySelector('[data-passkey-status]').textContent.includes('폐기')"
    )
    assert status.inner_text() == (
        "로그인하지 못했습니다: 이 패스키에 연결된 자격 증명이 폐기되었습니다. "
        "새 자격 증명을 받아 그것으로 로그인하세요"
    )
    page.screenshot(path=str(SHOTS / "passkey-login-revoked-phone-ko.png"), full_page=True)


def test_remove_a_passkey_and_it_no_longer_signs_in(
    front_door: GatewayProcess, person: Person, browser: Browser
) -> None:
    front_door.start()
    page = browser.page(DESKTOP)
    add_authenticator(page)
    person.sign_in_browser(page)
    page.goto(front_door.url + "/passkeys")
    page.click("[data-passkey-bind]")
    wait_for_passkeys(page, front_door)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "passkeys-desktop.png"), full_page=True)
    page.click(".passkeys li >> text=Remove")
    page.wait_for_selector("text=The passkey was removed.")
    assert "None yet." in page.inner_text("main")
    [bound] = entries(front_door, "passkey-bound", person.did)
    [removed] = entries(front_door, "passkey-removed", person.did)
    assert removed["passkey"] == bound["passkey"]

    page.click("header >> text=Sign out")
    page.goto(front_door.url + "/login/passkey")
    page.click("[data-passkey-login]")
    page.wait_for_function("() => !document.querySelector('[data-passkey-status]').hidden")
    assert "not bound here" in page.inner_text("[data-passkey-status]")

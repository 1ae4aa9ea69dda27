"""A real browser for the front door's tests: Playwright driving Debian's chromium.

One place for the launch arguments (no sandbox in a container, nothing fetched from the
internet behind the test's back) and for the CDP virtual authenticator that stands in
for a phone's or a laptop's passkey store. The fixture is ``browser`` in conftest.py.
Nothing is skipped: without chromium or Playwright the test fails and says what to run.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if shutil.which(CHROMIUM) is None:
        return f"{CHROMIUM} is missing: run scripts/setup.sh --dev"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: run scripts/setup.sh --dev"
    return None


@dataclass
class Browser:
    """A launched chromium; :meth:`page` opens a fresh context (its own cookies)."""

    chromium: Any

    def page(self, viewport: dict[str, int] | None = None) -> Any:
        context = self.chromium.new_context(viewport=viewport or PHONE)
        return context.new_page()


def add_authenticator(page: Any, *, user_verified: bool = True) -> tuple[Any, str]:
    """A CTAP2 platform authenticator with resident keys and user verification, for
    ``page``'s context: (the CDP session, the authenticator's id)."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    added = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": user_verified,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return cdp, added["authenticatorId"]


def credentials_of(cdp: Any, authenticator: str) -> list[dict[str, Any]]:
    """The credentials the virtual authenticator holds."""
    found: list[dict[str, Any]] = cdp.send(
        "WebAuthn.getCredentials", {"authenticatorId": authenticator}
    )["credentials"]
    return found


@contextmanager
def launched() -> Iterator[Browser]:
    problem = missing_browser()
    assert problem is None, problem
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield Browser(chromium)
        finally:
            chromium.close()

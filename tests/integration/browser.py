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
from pathlib import Path
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

    def page(
        self, viewport: dict[str, int] | None = None, *, locale: str = "en-GB", axe: bool = False
    ) -> Any:
        """A page in a fresh context; ``axe``: one that lets :func:`accessibility_problems`
        inject its checker (it bypasses the page's CSP, so never for a test of the CSP)."""
        context = self.chromium.new_context(
            viewport=viewport or PHONE, locale=locale, bypass_csp=axe
        )
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


AXE = Path(__file__).resolve().parents[1] / "a11y" / "node_modules" / "axe-core" / "axe.min.js"
#: The impacts that fail a test (axe-core's scale: minor, moderate, serious, critical).
SERIOUS = ("serious", "critical")


def accessibility_problems(page: Any) -> list[str]:
    """The serious and critical axe-core violations on ``page`` (WCAG 2.x A and AA rules),
    one line each. The page's context must bypass the CSP (``Browser.page(..., axe=True)``):
    the checker is injected as a script the page itself would refuse."""
    assert AXE.is_file(), f"{AXE} is missing: run scripts/setup.sh --dev"
    page.add_script_tag(path=str(AXE))
    found = page.evaluate(
        """async () => {
            const result = await axe.run(document, {
                runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}
            });
            return result.violations.map(v => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map(n => n.target.join(" ")).slice(0, 3)
            }));
        }"""
    )
    return [
        f"{v['impact']}: {v['id']} ({v['help']}) at {', '.join(v['nodes'])}"
        for v in found
        if v["impact"] in SERIOUS
    ]


def scan_qr_code(png: Path) -> str:
    """What a QR code reader (zbarimg, as a phone's camera would) reads from the picture."""
    import subprocess

    zbarimg = shutil.which("zbarimg")
    assert zbarimg, "zbarimg is missing: run scripts/setup.sh --dev"
    read = subprocess.run(
        [zbarimg, "--quiet", "--raw", str(png)], capture_output=True, text=True, check=False
    )
    assert read.returncode == 0, read.stderr
    return read.stdout.strip()

"""People at the HTTP front door, for the tests: a household member with a real credential
who signs in at ``/login`` by OpenID4VP, with ``firmware-sim/web_wallet.py`` as her wallet,
in a real browser (Playwright) or as a plain HTTP client."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import device as dev
import requests
import web_wallet
from gateway_process import GatewayProcess
from support import Run

from gateway.identity import Signer
from gateway.identity.keystore import generate_key

COOKIE = "didgw_session"
LOGIN_COOKIE = "didgw_login"


def issue_credential(
    didgw: Run, state: Path, kind: str, subject: str, claims: Sequence[str], *, out: Path
) -> tuple[str, str]:
    """Issue an SD-JWT VC with ``didgw cred issue`` into ``out``: (its id, its text)."""
    issued = didgw(
        "cred", "issue", kind, "--subject", subject, "--format", "sd-jwt",
        *[a for c in claims for a in ("--claim", c)],
        "-o", str(out), "--state-dir", str(state),
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    match = re.search(r"issued (urn:uuid:\S+)", issued.stdout + issued.stderr)
    assert match is not None, issued.stdout
    return match[1], out.read_text().strip()


@dataclass
class Person:
    """A household member (role buyer) holding a household credential of the gateway."""

    identity: dev.Identity = field(repr=False)
    credential: str = field(repr=False)  # the SD-JWT VC as issued
    credential_id: str  # urn:uuid:…, for didgw cred revoke
    url: str  # the front door's base URL

    @property
    def did(self) -> str:
        return self.identity.did

    @classmethod
    def issued(
        cls, didgw: Run, front_door: GatewayProcess, kind: str = "household", name: str = "alice"
    ) -> Person:
        """A new person and her credential of ``kind`` (a household member, role buyer, of a
        household of her own; or a facility manager), issued with ``didgw cred issue``."""
        state = front_door.state
        identity = dev.Identity.from_key(dev.load_or_create_key(state.parent / f"{name}.pem"))
        path = Path(state).parent / f"{name}.sdjwt"
        if kind == "household":
            household = Signer.for_did_key(generate_key()).did
            claims = [f"household={household}", "role=buyer", f"name={name.title()}"]
        else:
            claims = [f"name={name.title()}"]
        credential_id, text = issue_credential(didgw, state, kind, identity.did, claims, out=path)
        return cls(identity, text, credential_id, front_door.url)

    def answer(self, link: str) -> None:
        """Her wallet answers the sign-in request of ``link`` (an openid4vp:// URI)."""
        answer = web_wallet.sign_in(link, [self.credential], self.identity)
        assert answer.status == 200, answer.body

    def sign_in_browser(self, page: object) -> None:
        """Sign in at /login in a Playwright page: the page shows the request, the wallet
        answers it, the page's script notices and lands on / signed in."""
        page.goto(self.url + "/login")  # type: ignore[attr-defined]
        link = page.get_attribute("#open-wallet", "href")  # type: ignore[attr-defined]
        assert link, "no wallet link on /login"
        self.answer(link)
        page.wait_for_url(self.url + "/", timeout=10_000)  # type: ignore[attr-defined]

    def sign_in_http(self) -> tuple[str, str]:
        """Sign in as a plain HTTP client: (the session cookie's value, its anti-CSRF token).
        Cookies are sent by hand: they are Secure, and ``requests`` keeps Secure cookies
        from http://localhost, which browsers count as secure."""
        page = requests.get(self.url + "/login", timeout=10)
        link = html.unescape(re.search(r'href="(openid4vp://[^"]+)"', page.text)[1])  # type: ignore[index]
        request_id = re.search(r'name="id" value="([^"]+)"', page.text)[1]  # type: ignore[index]
        self.answer(link)
        finish = requests.post(
            self.url + "/login/finish",
            data={"id": request_id},
            headers={"Cookie": f"{LOGIN_COOKIE}={page.cookies[LOGIN_COOKIE]}"},
            allow_redirects=False,
            timeout=10,
        )
        assert finish.status_code == 303, finish.text
        token = finish.cookies[COOKIE]
        home = requests.get(self.url + "/", headers={"Cookie": f"{COOKIE}={token}"}, timeout=10)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', home.text)
        assert csrf is not None, home.text
        return token, csrf[1]


@dataclass
class Browser:
    """A browser: its cookies (sent by hand: the cookies are Secure, the test is on loopback
    HTTP, where a real browser counts localhost as secure and ``requests`` does not)."""

    url: str
    cookies: dict[str, str] = field(default_factory=dict)
    ca: str | None = None  # over HTTPS: the certificate authority to check the server with

    def _keep(self, answer: requests.Response) -> requests.Response:
        for cookie in answer.cookies:
            if cookie.value:
                self.cookies[cookie.name] = cookie.value
            else:
                self.cookies.pop(cookie.name, None)
        if 'didgw_login=""' in answer.headers.get("Set-Cookie", ""):
            self.cookies.pop("didgw_login", None)
        return answer

    def _headers(self) -> dict[str, str]:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        answer = requests.get(
            self.url + path, headers=self._headers(), timeout=10, allow_redirects=False,
            verify=self.ca or True, **kwargs,
        )  # fmt: skip
        return self._keep(answer)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        answer = requests.post(
            self.url + path, headers=self._headers(), timeout=10, allow_redirects=False,
            verify=self.ca or True, **kwargs,
        )  # fmt: skip
        return self._keep(answer)

    def start(self) -> tuple[str, str]:
        """GET /login: (the openid4vp:// link, the request id)."""
        page = self.get("/login")
        assert page.status_code == 200, page.text
        link = html.unescape(re.search(r'href="(openid4vp://[^"]+)"', page.text)[1])  # type: ignore[index]
        request_id = re.search(r'name="id" value="([^"]+)"', page.text)[1]  # type: ignore[index]
        qr = re.search(r'data-qr="([^"]+)"', page.text)  # the QR code of the same link
        assert qr is not None and html.unescape(qr[1]) == link
        return link, request_id

    def finish(self, request_id: str) -> requests.Response:
        return self.post("/login/finish", data={"id": request_id})

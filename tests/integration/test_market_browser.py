"""A household's market in a real browser against a real ``didgw run`` (real mosquitto, P1
meters on real ptys, chromium with a CDP virtual authenticator): she signs an order with
her passkey, another household bids, the interval clears and settles, and her page shows
the trade and the statement. The recorded order is checked without the gateway: by the
receipt reader's own code and by the browser's WebCrypto. And what an attacker on her
page can try (replaying a signed order, a signature over something else, another
session's order, no passkey, another household) is refused."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import cbor2
import device as dev
import pytest
from anvil import free_port
from broker import Mosquitto
from browser import PHONE, Browser, accessibility_problems, add_authenticator
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from gateway_process import GatewayProcess, gateway_did
from meters import Meters, enroll
from people_web import Person, issue_credential
from support import Run, wait_until

from gateway.anchor.passkey_check import PasskeyCheckError, check_passkey_order
from gateway.chain.store import ChainStore
from gateway.db import connect

pytestmark = pytest.mark.integration

SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
INTERVAL = 6  # seconds: long enough to sign an order for the interval after next


def entries(state: Path, kind: str) -> list[Any]:
    store = ChainStore(connect(state / "didgw.db"))
    try:
        return [e for e in store.entries() if e.kind == kind]
    finally:
        store.close()


def member(didgw: Run, state: Path, name: str, *, household: str, role: str, url: str) -> Person:
    """A member of ``household`` with ``role`` (seller or buyer), her credential issued."""
    identity = dev.Identity.from_key(dev.load_or_create_key(state.parent / f"{name}.pem"))
    claims = [f"household={household}", f"role={role}", f"name={name.title()}"]
    out = state.parent / f"{name}.sdjwt"
    cred_id, text = issue_credential(didgw, state, "household", identity.did, claims, out=out)
    return Person(identity, text, cred_id, url)


def post_json(page: Any, path: str, body: Any) -> dict[str, Any]:
    """POST JSON from the page (her session, her anti-CSRF token): {status, body}."""
    answer: dict[str, Any] = page.evaluate(
        """async ([path, body]) => {
            const csrf = document.querySelector("input[name=csrf_token]").value;
            const r = await fetch(path, {method: "POST", body: JSON.stringify(body),
                headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}});
            return {status: r.status, body: await r.json()};
        }""",
        [path, body],
    )
    return answer


def sign_in_page(page: Any, challenge: str, allow: list[str]) -> Any:
    """Her authenticator's assertion over ``challenge``, as market.js sends it."""
    return page.evaluate(
        """async ([challenge, allow]) => {
            const w = window.didgwWebAuthn;
            const c = await navigator.credentials.get({publicKey: w.requestOptions({
                challenge, allowCredentials: allow.map((id) => ({type: "public-key", id})),
                userVerification: "required", rpId: location.hostname})});
            return w.asJson(c);
        }""",
        [challenge, allow],
    )


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def webcrypto_verifies(page: Any, payload: dict[str, Any]) -> bool:
    """An independent check of the recorded assertion: chromium's WebCrypto, with the key
    (Ed25519 or P-256, whichever the authenticator made) read from the record."""
    key = cbor2.loads(unb64(payload["key"]))
    a = payload["assertion"]
    sig, auth, client = (unb64(a[k]) for k in ("signature", "authenticatorData", "clientDataJSON"))
    signed = auth + hashlib.sha256(client).digest()
    if key[1] == 1:  # OKP: Ed25519, the signature as it is
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64u(key[-2])}
        algorithm: dict[str, str] = {"name": "Ed25519"}
    else:  # EC2 P-256: WebCrypto takes r || s, WebAuthn gives DER
        r, s = decode_dss_signature(sig)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        jwk = {"kty": "EC", "crv": "P-256", "x": b64u(key[-2]), "y": b64u(key[-3])}
        algorithm = {"name": "ECDSA", "namedCurve": "P-256", "hash": "SHA-256"}
    verified: bool = page.evaluate(
        """async ([jwk, algorithm, sig, data]) => {
            const hex = (h) => Uint8Array.from(h.match(/../g), (b) => parseInt(b, 16));
            const key = await crypto.subtle.importKey("jwk", jwk, algorithm, false, ["verify"]);
            return crypto.subtle.verify(algorithm, key, hex(sig), hex(data));
        }""",
        [jwk, algorithm, sig.hex(), signed.hex()],
    )
    return verified


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_household_signs_an_order_with_her_passkey_and_sees_its_trade_and_statement(
    didgw: Run, mosquitto: Mosquitto, meters: Meters, browser: Browser, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    gateway_did(didgw, state)
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[mqtt]\n"
        + mosquitto.gateway_settings()
        + "verify_workers = 0\n[coap]\nenabled = false\n[anchor]\nenabled = false\n"
        f"[metrics]\nport = {free_port()}\n"
        "[meter]\nenabled = true\nrecord_every_seconds = 0.0\n"
        f"[market]\nenabled = true\ninterval_seconds = {INTERVAL}\ntick_seconds = 0.1\n"
        f"[http]\nport = {port}\n"
    )
    url = f"http://localhost:{port}"
    sunny = enroll(didgw, state, tmp_path, "sunny", tmp_path / "ttyP1-sunny")
    shady = enroll(didgw, state, tmp_path, "shady", tmp_path / "ttyP1-shady")
    db = sqlite3.connect(state / "didgw.db")
    [(house_a,)] = db.execute("SELECT household FROM meters WHERE did = ?", [sunny]).fetchall()
    [(house_b,)] = db.execute("SELECT household FROM meters WHERE did = ?", [shady]).fetchall()
    sim = ("--rate", "10", "--speed", "30", "--start", "2024-06-15T11:00")
    meters.start(tmp_path / "ttyP1-sunny", *sim, "--solar-peak-w", "9000", "--seed", "1")
    meters.start(tmp_path / "ttyP1-shady", *sim, "--solar-peak-w", "0", "--seed", "2")
    alice = member(didgw, state, "alice", household=house_a, role="seller", url=url)
    gateway = GatewayProcess(state, mosquitto, config)
    gateway.start()
    try:
        wait_until(
            lambda: (
                (
                    db.execute(
                        "SELECT peak_export_w FROM meters WHERE did = ?", [sunny]
                    ).fetchone()[0]
                    or 0
                )
                * INTERVAL
                >= 3600 * 5
            ),  # 5 Wh per interval
            "the sunny meter's export power on record",
            20,
            details=lambda: gateway.output,
        )
        page = browser.page(PHONE, axe=True)
        add_authenticator(page)
        alice.sign_in_browser(page)

        # No passkey yet: the market says how to get one, and refuses to prepare an order.
        page.goto(url + "/market")
        assert "Add a passkey" in page.inner_text("main")
        refused = post_json(
            page,
            "/market/orders/prepare",
            {"household": house_a, "side": "sell", "interval": 0, "kwh": "1", "price": "0.1"},
        )
        assert refused["status"] in (400, 409), refused
        page.goto(url + "/passkeys")
        page.click("[data-passkey-bind]")
        page.wait_for_selector(".passkeys li")

        # Her order: the interval after next, 5 Wh at €0.090/kWh, signed with her passkey.
        page.goto(url + "/market")
        assert accessibility_problems(page) == []
        options = page.locator("#order-interval option")
        interval = int(options.nth(1).get_attribute("value"))
        page.select_option("#order-interval", str(interval))
        page.fill("#order-kwh", "0.005")
        page.fill("#order-price", "0,090")  # a comma works as the decimal separator too
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "market-order-phone.png"), full_page=True)
        page.click("form[data-market-order] button[type=submit]")
        page.wait_for_url(re.compile(r".*/market\?.*placed=\d+"), timeout=10_000)
        assert "placed and signed with your passkey" in page.inner_text("main")
        assert "open" in page.inner_text("section[aria-labelledby=orders-heading]")

        # On the record: a passkey-order entry by her, checked from the entry alone.
        [entry] = entries(state, "passkey-order")
        assert entry.actor == alice.did
        recorded = json.loads(entry.payload)
        order = json.loads(recorded["order"])
        assert (order["household"], order["side"], order["wh"], order["price"]) == (
            house_a,
            "sell",
            5,
            90,
        )
        assert order["interval"] == interval
        assert "passkey assertion" in check_passkey_order(entry.payload, alice.did)
        assert webcrypto_verifies(page, recorded)
        [bound] = [e for e in entries(state, "passkey-bound") if e.seq == recorded["binding"]]
        assert json.loads(bound.payload)["key"] == recorded["key"]
        tampered = entry.payload.replace(b'\\"wh\\":5', b'\\"wh\\":50')
        assert tampered != entry.payload
        with pytest.raises(PasskeyCheckError, match="something other than this order"):
            check_passkey_order(tampered, alice.did)
        with pytest.raises(PasskeyCheckError, match="not"):
            check_passkey_order(entry.payload, house_b)
        actions = [json.loads(e.payload) for e in entries(state, "person-action")]
        assert any(a.get("order") == entry.seq and a["action"] == "order" for a in actions)

        # The other household bids for the same interval with its own key.
        bid = didgw(
            "market",
            "bid",
            "--key",
            str(tmp_path / "shady.pem"),
            "--wh",
            "8",
            "--price",
            "200",
            "--interval",
            str(interval),
            "--config",
            str(config),
            "--state-dir",
            str(state),
        )
        assert bid.returncode == 0, bid.stderr

        def traded() -> bool:
            return db.execute("SELECT count(*) FROM market_trades").fetchone()[0] > 0

        wait_until(traded, "the interval cleared", 3 * INTERVAL, details=lambda: gateway.output)
        page.goto(url + "/market")
        trades = page.inner_text("section[aria-labelledby=trades-heading]")
        assert "sold" in trades and "0.005" in trades and "0.145" in trades, trades
        assert house_b[-10:] in trades  # the other side by its household DID only
        assert "traded 0.005 kWh" in page.inner_text("section[aria-labelledby=orders-heading]")

        def settled() -> bool:
            return (
                db.execute(
                    "SELECT count(*) FROM market_statements WHERE household = ?", [house_a]
                ).fetchone()[0]
                > 0
            )

        wait_until(settled, "her statement", 4 * INTERVAL, details=lambda: gateway.output)
        page.goto(url + "/market")
        page.click("details.statement summary")
        statement = page.inner_text("section[aria-labelledby=statements-heading]")
        [(body,)] = db.execute(
            "SELECT body FROM market_statements WHERE household = ?", [house_a]
        ).fetchall()
        assert f"{json.loads(body)['net'] / 1_000_000:.2f}" in statement
        assert accessibility_problems(page) == []
        page.screenshot(path=str(SHOTS / "market-phone.png"), full_page=True)
        mine = page.evaluate("fetch('/api/market/mine').then((r) => r.json())")
        assert mine["household"] == house_a and mine["trades"][0]["counterparty"] == house_b
        # Her trade's receipt is hers to ask for (409 until it is anchored; anchoring is off).
        trade_entry = mine["trades"][0]["entry"]
        assert page.request.get(f"{url}/api/receipts/{trade_entry}").status == 409
        statement_entry = mine["statements"][0]["entry"]
        assert page.request.get(f"{url}/api/receipts/{statement_entry}").status == 409

        # Attacks from her own page. Replaying the signed order is refused.
        nxt = int(options.nth(2).get_attribute("value"))
        terms = {
            "household": house_a,
            "side": "sell",
            "interval": nxt,
            "kwh": "0.005",
            "price": "0.1",
        }
        prepared = post_json(page, "/market/orders/prepare", terms)
        assert prepared["status"] == 200, prepared
        allow = [c["id"] for c in prepared["body"]["options"]["allowCredentials"]]
        challenge = prepared["body"]["options"]["challenge"]
        # A signature over something else, sent for this order: refused, nothing recorded.
        other = base64.urlsafe_b64encode(hashlib.sha256(b"x").digest()).rstrip(b"=").decode()
        wrong = post_json(
            page,
            "/market/orders",
            {"challenge": challenge, "credential": sign_in_page(page, other, allow)},
        )
        assert (wrong["status"], wrong["body"]["reason"]) == (403, "bad_passkey"), wrong
        # The order waits no more (single use): the right signature now is too late.
        late = post_json(
            page,
            "/market/orders",
            {"challenge": challenge, "credential": sign_in_page(page, challenge, allow)},
        )
        assert late["body"]["reason"] == "unknown_challenge", late
        prepared = post_json(page, "/market/orders/prepare", terms)
        challenge = prepared["body"]["options"]["challenge"]
        signed = {"challenge": challenge, "credential": sign_in_page(page, challenge, allow)}
        assert post_json(page, "/market/orders", signed)["body"]["status"] == "accepted"
        again = post_json(page, "/market/orders", signed)
        assert again["body"]["reason"] == "unknown_challenge", again
        assert len(entries(state, "passkey-order")) == 2
        # Another household's order, or a side her credential does not give: refused.
        foreign = post_json(page, "/market/orders/prepare", {**terms, "household": house_b})
        assert (foreign["status"], foreign["body"]["reason"]) == (403, "not_member")
        buy = post_json(page, "/market/orders/prepare", {**terms, "side": "buy"})
        assert buy["body"]["reason"] == "wrong_role", buy
        for kwh in ("0", "-1", "0.0001", "1e9", "abc", "1" * 20):
            bad = post_json(page, "/market/orders/prepare", {**terms, "kwh": kwh})
            assert bad["body"]["reason"] == "bad_quantity", (kwh, bad)
        closed = post_json(page, "/market/orders/prepare", {**terms, "interval": interval})
        assert closed["body"]["reason"] == "interval_closed", closed

        # Another session (Bob's browser) cannot finish her pending order.
        prepared = post_json(page, "/market/orders/prepare", terms)
        challenge = prepared["body"]["options"]["challenge"]
        credential = sign_in_page(page, challenge, allow)
        intruder = browser.page(PHONE)
        member(didgw, state, "bob", household=house_b, role="buyer", url=url).sign_in_browser(
            intruder
        )
        intruder.goto(url + "/market")
        stolen = post_json(
            intruder, "/market/orders", {"challenge": challenge, "credential": credential}
        )
        assert stolen["body"]["reason"] == "unknown_challenge", stolen
        assert len(entries(state, "passkey-order")) == 2
    finally:
        gateway.kill()
        db.close()


def test_the_market_page_and_its_json_refuse_strangers(
    front_door: GatewayProcess, person: Person
) -> None:
    """Without a session nothing is shown or taken; without the anti-CSRF token no order is
    prepared; with the market off (no MQTT here) the page says so."""
    import requests

    front_door.start()
    assert (
        requests.get(front_door.url + "/market", allow_redirects=False, timeout=5).status_code
        == 303
    )
    assert requests.get(front_door.url + "/api/market/mine", timeout=5).status_code == 401
    anon = requests.post(front_door.url + "/market/orders/prepare", json={}, timeout=5)
    assert anon.status_code in (401, 403)
    token, csrf = person.sign_in_http()
    cookie = {"Cookie": f"didgw_session={token}"}
    page = requests.get(front_door.url + "/market", headers=cookie, timeout=5)
    assert page.status_code == 200 and "The market is off on this gateway." in page.text
    no_csrf = requests.post(
        front_door.url + "/market/orders/prepare", json={}, headers=cookie, timeout=5
    )
    assert no_csrf.status_code == 403
    off = requests.post(
        front_door.url + "/market/orders/prepare",
        json={"household": "x", "side": "sell", "interval": 1, "kwh": "1", "price": "1"},
        headers={**cookie, "X-CSRF-Token": csrf, "Origin": front_door.url},
        timeout=5,
    )
    assert (off.status_code, off.json()["reason"]) == (503, "market_off")
    for junk in (b"[", b"{}" * 40_000, b'{"a":' * 1000):
        answer = requests.post(
            front_door.url + "/market/orders",
            data=junk,
            headers={**cookie, "X-CSRF-Token": csrf, "Content-Type": "application/json"},
            timeout=5,
        )
        assert answer.status_code in (400, 413), answer.text

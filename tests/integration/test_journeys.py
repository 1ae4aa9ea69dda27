"""Two people's journeys end to end in a real browser (Playwright, Debian's chromium), each
against one ``didgw run`` with every part on: a real mosquitto, a P1 meter on a real pty
(firmware-sim/p1meter.py), anchoring to a real ledger node (anvil), the HTTP front door.

* A household member on her phone signs in with the independent wallet (oid4vc-ts, by
  OpenID4VP, holding a credential it received by OpenID4VCI), watches her meter's figures
  change live on /energy, bids on /market for Bob's surplus with her passkey and sees the
  trade after clearing, downloads the receipts of her meter's latest reading, her order
  and her trade once anchored and checks them against the ledger with
  ``didgw verify-receipt``, asks for
  erasure, the operator carries it out, her page says so, and the record still verifies.
* A facility manager at her desk uploads a device file with a bad row (told which line,
  nothing registered), then a good one (all registered, in the devices table), suspends
  one device through its page, and the device's next sign-in at the real broker is
  refused, with the reason on its page and its row.

Screenshots of each main step go to build/screenshots/journey-*.png."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import device as dev
import pytest
from anchoring import ledger_address
from anvil import Anvil
from broker import Mosquitto
from browser import DESKTOP, PHONE, Browser, add_authenticator
from device_files import csv_file, new_did, registered
from gateway_process import GatewayProcess, gateway_did, make_device
from js_wallet import new_wallet, present, receive
from meters import Meters, enroll
from people_web import Person
from support import Run, wait_until

from gateway.anchor.queue import AnchorQueue
from gateway.chain.store import ChainStore
from gateway.chain.verify import ProofError, verify_consistency
from gateway.db import connect
from gateway.identity import offline_resolver, verify_jws
from gateway.identity.keystore import generate_key
from gateway.identity.signing import Signer

pytestmark = pytest.mark.integration

SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
INTERVAL = 6  # the market's interval (s): time to sign an order for the one after next


@dataclass
class Site:
    """One gateway with every part on (not started), its ledger and its meters."""

    gateway: GatewayProcess
    anvil: Anvil
    meters: Meters

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def state(self) -> Path:
        return self.gateway.state

    def anchored_size(self) -> int:
        """How many entries of the record are anchored and confirmed on the ledger."""
        db = connect(self.state / "didgw.db")
        try:
            confirmed = [a.size for a in AnchorQueue(db).recent(10_000) if a.state == "confirmed"]
        finally:
            db.close()
        return max(confirmed, default=0)


@pytest.fixture
def site(didgw: Run, gateway: GatewayProcess, anvil: Anvil) -> Iterator[Site]:
    """The ``gateway`` fixture (a real mosquitto, the HTTP edge) with its P1 meter reader and
    anchoring on: every telegram recorded, an anchor each second, one confirmation."""
    state = gateway.state
    anvil.fund(ledger_address(didgw("init", "--state-dir", str(state)).stdout))
    port = re.search(r"\[http\]\nport = (\d+)", gateway.config.read_text())[1]  # type: ignore[index]
    gateway.url = f"http://localhost:{port}"
    with gateway.config.open("a") as f:
        f.write(
            "\n[meter]\nenabled = true\nrecord_every_seconds = 0.0\nreconnect_seconds = 0.5\n"
            f'\n[anchor]\nenabled = true\nrpc_url = "{anvil.url}"\nevery_seconds = 1.0\n'
            "confirmations = 1\npoll_seconds = 0.2\nrpc_timeout = 2.0\n"
            f"\n[market]\nenabled = true\ninterval_seconds = {INTERVAL}\ntick_seconds = 0.1\n"
        )
    meters = Meters()
    try:
        yield Site(gateway, anvil, meters)
    finally:
        meters.stop()


def shoot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"journey-{name}.png"), full_page=True)


def latest_reading(state: Path, meter: str) -> tuple[int, int]:
    """The meter's latest reading on the record: (its entry, the import power in W the
    meter sent, read from the meter's own signed telegram values)."""
    store = ChainStore(connect(state / "didgw.db"))
    try:
        last = [e for e in store.entries() if e.kind == "vouched_reading" and e.actor == meter][-1]
    finally:
        store.close()
    body = json.loads(
        verify_jws(
            last.payload, resolver=offline_resolver(), relationship="assertionMethod", now=0
        ).payload
    )
    return last.seq, int(body["values"]["power_import_w"]["value"])


# -- the household ------------------------------------------------------------------------


class Household:
    """Alice, a household member with a meter, and her phone's browser: each method is one
    step of her journey, in the order the test lists them."""

    def __init__(self, didgw: Run, site: Site, browser: Browser, tmp_path: Path) -> None:
        self.didgw, self.site, self.tmp = didgw, site, tmp_path
        state = site.state
        on = ("--state-dir", str(state))
        self.home = Signer.for_did_key(generate_key()).did
        made = didgw("device", "register", self.home, "--name", "alice", "--kind", "household", *on)
        assert made.returncode == 0, made.stderr
        port = tmp_path / "ttyAlice"
        enrolled = didgw(
            "meter", "enroll", "--household", self.home, "--name", "alice meter",
            "--port", str(port), *on,
        )  # fmt: skip
        assert enrolled.returncode == 0, enrolled.stderr
        self.meter = re.search(r"enrolled meter (\S+)", enrolled.stdout)[1]  # type: ignore[index]
        # a meter read twice a second whose clock runs a minute a second, no solar: all the
        # load is imported and the import register moves
        site.meters.start(
            port, "--rate", "2", "--speed", "60", "--seed", "5", "--solar-peak-w", "0"
        )
        self.key, self.did = new_wallet(tmp_path, "alice")
        self.credential = tmp_path / "alice.sdjwt"
        self.page: Any = None
        # Bob's household next door: solar on the roof, a meter, its own key; it sells.
        bob_port = tmp_path / "ttyBob"
        self.bob_meter = enroll(didgw, state, tmp_path, "bob", bob_port)
        site.meters.start(
            bob_port, "--rate", "4", "--speed", "30", "--start", "2024-06-15T11:00",
            "--seed", "6", "--solar-peak-w", "9000",
        )  # fmt: skip
        self.receipts: dict[str, int] = {}  # what she will check: her order, her trade

    def receives_her_credential(self) -> None:
        """The operator offers her a household credential; her wallet takes it (OpenID4VCI)."""
        offered = self.didgw(
            "cred", "offer", "household", f"--claim=household={self.home}", "--claim=role=buyer",
            "--claim=name=Alice", "--json",
            "--state-dir", str(self.site.state), "--config", str(self.site.gateway.config),
        )  # fmt: skip
        assert offered.returncode == 0, offered.stderr
        code, summary = receive(self.key, json.loads(offered.stdout), self.credential)
        assert code == 0, summary

    def signs_in(self) -> None:
        """/login shows a request; her wallet answers it (OpenID4VP); the page goes on."""
        self.page.goto(self.site.url + "/login")
        link = self.page.get_attribute("#open-wallet", "href")
        assert link, "no wallet link on /login"
        answered = present(self.key, [self.credential], link)
        assert answered.returncode == 0, answered.stdout + answered.stderr
        self.page.wait_for_url(self.site.url + "/", timeout=10_000)
        assert self.did in self.page.inner_text("body")

    def sees_her_meter_live(self) -> None:
        """/energy's figures change as the meter's telegrams arrive, to what the meter sent."""
        page = self.page
        page.click("nav >> text=My energy")
        page.wait_for_url(self.site.url + "/energy")
        page.wait_for_selector("[data-energy-stream][data-live='on']")
        first_power = page.inner_text("[data-now='import_kw']")
        first_today = page.inner_text("[data-now='today_in']")
        shown: list[str] = []

        def meter_value_shown() -> bool:
            shown.append(page.inner_text("[data-now='import_kw']"))
            _, watts = latest_reading(self.site.state, self.meter)
            return shown[-1] != first_power and shown[-1] == f"{watts / 1000:.2f}"

        wait_until(meter_value_shown, "the page to show the meter's latest import power", 20,
                   details=lambda: f"shown {shown[-5:]}, first {first_power}")  # fmt: skip
        page.wait_for_function(
            "(before) => document.querySelector(\"[data-now='today_in']\").textContent !== before",
            arg=first_today,
            timeout=20_000,
        )
        assert page.inner_text(f"[data-meter-link='{self.meter}']") == "connected"

    def buys_on_the_market(self) -> None:
        """Bob's household offers its surplus; she binds a passkey, bids for the same interval
        on /market and signs the bid with it; the interval clears; her page shows the trade,
        the other side by its household DID only."""
        page, state = self.page, self.site.state
        add_authenticator(page)
        page.goto(self.site.url + "/passkeys")
        page.click("[data-passkey-bind]")
        page.wait_for_selector(".passkeys li")
        db = sqlite3.connect(state / "didgw.db")
        try:
            wait_until(
                lambda: (db.execute("SELECT peak_export_w FROM meters WHERE did = ?",
                                    [self.bob_meter]).fetchone()[0] or 0) * INTERVAL >= 3600 * 8,
                "Bob's meter to show it can feed in 8 Wh an interval", 20,
            )  # fmt: skip
            [(bob,)] = db.execute(
                "SELECT household FROM meters WHERE did = ?", [self.bob_meter]
            ).fetchall()
            page.click("nav >> text=Market")
            page.wait_for_url(re.compile(r".*/market$"))
            interval = page.locator("#order-interval option").nth(1).get_attribute("value")
            offered = self.didgw(
                "market", "offer", "--key", str(self.tmp / "bob.pem"), "--wh", "8",
                "--price", "80", "--interval", interval,
                "--config", str(self.site.gateway.config), "--state-dir", str(state),
            )  # fmt: skip
            assert offered.returncode == 0, offered.stderr
            page.select_option("#order-interval", interval)
            page.fill("#order-kwh", "0.005")
            page.fill("#order-price", "0.200")
            shoot(page, "household-market-order")
            page.click("form[data-market-order] button[type=submit]")
            page.wait_for_url(re.compile(r".*/market\?.*placed=\d+"), timeout=10_000)
            mine = page.locator("section[aria-labelledby=orders-heading]")
            assert "open" in mine.inner_text()
            wait_until(
                lambda: db.execute("SELECT count(*) FROM market_trades").fetchone()[0] > 0,
                "the interval to clear", 4 * INTERVAL,
            )  # fmt: skip
        finally:
            db.close()
        page.reload()
        trades = page.inner_text("section[aria-labelledby=trades-heading]")
        assert "bought 0.005 kWh" in trades and "€\xa00.140/kWh" in trades, trades
        assert bob[-10:] in trades
        assert "traded 0.005 kWh" in mine.inner_text()
        self.receipts = {
            "order": int(mine.locator("a[href^='/proof/receipt/']").first.get_attribute("href")
                         .rsplit("/", 1)[1]),
            "trade": int(page.locator("section[aria-labelledby=trades-heading] "
                                      "a[href^='/proof/receipt/']").first.get_attribute("href")
                         .rsplit("/", 1)[1]),
        }  # fmt: skip

    def checks_a_receipt(self) -> None:
        """My data; then the receipt of her meter's latest reading, once anchored, checked
        against the ledger by ``didgw verify-receipt``; and those of her order (her
        passkey's signature checked too) and her trade."""
        page = self.page
        page.click("nav a[href='/my-data']")
        page.wait_for_url(self.site.url + "/my-data")
        assert self.did in page.inner_text("main")
        shoot(page, "household-my-data")
        page.goto(self.site.url + "/energy")
        link = page.locator(f"li:has([data-meter-link='{self.meter}']) a[href^='/proof/receipt/']")
        seq = int(link.get_attribute("href").rsplit("/", 1)[1])
        wait_until(lambda: self.site.anchored_size() > seq, f"entry {seq} anchored", 20)
        with page.expect_download() as download:
            link.click()
        receipt = self.tmp / "receipt.json"
        download.value.save_as(receipt)
        assert download.value.suggested_filename == f"receipt-{seq}.json"
        assert json.loads(receipt.read_text())["entry"]["actor"] == self.meter
        checked = self.didgw("verify-receipt", str(receipt), "--rpc", self.site.anvil.url)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "receipt verifies" in checked.stdout
        for what, entry in self.receipts.items():
            wait_until(lambda: self.site.anchored_size() > entry, f"her {what} anchored", 20)  # noqa: B023
            answer = page.request.get(f"{self.site.url}/proof/receipt/{entry}")
            assert answer.status == 200, answer.text()
            path = self.tmp / f"receipt-{what}.json"
            path.write_bytes(answer.body())
            checked = self.didgw("verify-receipt", str(path), "--rpc", self.site.anvil.url)
            assert checked.returncode == 0, checked.stdout + checked.stderr
            if what == "order":
                assert "passkey assertion over the order by " + self.did in checked.stdout

    def has_her_data_erased(self) -> None:
        """She asks for erasure; the operator carries it out; signed in again, she reads that
        it is done; the record still verifies."""
        page, state = self.page, self.site.state
        page.goto(self.site.url + "/my-data")
        page.click("form[action='/my-data/erasure'] button")
        page.wait_for_url(self.site.url + "/my-data")
        assert "not carried it out yet" in page.inner_text("[role=status]")
        shoot(page, "household-erasure-asked")
        erased = self.didgw("chain", "erase", "--actor", self.did, "--state-dir", str(state))
        assert erased.returncode == 0, erased.stderr
        page.goto(self.site.url + "/my-data")
        assert "/login" in page.url  # her sessions ended with the erasure
        self.signs_in()
        page.goto(self.site.url + "/my-data")
        assert "was carried out" in page.inner_text("[role=status]")
        assert "all erased: only their fingerprints remain" in page.inner_text(".held")
        verified = self.didgw("chain", "verify", "--state-dir", str(state))
        assert verified.returncode == 0 and verified.stdout.startswith("ok:"), verified.stdout


def test_a_household_signs_in_watches_her_meter_checks_a_receipt_and_is_erased(
    didgw: Run, site: Site, browser: Browser, tmp_path: Path
) -> None:
    alice = Household(didgw, site, browser, tmp_path)
    site.gateway.start()
    alice.page = browser.page(PHONE)
    steps: list[Callable[[], None]] = [
        alice.receives_her_credential,
        alice.signs_in,
        alice.sees_her_meter_live,
        alice.buys_on_the_market,
        alice.checks_a_receipt,
        alice.has_her_data_erased,
    ]
    try:
        for number, step in enumerate(steps, 1):
            step()
            if alice.page.url != "about:blank":  # a step of her wallet alone shows no page
                shoot(alice.page, f"household-{number}-{step.__name__}")
    finally:
        alice.page.context.close()
        assert site.gateway.stop() == 0, site.gateway.output


# -- the facility manager ----------------------------------------------------------------


def check_the_record(didgw: Run, site: Site, page: Any, tmp_path: Path) -> None:
    """The Record page's anchors: an older anchor's checkpoint checks an export of the
    record (``didgw chain verify``), and its consistency proof to the newest confirmed
    anchor checks with the stand-alone RFC 9162 verifier."""
    db = connect(site.state / "didgw.db")
    try:
        queue = AnchorQueue(db)
        wait_until(
            lambda: len([a for a in queue.recent(50) if a.state == "confirmed"]) >= 2,
            "two anchors confirmed", 20,
        )  # fmt: skip
    finally:
        db.close()
    page.goto(site.url + "/console/record")
    shoot(page, "manager-7-record")
    proofs = page.locator("a[href$='/consistency.json']")
    href = proofs.first.get_attribute("href")
    size = int(href.split("/")[3])
    with page.expect_download() as got:
        page.locator(f"a[href='/console/anchors/{size}/checkpoint.txt']").click()
    checkpoint = tmp_path / "checkpoint.txt"
    got.value.save_as(checkpoint)
    export = tmp_path / "record.jsonl"
    state = ("--state-dir", str(site.state))
    assert didgw("chain", "export", "-o", str(export), *state).returncode == 0
    verified = didgw(
        "chain", "verify", "--export", str(export), "--checkpoint", str(checkpoint), *state
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"the first {size} match the checkpoint" in verified.stdout
    with page.expect_download() as got:
        proofs.first.click()
    proof = json.loads(Path(got.value.path()).read_text())
    assert proof["first"] == size and proof["second"] > size
    path = [bytes.fromhex(h) for h in proof["path"]]
    first, second = bytes.fromhex(proof["first_root"]), bytes.fromhex(proof["second_root"])
    verify_consistency(proof["first"], proof["second"], path, first, second)
    with pytest.raises(ProofError):
        verify_consistency(proof["first"], proof["second"], path, bytes(32), second)


def test_a_facility_manager_imports_devices_suspends_one_and_the_broker_refuses_it(
    didgw: Run, site: Site, mosquitto: Mosquitto, browser: Browser, tmp_path: Path
) -> None:
    gateway = site.gateway
    meter = make_device(tmp_path, mosquitto, "meter", gateway_did(didgw, site.state))
    dids = [meter.did, *(new_did() for _ in range(5))]
    bad, good = tmp_path / "devices-bad.csv", tmp_path / "devices.csv"
    bad.write_text(csv_file(dids, bad_line=4), newline="")
    good.write_text(csv_file(dids), newline="")
    frank = Person.issued(didgw, gateway, "facility-manager", "frank")
    gateway.start()
    page = browser.page(DESKTOP)
    try:
        frank.sign_in_browser(page)
        page.click("nav >> text=Devices")
        page.wait_for_url(site.url + "/console/devices")
        page.click("text=Register devices from a file")
        page.wait_for_url(site.url + "/console/devices/import")
        page.get_by_label("Device file").set_input_files(str(bad))
        page.get_by_role("button", name="Check the file").click()
        problems = page.locator("table.problems tbody tr")
        assert problems.count() == 1
        assert problems.first.inner_text().split("\t")[:2] == ["4", "kind"]
        assert page.get_by_role("button", name=re.compile("Register all")).count() == 0
        assert not set(dids) & registered(site.state)
        shoot(page, "manager-1-bad-row")

        page.get_by_label("Device file").set_input_files(str(good))
        page.get_by_role("button", name="Check the file").click()
        page.get_by_role("button", name=f"Register all {len(dids)} devices").click()
        assert page.get_by_role("status").inner_text() == f"Registered {len(dids)} devices."
        assert registered(site.state) >= set(dids)
        shoot(page, "manager-2-registered")
        page.goto(site.url + "/console/devices")
        table = page.inner_text("tbody")
        assert all(f"sensor {i}, hall" in table for i in range(len(dids)))
        shoot(page, "manager-3-devices")

        meter.start(timeout=15)  # registered by the file: the broker lets it in
        meter.publish_reading("energy", {"import_kwh": {"value": 1, "unit": "kWh"}})
        assert meter.wait_acked(timeout=20), meter.stats
        page.click("tbody a:text('sensor 0, hall')")
        assert meter.did in page.inner_text("main")
        page.click("a.button:text('Suspend')")
        assert "Suspend this device?" in page.inner_text("h1")
        page.fill("input[name=reason]", "replaced by a new meter")
        page.click("button:text('Confirm')")
        page.wait_for_selector("p.notice")
        assert page.inner_text("#device-status") == "suspended"
        shoot(page, "manager-4-suspended")

        wait_until(lambda: not meter.connected, "the suspended device to be disconnected", 10)
        with pytest.raises(dev.AuthRefused, match="not_active"):
            meter.authenticate(timeout=10)
        page.reload()
        assert "not_active" in page.inner_text("#last-refusal")
        shoot(page, "manager-5-refused")
        page.goto(site.url + "/console/devices?status=suspended")
        rows = page.locator("tbody tr")
        assert rows.count() == 1 and "not_active" in rows.first.inner_text()
        shoot(page, "manager-6-refused-row")
        check_the_record(didgw, site, page, tmp_path)
    finally:
        meter.stop()
        page.context.close()
        assert gateway.stop() == 0, gateway.output
    db = sqlite3.connect(site.state / "didgw.db")
    try:
        assert db.execute("SELECT count(*) FROM devices").fetchone()[0] == len(dids)
    finally:
        db.close()

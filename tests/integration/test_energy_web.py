"""A household's energy at the front door, end to end: readings put on the record by the
gateway's own meter recorder (back-dated, over five weeks) or by a simulated P1 meter on a
real pty, the real ``didgw run``, a household member signed in with her wallet.

Every sum is checked against one computed here from the readings alone: each step of the
registers between two consecutive readings belongs to the period of the later one."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import requests
from energy_web import FEED_IN, RETAIL, SIM, TZ, ZONE, household_member, priced, record_readings
from gateway_process import GatewayProcess
from people_web import COOKIE
from support import Run, wait_until

from gateway.db import connect

pytestmark = pytest.mark.integration


def expected(readings: list[tuple[int, int, int]], key: str) -> dict[str, tuple[int, int]]:
    """Import and export per period label, computed from the readings alone."""
    formats = {"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d", "month": "%Y-%m"}
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (_, i0, e0), (t, i1, e1) in itertools.pairwise(readings):
        label = datetime.fromtimestamp(t / 1000, TZ).strftime(formats[key])
        sums[label][0] += i1 - i0
        sums[label][1] += e1 - e0
    return {k: (v[0], v[1]) for k, v in sums.items()}


def get(front_door: GatewayProcess, path: str, token: str | None) -> requests.Response:
    headers = {"Cookie": f"{COOKIE}={token}"} if token else {}
    return requests.get(front_door.url + path, headers=headers, timeout=10, allow_redirects=False)


def test_history_per_hour_day_and_month_adds_up_with_cost_and_income(
    didgw: Run, front_door: GatewayProcess, tmp_path: Path
) -> None:
    energy_door = priced(front_door)
    alice, home, meter = household_member(didgw, energy_door, "alice", tmp_path / "ttyA")
    bob, bobs_home, _ = household_member(didgw, energy_door, "bob", tmp_path / "ttyB")
    now = datetime.now(TZ)
    readings = record_readings(energy_door.state, meter, now)
    energy_door.start(env={"TZ": ZONE})
    token, _ = alice.sign_in_http()
    hours, days, months = (expected(readings, k) for k in ("hour", "day", "month"))

    def history(by: str, day: str) -> dict:
        answer = get(energy_door, f"/api/energy/history?household={home}&by={by}&date={day}", token)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["retail_price"], body["feed_in_price"], body["time_zone"]) == (
            RETAIL, FEED_IN, ZONE,
        )  # fmt: skip
        for p in body["periods"]:
            assert p["cost_micro_eur"] == p["import_wh"] * RETAIL
            assert p["income_micro_eur"] == p["export_wh"] * FEED_IN
        return body

    by_hour = history("hour", "2026-11-15")
    assert len(by_hour["periods"]) == 24
    for p in by_hour["periods"]:
        label = f"2026-11-15 {p['label']}"
        assert (p["import_wh"], p["export_wh"]) == hours.get(label, (0, 0)), label
    by_day = history("day", "2026-11-20")
    assert [p["label"] for p in by_day["periods"]][0::29] == ["2026-11-01", "2026-11-30"]
    for p in by_day["periods"]:
        assert (p["import_wh"], p["export_wh"]) == days.get(p["label"], (0, 0)), p["label"]
    by_month = history("month", "2026-06-01")
    assert len(by_month["periods"]) == 12
    for p in by_month["periods"]:
        assert (p["import_wh"], p["export_wh"]) == months.get(p["label"], (0, 0)), p["label"]
    first, last = readings[0], readings[-1]
    assert by_month["totals"]["import_wh"] == last[1] - first[1]  # nothing lost, nothing twice
    assert by_month["totals"]["export_wh"] == last[2] - first[2]
    assert by_month["totals"]["cost_micro_eur"] == (last[1] - first[1]) * RETAIL

    now_figures = get(energy_door, f"/api/energy/now?household={home}", token).json()
    today = now.strftime("%Y-%m-%d")
    assert (now_figures["today"]["import_wh"], now_figures["today"]["export_wh"]) == days[today]
    assert now_figures["last_reading"] == last[0]
    assert now_figures["meters"][0]["link"] == "not_read"  # [meter] is off in this gateway
    hour = datetime.fromtimestamp(last[0] / 1000, TZ).hour
    assert now_figures["import_w"] == 300 + hour * 10  # from the signed reading itself

    # The page: the same numbers in its table, and a chart.
    page = get(energy_door, f"/energy?household={home}&by=month&date=2026-06-01", token)
    assert page.status_code == 200, energy_door.output[-3000:]
    total_in = f"{(last[1] - first[1]) / 1000:.2f}"
    assert re.search(rf"<th scope=\"row\">Total</th><td>{re.escape(total_in)}</td>", page.text)
    assert 'class="bar-import"' in page.text and 'class="bar-export"' in page.text
    assert "style=" not in page.text  # the CSP allows no inline style
    assert "Using from the grid" in page.text

    # Only her own households.
    bobs, _ = bob.sign_in_http()
    for path in (
        f"/api/energy/history?household={home}",
        f"/api/energy/now?household={home}",
        f"/energy?household={home}",
        f"/energy/stream?household={home}",
    ):
        refused = get(energy_door, path, bobs)
        assert refused.status_code == 403, (path, refused.text)
        assert str(last[1]) not in refused.text
    assert get(energy_door, f"/api/energy/now?household={bobs_home}", bobs).status_code == 200


def test_refusals_say_why_and_strangers_see_nothing(
    didgw: Run, front_door: GatewayProcess, tmp_path: Path
) -> None:
    energy_door = priced(front_door)
    alice, home, _ = household_member(didgw, energy_door, "alice", tmp_path / "ttyA")
    energy_door.start(env={"TZ": ZONE})
    stranger = get(energy_door, f"/api/energy/now?household={home}", None)
    assert stranger.status_code == 401 and stranger.json()["error"] == "unauthenticated"
    assert get(energy_door, f"/energy/stream?household={home}", None).status_code == 401
    page = get(energy_door, "/energy", None)
    assert (page.status_code, page.headers["Location"]) == (303, "/login")
    token, _ = alice.sign_in_http()
    for query, word in (
        ("by=week", "by"),
        ("by=hour&date=2026-13-01", "date"),
        ("by=day&date=1999-01-01", "date"),
        ("date=" + "9" * 400, "date"),
    ):
        answer = get(energy_door, f"/api/energy/history?household={home}&{query}", token)
        assert answer.status_code == 400, query
        assert answer.json()["detail"].startswith(word), answer.text
        assert get(energy_door, f"/energy?household={home}&{query}", token).status_code == 400
    missing = get(energy_door, "/api/energy/now", token)
    assert (missing.status_code, missing.json()["error"]) == (400, "bad_parameter")
    long = get(energy_door, "/api/energy/now?household=did:key:" + "z" * 600, token)
    assert long.status_code == 400
    other = get(energy_door, "/api/energy/now?household=did:key:z6MkNotHers", token)
    assert other.status_code == 403
    # with no readings yet: zeros and no power, not an error
    empty = get(energy_door, f"/api/energy/now?household={home}", token).json()
    assert empty["import_w"] is None and empty["last_reading"] is None
    assert empty["today"]["import_wh"] == 0
    assert get(energy_door, f"/energy?household={home}", token).status_code == 200
    # API tokens: a reader sees any household's energy, a facility manager's token none
    for role, status in (("reader", 200), ("facility-manager", 403)):
        made = didgw(
            "api-token", "create", f"t-{role}", "--role", role,
            "--state-dir", str(energy_door.state), "--config", str(energy_door.config),
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        answer = requests.get(
            f"{energy_door.url}/api/energy/history?household={home}&by=month",
            headers={"Authorization": f"Bearer {made.stdout.strip()}"},
            timeout=10,
        )
        assert answer.status_code == status, (role, answer.text)


class EventStream:
    """A server-sent event stream read with ``requests``: its events, one at a time."""

    def __init__(self, front_door: GatewayProcess, path: str, token: str) -> None:
        self.answer = requests.get(
            front_door.url + path,
            headers={"Cookie": f"{COOKIE}={token}", "Accept": "text/event-stream"},
            stream=True,
            timeout=(5, 10),
        )
        self.lines = self.answer.iter_lines(decode_unicode=True)

    def next(self) -> tuple[str, dict]:
        name, data = "", ""
        for line in self.lines:
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and name:
                return name, json.loads(data)
        raise EOFError("the stream ended")

    def rest(self) -> list[str]:
        """The names of the events left, until the server ends the stream."""
        names = []
        while True:
            try:
                names.append(self.next()[0])
            except EOFError:
                return names


@pytest.fixture
def meter_sims() -> Iterator[list[subprocess.Popen[bytes]]]:
    sims: list[subprocess.Popen[bytes]] = []
    yield sims
    for p in sims:
        p.terminate()
        p.wait(10)


def test_live_figures_arrive_as_readings_do_and_a_revocation_ends_the_stream(
    didgw: Run,
    front_door: GatewayProcess,
    tmp_path: Path,
    meter_sims: list[subprocess.Popen[bytes]],
) -> None:
    energy_door = priced(front_door)
    link = tmp_path / "ttyP1"
    alice, home, meter = household_member(didgw, energy_door, "alice", link)
    with energy_door.config.open("a") as f:
        f.write("\n[meter]\nenabled = true\nrecord_every_seconds = 0.0\nreconnect_seconds = 0.2\n")
    meter_sims.append(
        subprocess.Popen(
            [sys.executable, str(SIM), "--pty", str(link), "--rate", "4", "--seed", "2"],
            stderr=subprocess.DEVNULL,
        )
    )
    wait_until(link.exists, "the simulated meter's pty", 10)
    energy_door.start(env={"TZ": ZONE})
    token, _ = alice.sign_in_http()
    stream = EventStream(energy_door, f"/energy/stream?household={home}", token)
    assert stream.answer.headers["Content-Type"].startswith("text/event-stream")
    name, first = stream.next()
    assert name == "now" and first["household"] == home
    seen = {first["last_reading"]}
    for _ in range(3):  # each new reading on the record comes as an event
        name, now = stream.next()
        assert name == "now"
        assert now["last_reading"] not in seen and now["last_reading"] is not None
        seen.add(now["last_reading"])
        assert now["meters"][0]["did"] == meter and now["meters"][0]["link"] == "up"
        assert now["today"]["import_wh"] >= 0 and now["import_w"] is not None
    # a second stream of the same session replaces the first
    again = EventStream(energy_door, f"/energy/stream?household={home}", token)
    assert again.next()[0] == "now"
    assert stream.rest()[-1] == "end"
    # revoking her credential ends the stream (read meanwhile, to see when the end came)
    ended: list[tuple[list[str], float]] = []
    reader = threading.Thread(target=lambda: ended.append((again.rest(), time.time())))
    reader.start()
    on = ("--state-dir", str(energy_door.state))
    revoked = didgw("cred", "revoke", alice.credential_id, "--reason", "phone lost", *on)
    assert revoked.returncode == 0, revoked.stderr
    reader.join(10)
    [(names, end_s)] = ended
    assert names[-1] == "end", names
    db = connect(energy_door.state / "didgw.db")
    [(revoked_ms,)] = db.execute(
        "SELECT revoked_ms FROM credentials WHERE id = ?", [alice.credential_id]
    ).fetchall()
    print(f"the stream ended {end_s * 1000 - revoked_ms:.0f} ms after the revocation")
    assert get(energy_door, f"/api/energy/now?household={home}", token).status_code == 401


def test_every_reading_is_listed_with_its_receipt_newest_first_in_pages(
    didgw: Run, front_door: GatewayProcess, tmp_path: Path
) -> None:
    """/energy/readings and /api/energy/readings: her meter's readings one by one, newest
    first, a hundred a page, each naming its record entry (the receipt link); another
    household's are refused."""
    energy_door = priced(front_door)
    alice, home, meter = household_member(didgw, energy_door, "alice", tmp_path / "ttyA")
    _, bobs_home, _ = household_member(didgw, energy_door, "bob", tmp_path / "ttyB")
    readings = record_readings(energy_door.state, meter, datetime.now(TZ))
    energy_door.start(env={"TZ": ZONE})
    token, _ = alice.sign_in_http()
    seen: list[dict[str, int]] = []
    before = ""
    while True:
        page = get(energy_door, f"/api/energy/readings?household={home}{before}", token).json()
        seen += page["readings"]
        if page["next_before"] is None:
            break
        assert len(page["readings"]) == 100
        before = f"&before={page['next_before']}"
    assert [(r["ts"], r["import_wh"], r["export_wh"]) for r in seen] == readings[::-1]
    entries = {
        seq: did
        for seq, did in connect(energy_door.state / "didgw.db").execute(
            "SELECT e.seq, a.did FROM chain_entries e JOIN chain_actors a ON a.id = e.actor"
        )
    }
    assert all(entries[r["entry"]] == meter for r in seen)
    html = get(energy_door, f"/energy/readings?household={home}", token).text
    newest = seen[0]
    assert f'href="/proof/receipt/{newest["entry"]}"' in html
    assert f"in {newest['import_wh'] / 1000:.3f} kWh" in html
    assert 'rel="next"' in html and "before=" in html
    assert get(energy_door, f"/energy/readings?household={bobs_home}", token).status_code == 403
    other = get(energy_door, f"/api/energy/readings?household={bobs_home}", token)
    assert other.status_code == 403
    assert get(energy_door, f"/api/energy/readings?household={home}", None).status_code == 401
    for before in ("abc", "-5", "9" * 30, ""):  # not a time: the first page
        page = get(energy_door, f"/api/energy/readings?household={home}&before={before}", token)
        assert page.json()["readings"][0] == newest, before

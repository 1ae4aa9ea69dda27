"""People over MQTT, end to end: a real mosquitto, the real ``didgw run``, the wallet program.

A facility manager's wallet registers, suspends and revokes a device (which really loses
its broker access); a household member orders for her household and no other; and the
refusals: wrong role, a credential revoked during the session, a presentation for another
nonce or audience, an expired credential. The record holds each action with the
presentation's digest, and the disclosed personal data in an erasable entry of its own.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import device as dev
import pytest
import wallet as wal
from broker import Mosquitto, free_port
from gateway_process import GatewayProcess
from people_web import issue_credential
from support import Run

from gateway.chain.store import ChainStore
from gateway.config import load_config
from gateway.db import connect
from gateway.service import open_gateway

pytestmark = pytest.mark.integration


class Site:
    """One gateway state, its config, and the running gateway."""

    def __init__(self, didgw: Run, broker: Mosquitto, tmp_path: Path, extra: str = "") -> None:
        self.didgw, self.broker, self.tmp = didgw, broker, tmp_path
        self.state = tmp_path / "state"
        out = didgw("init", "--state-dir", str(self.state)).stdout
        self.did = out.split("Gateway DID: ")[1].strip()
        self.config = tmp_path / "gateway.toml"
        self.config.write_text(
            f"[metrics]\nport = {free_port()}\n{extra}\n"
            "[mqtt]\n" + broker.gateway_settings() + "verify_workers = 0\n"
        )
        self.process = GatewayProcess(self.state, broker, self.config)

    def run(self, *args: str) -> str:
        result = self.didgw(*args, "--state-dir", str(self.state))
        assert result.returncode == 0, result.stderr
        return result.stdout + result.stderr

    def wallet(self, name: str) -> Any:
        return wal.Wallet(
            f"{self.broker.host}:{self.broker.port}",
            account_broker=f"{self.broker.host}:{self.broker.accounts_port}",
            key_path=self.tmp / f"{name}.pem",
            gateway_did=self.did,
            prefix=self.broker.prefix,
        )

    def issue(self, kind: str, subject: str, name: str, *claims: str) -> tuple[str, str]:
        """(credential id, SD-JWT text) issued with ``didgw cred issue``."""
        path = self.tmp / f"{name}.sdjwt"
        return issue_credential(self.didgw, self.state, kind, subject, claims, out=path)

    def device(self, name: str) -> Any:
        return dev.Device(
            f"{self.broker.host}:{self.broker.port}",
            account_broker=f"{self.broker.host}:{self.broker.accounts_port}",
            key_path=self.tmp / f"{name}.pem",
            state_dir=self.tmp / f"{name}-state",
            prefix=self.broker.prefix,
            gateway_did=self.did,
        )

    def entries(self, kind: str) -> list[Any]:
        store = ChainStore(connect(self.state / "didgw.db"))
        try:
            return [e for e in store.entries() if e.kind == kind]
        finally:
            store.close()


@pytest.fixture
def site(didgw: Run, mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Site]:
    s = Site(didgw, mosquitto, tmp_path)
    yield s
    s.process.kill()


def until(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def test_facility_manager_registers_suspends_and_revokes_a_device_on_the_record(
    site: Site,
) -> None:
    bob = site.wallet("bob")
    _, credential = site.issue(
        "facility-manager", bob.did, "bob", "name=Bob Builder", "site=Block A"
    )
    site.process.start()
    session = bob.authenticate([credential], ["site"])  # shows the site, not his name
    assert session.permissions == ["devices"]
    bob.connect()
    sensor = site.device("sensor")
    answer = bob.request("register", did=sensor.did, name="hall", kind="sensor")
    assert answer == {"id": answer["id"], "status": "done"}
    sensor.open(timeout=15)  # registered remotely: it can authenticate and connect
    assert sensor.connected
    answer = bob.request("suspend", did=sensor.did, reason="battery swap")
    assert answer["status"] == "done"
    assert until(lambda: not sensor.connected), "the suspended device is still connected"
    answer = bob.request("revoke", did=sensor.did, reason="stolen")
    assert answer["status"] == "done"
    answer = bob.request("suspend", did=sensor.did, reason="again")
    assert answer == {"id": answer["id"], "status": "refused", "reason": "registry_refused"}
    bad = bob.request("order", order="x.y.z")
    assert bad["reason"] == "not_member"
    sensor.close()
    bob.close()
    assert site.process.stop() == 0

    changes = [json.loads(e.payload) for e in site.entries("registry")]
    assert [(c["action"], c["by"]) for c in changes if c["device"] == sensor.did] == [
        ("register", bob.did),
        ("suspend", bob.did),
        ("revoke", bob.did),
    ]
    actions = [json.loads(e.payload) for e in site.entries("person-action")]
    assert [a["action"] for a in actions] == ["register", "suspend", "revoke"]
    [disclosure] = site.entries("disclosure")
    digest = json.loads(disclosure.payload)["presentations"][0]
    assert len(digest) == 64
    assert all(
        a["presentations"] == [digest] and a["disclosure"] == disclosure.seq for a in actions
    )
    assert all(a["device"] == sensor.did for a in actions)
    assert b"Block A" in disclosure.payload and b"Bob Builder" not in disclosure.payload
    assert not any(b"Block A" in e.payload for e in site.entries("person-action"))
    assert not any(b"Block A" in e.payload for e in site.entries("person-session"))
    site.run("chain", "erase", str(disclosure.seq), "--reason", "left the company")
    [erased] = site.entries("disclosure")
    assert erased.erased
    site.run("chain", "verify")
    assert len(site.entries("person-action")) == 3


def test_household_member_orders_for_her_household_and_no_other(
    didgw: Run, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    site = Site(didgw, mosquitto, tmp_path, "[market]\nenabled = true\ninterval_seconds = 60\n")
    try:
        houses = []
        for name in ("home", "neighbour"):
            house = site.device(name)
            site.run("device", "register", house.did, "--name", name, "--kind", "household")
            site.run(
                "meter",
                "enroll",
                "--household",
                house.did,
                "--name",
                f"{name} meter",
                "--port",
                str(tmp_path / f"tty-{name}"),
            )
            houses.append(house)
        home, neighbour = houses
        alice = site.wallet("alice")
        _, credential = site.issue(
            "household", alice.did, "alice", f"household={home.did}", "role=buyer", "name=Alice"
        )
        site.process.start()
        session = alice.authenticate([credential], ["household", "role"])
        assert session.permissions == [f"trade:{home.did}:buyer"]
        alice.connect()
        start = (int(time.time() * 1000) // 60_000 + 2) * 60_000
        accepted = alice.order(home.did, side="buy", wh=500, price=150, interval=start)
        assert accepted["status"] == "accepted", accepted
        other = alice.order(neighbour.did, side="buy", wh=500, price=150, interval=start)
        assert other["reason"] == "not_member"
        sell = alice.order(home.did, side="sell", wh=500, price=150, interval=start)
        assert sell["reason"] == "wrong_role"
        closed = alice.order(home.did, side="buy", wh=500, price=150, interval=start - 180_000)
        assert closed["reason"] == "interval_closed"  # then the market's own checks
        manage = alice.request("suspend", did=home.did, reason="no")
        assert manage["reason"] == "not_facility_manager"
        alice.close()
        assert site.process.stop() == 0
    finally:
        site.process.kill()
    [order] = [e for e in site.entries("order") if e.actor == alice.did]
    assert order.seq == accepted["entry"]
    [action] = [json.loads(e.payload) for e in site.entries("person-action")]
    assert action["action"] == "order" and action["order"] == order.seq
    [disclosure] = site.entries("disclosure")
    assert action["disclosure"] == disclosure.seq
    assert b"Alice" not in disclosure.payload  # her name was not disclosed
    assert home.did.encode() in disclosure.payload


def test_revoked_during_the_session_the_account_goes_and_it_cannot_come_back(
    site: Site,
) -> None:
    bob = site.wallet("bob")
    cred_id, credential = site.issue("facility-manager", bob.did, "bob")
    carol = site.wallet("carol")
    _, household = site.issue(
        "household", carol.did, "carol", f"household={bob.did}", "role=seller"
    )
    site.process.start()
    bob.authenticate([credential], [])
    bob.connect()
    assert bob.connected
    site.run("cred", "revoke", cred_id, "--reason", "left", "--by", "fm:root")
    assert until(lambda: not bob.connected), "the revoked person is still connected"
    with pytest.raises(wal.Refused) as refused:
        bob.authenticate([credential], [])
    assert refused.value.reason == "revoked"
    # Wrong role: a household member is no facility manager.
    carol.authenticate([household], ["household", "role"])
    carol.connect()
    assert carol.request("revoke", did=bob.did, reason="x")["reason"] == "not_facility_manager"
    carol.close()
    # The revocation list is retained for anyone, and shows the revocation.
    with site.broker.peer() as anyone:
        anyone.connect()
        anyone.subscribe(f"{site.broker.prefix}/status-list")
        _, payload = anyone.next_message(timeout=10)
    assert json.loads(payload)["type"] == ["VerifiableCredential", "BitstringStatusListCredential"]


def test_suspended_during_the_session_the_account_goes_until_resumed(site: Site) -> None:
    bob = site.wallet("bob")
    cred_id, credential = site.issue("facility-manager", bob.did, "bob")
    site.process.start()
    bob.authenticate([credential], [])
    bob.connect()
    assert bob.connected
    site.run("cred", "suspend", cred_id, "--reason", "phone lost", "--by", "fm:root")
    assert until(lambda: not bob.connected), "the suspended person is still connected"
    with pytest.raises(wal.Refused) as refused:
        bob.authenticate([credential], [])
    assert refused.value.reason == "suspended"
    site.run("cred", "resume", cred_id, "--reason", "phone found", "--by", "fm:root")
    bob.authenticate([credential], [])  # the same credential goes through again
    bob.connect()
    assert bob.connected
    bob.close()
    actions = [json.loads(e.payload)["action"] for e in site.entries("credential")]
    assert actions == ["issue", "suspend", "resume"]


def test_presentations_for_another_nonce_or_audience_or_expired_are_refused(
    site: Site,
) -> None:
    bob = site.wallet("bob")
    _, credential = site.issue("facility-manager", bob.did, "bob")
    with open_gateway_state(site) as gateway:
        expired = (
            gateway.issuer()
            .issue(
                "facility-manager",
                bob.did,
                {},
                fmt="sd-jwt",
                signer=gateway.signer({}),
                now=time.time() - 2 * 365 * 86400,
                random_bytes=secrets.token_bytes,
            )
            .text
        )
    site.process.start()
    with pytest.raises(wal.Refused) as refused:
        bob.authenticate([credential], [], mutate=lambda n, a: ("A" * 43, a))
    assert refused.value.reason == "bad_nonce"
    with pytest.raises(wal.Refused) as refused:
        bob.authenticate([credential], [], mutate=lambda n, a: (n, "did:key:z6MkOther"))
    assert refused.value.reason == "bad_nonce"
    with pytest.raises(wal.Refused) as refused:
        bob.authenticate([expired], [])
    assert refused.value.reason == "bad_presentation"
    assert bob.authenticate([credential], []).permissions == ["devices"]
    assert "wallet authentication refused" in site.process.output
    assert not site.entries("person-session")[1:]  # only the good one is on the record


def test_a_refusal_of_someone_elses_presentation_does_not_end_a_wallets_login(
    site: Site,
) -> None:
    """The reply topic is public: the gateway's refusal of a presentation forged in a
    wallet's name (and reply token) reaches the wallet too. Here such a refusal lands on the
    wallet's topic between its challenge and its own presentation (published with the
    gateway's account, as the gateway publishes it); the wallet still logs in."""
    bob = site.wallet("bob")
    _, credential = site.issue("facility-manager", bob.did, "bob")
    site.process.start()
    forged = threading.Event()
    watcher = site.broker.gateway()
    watcher.connect()
    try:
        watcher.subscribe(f"{site.broker.prefix}/auth/res/+")

        def forge() -> None:
            topic, payload = watcher.next_message(timeout=15)
            assert json.loads(payload)["type"] == "challenge"
            reply = topic.rsplit("/", 1)[1]
            refusal = {"type": "refused", "reason": "bad_presentation", "reply": reply}
            watcher.publish(topic, json.dumps(refusal))
            forged.set()

        forger = threading.Thread(target=forge)
        forger.start()

        def after_the_forgery(nonce: str, aud: str) -> tuple[str, str]:
            assert forged.wait(15), "the refusal was not published"
            return nonce, aud

        session = bob.authenticate([credential], [], mutate=after_the_forgery)
        forger.join(15)
    finally:
        watcher.close()
    assert session.permissions == ["devices"]


def open_gateway_state(site: Site) -> Any:
    return open_gateway(load_config(site.config), site.state)

"""One independent wallet end to end against a real ``didgw run`` over HTTPS (a certificate
of the gateway's own authority, which the wallet is told to trust): it receives a credential
of each kind by OpenID4VCI (an offer made with ``didgw cred offer``), then uses it to sign in
by OpenID4VP at /login. The wallet is the OpenWallet Foundation's oid4vc-ts with sd-jwt-js
and dcql (tests/interop/oid4vc-js); nothing in it comes from didgw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gateway_process import GatewayProcess
from js_wallet import CLAIMS, SOMEONE, new_wallet, present, receive
from people_web import Browser
from support import Run

from gateway.chain.store import ChainStore
from gateway.db import connect

pytestmark = pytest.mark.integration

#: What each kind's sign-in discloses: the DCQL query asks for household and role only.
DISCLOSED = {"household": {"household": SOMEONE, "role": "seller"}, "facility-manager": {}}


def entries(door: GatewayProcess, kind: str) -> list[dict[str, object]]:
    db = connect(door.state / "didgw.db")
    try:
        found = [e for e in ChainStore(db).entries() if e.kind == kind]
        return [{"actor": e.actor, **json.loads(e.payload)} for e in found]
    finally:
        db.close()


@pytest.mark.parametrize("kind", list(CLAIMS))
def test_a_credential_received_by_openid4vci_signs_in_by_openid4vp(
    https_front_door: GatewayProcess, didgw: Run, tmp_path: Path, kind: str
) -> None:
    front_door = https_front_door
    front_door.start()
    ca = front_door.ca
    assert ca is not None
    key, holder = new_wallet(tmp_path)
    args = [f"--claim={k}={v}" for k, v in CLAIMS[kind].items()]
    offered = didgw(
        "cred", "offer", kind, *args, "--json",
        "--state-dir", str(front_door.state), "--config", str(front_door.config),
    )  # fmt: skip
    assert offered.returncode == 0, offered.stderr
    credential = tmp_path / f"{kind}.sdjwt"
    made = json.loads(offered.stdout)
    assert made["uri"].startswith("openid-credential-offer://?credential_offer_uri=https")
    code, summary = receive(key, made, credential, ca=ca)
    assert code == 0, summary

    browser = Browser(front_door.url, ca=str(ca))
    link, request_id = browser.start()
    answered = present(key, [credential], link, ca=ca)
    if kind not in DISCLOSED:  # grants nothing here: the sign-in query does not ask for it
        assert answered.returncode == 2
        assert "no credential of this wallet answers the query" in answered.stderr
        assert browser.finish(request_id).status_code == 200  # still waiting: no session
        assert holder not in browser.get("/").text
        assert entries(front_door, "person-session") == []
        return
    assert answered.returncode == 0, answered.stdout + answered.stderr
    assert json.loads(answered.stdout)["status"] == 200
    assert browser.finish(request_id).status_code == 303
    assert holder in browser.get("/").text
    [disclosure] = entries(front_door, "disclosure")
    [session] = entries(front_door, "person-session")
    assert disclosure["actor"] == session["actor"] == holder
    assert disclosure["claims"] == {f"urn:didgw:credential:{kind}": DISCLOSED[kind]}

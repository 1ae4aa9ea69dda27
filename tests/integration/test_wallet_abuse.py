"""What an anonymous client can make the wallet side do, against a real mosquitto, the real
``didgw run`` and the wallet program (firmware-sim/wallet.py).

* A presentation naming an issuer the gateway does not trust (a ``did:web`` on a host the
  attacker chose, or a ``did:key`` whose credential points its status list at such a host)
  must make no outbound connection at all: the host here is a real HTTPS server on
  loopback that answers a byte at a time, and it must receive nothing while a facility
  manager logs in as usual.
* A flood of anonymous hellos (a fresh ``did:key`` each) must not evict a login in progress,
  and people the gateway issued credentials to still get a challenge while it lasts.
* Refusals are logged at most 20 a time, then counted by reason.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import device as dev
import pytest
import wallet as wal
from broker import Mosquitto, Peer
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from gateway_process import GatewayProcess, gateway_did
from pki import Pki, Tarpit, make_pki
from support import Run, wait_until

from gateway.credentials import sd_jwt
from gateway.credentials.kinds import KINDS
from gateway.identity import Signer
from gateway.identity.did_key import did_from_public_key, parse_did_key
from gateway.identity.keystore import generate_key

pytestmark = pytest.mark.integration

MANAGER_VCT = KINDS["facility-manager"].vct


@dataclass
class Site:
    didgw: Run
    broker: Mosquitto
    gateway: GatewayProcess
    did: str
    tmp: Path

    @property
    def prefix(self) -> str:
        return self.broker.prefix

    def wallet(self, name: str) -> Any:
        return wal.Wallet(
            f"{self.broker.host}:{self.broker.port}",
            key_path=self.tmp / f"{name}.pem",
            gateway_did=self.did,
            prefix=self.prefix,
        )

    def issue(self, kind: str, subject: str, name: str) -> str:
        """An SD-JWT VC issued with ``didgw cred issue``."""
        path = self.tmp / f"{name}.sdjwt"
        result = self.didgw(
            "cred", "issue", kind, "--subject", subject, "--format", "sd-jwt", "-o", str(path),
            "--state-dir", str(self.gateway.state),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return path.read_text().strip()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def site(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, pki: Pki, tmp_path: Path
) -> Site:
    with gateway.config.open("a") as config:  # the [mqtt] table is last
        config.write(f'verify_workers = 0\n\n[resolver]\nca_file = "{pki.ca_file}"\n')
    return Site(didgw, mosquitto, gateway, gateway_did(didgw, gateway.state), tmp_path)


@pytest.fixture
def tarpit(pki: Pki) -> Iterator[Tarpit]:
    server = Tarpit(pki, b"{}", interval=0.25)
    yield server
    server.stop()


def forged_credential(issuer: Signer, holder_did: str, **claims: Any) -> str:
    """A facility manager's SD-JWT VC about ``holder_did``, signed by ``issuer``."""
    now = int(time.time())
    holder_key = parse_did_key(holder_did).public_key
    body = {
        "iss": issuer.did,
        "vct": MANAGER_VCT,
        "sub": holder_did,
        "cnf": {"jwk": sd_jwt.ed25519_jwk(holder_key)},
        "iat": now,
        "exp": now + 3600,
        **claims,
    }
    return sd_jwt.issue(body, {}, issuer, random_bytes=secrets.token_bytes)


@dataclass
class Attempt:
    """An anonymous wallet connection that said hello and got its challenge."""

    peer: Peer
    reply: str
    challenge: dict[str, Any]


def say_hello(site: Site, holder: Any) -> Attempt:
    reply = secrets.token_urlsafe(18)
    peer = site.broker.peer()
    peer.connect()
    peer.subscribe(f"{site.prefix}/auth/res/{reply}")
    hello = {"type": "hello", "did": holder.did, "reply": reply}
    peer.publish(f"{site.prefix}/auth/wallet", json.dumps(hello))
    _, raw = peer.next_message(timeout=10)
    challenge = json.loads(raw)
    assert challenge["type"] == "challenge", challenge
    return Attempt(peer, reply, challenge)


def present(site: Site, attempt: Attempt, holder: Any, credential: str) -> None:
    """``credential`` presented by ``holder``'s wallet key for ``attempt``'s challenge, on
    the raw connection: once this returns, the presentation is at the broker."""
    presentation = wal.present(
        credential,
        [],
        holder.identity,
        nonce=attempt.challenge["nonce"],
        aud=attempt.challenge["gateway"],
        epk=dev._raw_public(X25519PrivateKey.generate()),
        iat=int(time.time()),
    )
    message = {"type": "presentation", "did": holder.did, "reply": attempt.reply}
    attempt.peer.publish(
        f"{site.prefix}/auth/wallet", json.dumps({**message, "presentations": [presentation]})
    )


@pytest.mark.parametrize("names", ["did:web issuer", "status list"])
def test_an_untrusted_issuer_makes_no_connection_and_a_real_login_goes_through(
    site: Site, tarpit: Tarpit, names: str
) -> None:
    bob = site.wallet("bob")
    credential = site.issue("facility-manager", bob.did, "bob")
    mallory = site.wallet("mallory")
    if names == "did:web issuer":
        host = f"did:web:localhost%3A{tarpit.port}"
        forged = forged_credential(Signer(generate_key(), f"{host}#key-1"), mallory.did)
    else:  # a did:key issuer needs no resolution; its credential names a status list
        uri = f"https://localhost:{tarpit.port}/status"
        status = {"status_list": {"idx": 7, "uri": uri}}
        forged = forged_credential(Signer.for_did_key(generate_key()), mallory.did, status=status)
    site.gateway.start()
    attempts = [say_hello(site, mallory) for _ in range(3)]
    try:
        for attempt in attempts:
            present(site, attempt, mallory, forged)
        session = bob.authenticate([credential], [])
        assert session.permissions == ["devices"]
        for attempt in attempts:
            _, answer = attempt.peer.next_message(timeout=10)
            assert json.loads(answer) == {"type": "refused", "reason": "not_permitted"}
    finally:
        for attempt in attempts:
            attempt.peer.close()
    assert tarpit.connections == 0, "the gateway connected to a host an anonymous client named"
    assert "are not trusted here" in site.gateway.output


def flood(site: Site, count: int, did: Callable[[], str], batch: int = 500) -> list[str]:
    """``count`` anonymous hellos for ``did()``, all with one reply token; the answers'
    types (a challenge, or a refusal's reason), once the gateway has answered each."""
    reply = secrets.token_urlsafe(18)
    answers: list[str] = []
    with site.broker.peer() as peer:
        peer.connect()
        peer.subscribe(f"{site.prefix}/auth/res/{reply}")
        for start in range(0, count, batch):
            size = min(batch, count - start)
            for _ in range(size):
                hello = {"type": "hello", "did": did(), "reply": reply}
                peer.client.publish(f"{site.prefix}/auth/wallet", json.dumps(hello), qos=1)
            for _ in range(size):  # one batch at a time: nothing queues up at the broker
                _, raw = peer.next_message(timeout=30)
                message = json.loads(raw)
                answers.append(message.get("reason") or message["type"])
    return answers


def random_did_key() -> str:
    return did_from_public_key(secrets.token_bytes(32))


def test_a_flood_of_hellos_evicts_no_pending_login_and_holders_still_get_in(site: Site) -> None:
    bob, carol = site.wallet("bob"), site.wallet("carol")
    bob_credential = site.issue("facility-manager", bob.did, "bob")
    carol_credential = site.issue("facility-manager", carol.did, "carol")
    site.gateway.start()
    answers: list[str] = []

    def flood_while_pending(nonce: str, aud: str) -> tuple[str, str]:
        answers.extend(flood(site, 4200, random_did_key))
        return nonce, aud

    # Bob's challenge is out; 4,200 strangers say hello; then Bob presents.
    session = bob.authenticate([bob_credential], [], mutate=flood_while_pending)
    assert session.permissions == ["devices"]
    assert set(answers) == {"challenge", "rate_limited"}
    # While the strangers' challenges are outstanding, people the gateway issued
    # credentials to still get in; another stranger does not get a challenge.
    assert carol.authenticate([carol_credential], []).permissions == ["devices"]
    assert bob.authenticate([bob_credential], []).permissions == ["devices"]
    assert flood(site, 1, random_did_key) == ["rate_limited"]


def accounted(output: str) -> int:
    """Refusals logged one by one, plus those counted in the lines that summarise the rest."""
    logged = len(re.findall(r"wallet authentication refused:", output))
    counted = re.findall(r"(\d+) more wallet authentication refusals", output)
    return logged + sum(int(n) for n in counted)


def test_refusals_are_logged_twenty_at_a_time_then_counted_by_reason(site: Site) -> None:
    site.gateway.start()
    answers = flood(site, 2000, lambda: "did:web:example.com")
    assert set(answers) == {"not_permitted"}
    wait_until(
        lambda: accounted(site.gateway.output) == 2000,
        "every refusal to be logged or counted",
        timeout=30,
        details=lambda: site.gateway.output[-2000:],
    )
    output = site.gateway.output
    logged = len(re.findall(r"wallet authentication refused:", output))
    counted = [int(n) for n in re.findall(r"(\d+) more wallet authentication refusals", output)]
    assert logged <= 20 * len(counted)  # 20 per 10 s at most
    assert logged + sum(counted) == 2000, "every refusal is logged or counted"
    assert re.search(r"refusals not logged in \d+ s: not_permitted \d+", output)

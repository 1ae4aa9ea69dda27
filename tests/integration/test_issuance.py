"""OpenID4VCI against a real ``didgw run``: the operator makes an offer with ``didgw cred
offer``, an independent wallet (the OpenWallet Foundation's @openid4vc/openid4vci, in
tests/interop/oid4vc-js/receive.mjs) receives the credential, and ``didgw cred verify``
checks it. Then the refusals a wallet meets: an offer used twice, expired, locked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
from gateway_process import GatewayProcess
from js_wallet import CLAIMS, new_wallet, receive
from support import Run, wait_until

from gateway.credentials.sd_jwt import b64u_decode

pytestmark = pytest.mark.integration


def offer(
    didgw: Run, door: GatewayProcess, kind: str, claims: dict[str, str], expires: str = "10m"
) -> dict[str, str]:
    args = [f"--claim={k}={v}" for k, v in claims.items()]
    made = didgw(
        "cred", "offer", kind, *args, "--expires", expires, "--json",
        "--state-dir", str(door.state), "--config", str(door.config),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return dict(json.loads(made.stdout))


def verify(didgw: Run, door: GatewayProcess, path: Path) -> dict[str, Any]:
    checked = didgw(
        "cred", "verify", str(path), "--state-dir", str(door.state), "--config", str(door.config)
    )
    assert checked.returncode == 0, checked.stderr
    return dict(json.loads(checked.stdout.split("\n", 1)[1]))


@pytest.mark.parametrize("kind", list(CLAIMS))
def test_each_kind_is_received_by_an_independent_wallet_and_verifies(
    front_door: GatewayProcess, didgw: Run, tmp_path: Path, kind: str
) -> None:
    front_door.start()
    key, holder = new_wallet(tmp_path)
    made = offer(didgw, front_door, kind, CLAIMS[kind])
    out = tmp_path / "credential.sdjwt"
    code, summary = receive(key, made, out)
    assert code == 0, summary
    assert summary["version"] == "V1"  # the library read our metadata as OpenID4VCI 1.0
    assert (out.stat().st_mode & 0o777) == 0o600
    checked = verify(didgw, front_door, out)
    assert checked["vct"] == f"urn:didgw:credential:{kind}"
    claims = checked["claims"]
    assert claims["sub"] == holder  # about the wallet's did:key
    wallet_jwk = json.loads(key.read_text())
    assert claims["cnf"]["jwk"] == {"kty": "OKP", "crv": "Ed25519", "x": wallet_jwk["x"]}
    assert b64u_decode(claims["cnf"]["jwk"]["x"], "x")  # a real key, bound
    for name, value in CLAIMS[kind].items():
        assert claims[name] == value
    listed = didgw(
        "cred", "list", "--json", "--state-dir", str(front_door.state),
        "--config", str(front_door.config),
    )  # fmt: skip
    (record,) = json.loads(listed.stdout)
    assert (record["type"], record["subject"], record["format"]) == (kind, holder, "sd-jwt")


def test_a_wallet_proving_its_key_by_jwk_is_bound_the_same_way(
    front_door: GatewayProcess, didgw: Run, tmp_path: Path
) -> None:
    front_door.start()
    key, holder = new_wallet(tmp_path)
    out = tmp_path / "credential.sdjwt"
    code, summary = receive(key, offer(didgw, front_door, "household", CLAIMS["household"]), out,
                            binding="jwk")  # fmt: skip
    assert code == 0, summary
    assert summary["sub"] == holder
    assert verify(didgw, front_door, out)["claims"]["sub"] == holder


def test_an_offer_used_twice_is_refused_with_the_reason(
    front_door: GatewayProcess, didgw: Run, tmp_path: Path
) -> None:
    front_door.start()
    key, _ = new_wallet(tmp_path)
    made = offer(didgw, front_door, "facility-manager", CLAIMS["facility-manager"])
    assert receive(key, made, tmp_path / "first.sdjwt")[0] == 0
    thief, _ = new_wallet(tmp_path, "thief")
    code, answer = receive(thief, made, tmp_path / "second.sdjwt")
    assert code == 1
    assert answer["status"] == 410
    assert "this offer was already used" in json.dumps(answer)
    assert not (tmp_path / "second.sdjwt").exists()
    # Straight to the token endpoint with the code read the first time: the same reason.
    served = offer_code(made)
    token = requests.post(
        front_door.url + "/oid4vci/token",
        data={"grant_type": PRE_AUTH, "pre-authorized_code": served, "tx_code": made["pin"]},
        timeout=10,
    )
    assert token.status_code == 400
    assert token.json()["error"] == "invalid_grant"
    assert "already used" in token.json()["error_description"]


PRE_AUTH = "urn:ietf:params:oauth:grant-type:pre-authorized_code"


def offer_code(made: dict[str, str]) -> str:
    from gateway.credentials.offers import code_of

    return code_of(made["uri"].rsplit("%2F", 1)[1])


def test_an_expired_offer_is_refused_with_the_reason(
    front_door: GatewayProcess, didgw: Run, tmp_path: Path
) -> None:
    front_door.start()
    key, _ = new_wallet(tmp_path)
    made = offer(didgw, front_door, "vouch", CLAIMS["vouch"], expires="1s")
    url = requests.utils.unquote(made["uri"].split("=", 1)[1])
    wait_until(lambda: requests.get(url, timeout=10).status_code == 410, "the offer to expire")
    code, answer = receive(key, made, tmp_path / "late.sdjwt")
    assert code == 1
    assert "this offer expired at" in json.dumps(answer)


def test_five_wrong_pins_lock_the_offer(
    front_door: GatewayProcess, didgw: Run, tmp_path: Path
) -> None:
    front_door.start()
    key, _ = new_wallet(tmp_path)
    made = offer(didgw, front_door, "device-owner", CLAIMS["device-owner"])
    wrong = "000000" if made["pin"] != "000000" else "111111"
    answers = [receive(key, made, tmp_path / "x.sdjwt", pin=wrong) for _ in range(5)]
    assert [a[1]["refused"] for a in answers] == ["token"] * 5
    assert "4 tries left" in json.dumps(answers[0][1])
    assert "now locked" in json.dumps(answers[4][1])
    code, answer = receive(key, made, tmp_path / "x.sdjwt")  # the right PIN, too late
    assert code == 1
    assert "locked after 5 wrong transaction codes" in json.dumps(answer)


def test_a_proof_for_another_issuer_gets_nothing_and_a_token_one_credential(
    front_door: GatewayProcess, didgw: Run, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.credentials.sd_jwt import b64u

    front_door.start()
    made = offer(didgw, front_door, "facility-manager", CLAIMS["facility-manager"])
    token = requests.post(
        front_door.url + "/oid4vci/token",
        data={"grant_type": PRE_AUTH, "pre-authorized_code": offer_code(made),
              "tx_code": made["pin"]},
        timeout=10,
    ).json()["access_token"]  # fmt: skip
    key = Ed25519PrivateKey.generate()
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64u(key.public_key().public_bytes_raw())}

    def ask(aud: str, nonce: str) -> requests.Response:
        import time

        head = {"typ": "openid4vci-proof+jwt", "alg": "EdDSA", "jwk": jwk}
        body = {"aud": aud, "iat": int(time.time()), "nonce": nonce}
        signing = f"{b64u(json.dumps(head).encode())}.{b64u(json.dumps(body).encode())}"
        jwt = f"{signing}.{b64u(key.sign(signing.encode()))}"
        return requests.post(
            front_door.url + "/oid4vci/credential",
            json={"credential_configuration_id": "facility-manager", "proofs": {"jwt": [jwt]}},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )

    def nonce() -> str:
        return str(requests.post(front_door.url + "/oid4vci/nonce", timeout=10).json()["c_nonce"])

    wrong = ask("https://another-issuer.example", nonce())
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_proof")
    used = nonce()
    assert ask(front_door.url, used).status_code == 200  # a jwk proof, built here
    replayed = ask(front_door.url, used)
    assert replayed.status_code == 401  # the token's one credential is out
    no_token = requests.post(front_door.url + "/oid4vci/credential", json={}, timeout=10)
    assert no_token.status_code == 401
    assert no_token.headers["WWW-Authenticate"].startswith("Bearer")

"""The wallet protocol's core (``auth/wallet.py``) and people's requests, without a broker."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.auth import person_requests as requests
from gateway.auth.handshake import Handshake
from gateway.auth.secret import open_secret
from gateway.auth.strict import AuthRefused, b64u, b64u_decode
from gateway.auth.wallet import WalletAuthenticator, holder_status
from gateway.credentials import sd_jwt
from gateway.credentials.permissions import Permissions
from gateway.errors import CredentialError
from gateway.identity import offline_resolver
from gateway.identity.keystore import public_bytes
from gateway.identity.signing import Signer, verify_jws

NOW_MS = 1_700_000_000_000
GATEWAY = Signer.for_did_key(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
HOLDER = Signer.for_did_key(Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))))
HOUSEHOLD = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
REPLY = "reply-token-0123456789"


def credential(vct: str = "urn:didgw:credential:household", exp: int | None = None) -> str:
    clear = {
        "iss": GATEWAY.did,
        "iat": NOW_MS // 1000 - 10,
        "exp": exp or NOW_MS // 1000 + 86400,
        "vct": vct,
        "sub": HOLDER.did,
        "cnf": {"jwk": sd_jwt.ed25519_jwk(public_bytes(HOLDER.private_key))},
    }
    selective = {"household": HOUSEHOLD, "role": "buyer", "name": "Alice"}
    if vct.endswith("facility-manager"):
        selective = {"name": "Bob"}
    return sd_jwt.issue(clear, selective, GATEWAY, random_bytes=os.urandom)


def verifier(revoked: bool = False) -> Any:
    def verify(text: str, nonce: str, aud: str) -> sd_jwt.VerifiedSdJwt:
        if revoked:
            raise AuthRefused("revoked", "the credential is revoked")
        try:
            return sd_jwt.verify_presentation(
                text,
                resolver=offline_resolver(),
                now=NOW_MS / 1000,
                nonce=nonce,
                aud=aud,
                status=None,
            )
        except CredentialError as exc:
            raise AuthRefused("bad_presentation", str(exc)) from None

    return verify


def authenticator(revoked: bool = False, **timing: int) -> WalletAuthenticator:
    core = Handshake(GATEWAY, holder_status, random_bytes=os.urandom, **timing)
    return WalletAuthenticator(core, verifier(revoked))


def challenge(auth: WalletAuthenticator, did: str = HOLDER.did) -> dict[str, Any]:
    hello = json.dumps({"type": "hello", "did": did, "reply": REPLY}).encode()
    out, grant = auth.on_request(hello, NOW_MS)
    assert out is not None and grant is None
    assert out.topic == f"didgw/auth/res/{REPLY}"
    return dict(json.loads(out.payload))


def presentation(
    text: str,
    nonce: str,
    *,
    aud: str = GATEWAY.did,
    disclose: tuple[str, ...] = (),
    iat: int = NOW_MS // 1000,
) -> tuple[bytes, X25519PrivateKey]:
    epk = X25519PrivateKey.generate()
    raw = epk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    shown = sd_jwt.present(
        text,
        disclose,
        HOLDER,
        nonce=nonce,
        aud=aud,
        iat=iat,
        extra={"epk": b64u(raw)},
    )
    body = {"type": "presentation", "did": HOLDER.did, "reply": REPLY, "presentations": [shown]}
    return json.dumps(body).encode(), epk


def reason(out: Any) -> str:
    return str(json.loads(out.payload)["reason"])


def test_a_household_member_gets_a_grant_with_her_permissions_and_a_sealed_password() -> None:
    auth = authenticator()
    nonce = challenge(auth)["nonce"]
    message, epk = presentation(credential(), nonce, disclose=("household", "role"))
    out, grant = auth.on_request(message, NOW_MS)
    assert grant is not None and out is not None
    assert grant.permissions.may_trade_for(HOUSEHOLD, "buy")
    assert not grant.permissions.may_trade_for(HOUSEHOLD, "sell")
    assert grant.disclosed() == {
        "urn:didgw:credential:household": {"household": HOUSEHOLD, "role": "buyer"}
    }
    token = verify_jws(
        out.payload, resolver=offline_resolver(), relationship="assertionMethod", now=NOW_MS / 1000
    )
    body = json.loads(token.payload)
    assert body["requests"] == f"didgw/p/{HOLDER.did}/req"
    assert body["permissions"] == [f"trade:{HOUSEHOLD}:buyer"]
    password = open_secret(
        b64u_decode(body["secret"], "s", max_size=1024),
        b64u_decode(body["iv"], "iv"),
        b64u_decode(body["epk"], "epk"),
        device_key=epk,
        nonce=b64u_decode(nonce, "n"),
        device_did=HOLDER.did,
    )
    assert password.decode() == grant.password
    # The nonce is spent: the same presentation again is refused.
    out, grant = auth.on_request(message, NOW_MS)
    assert grant is None and reason(out) == "bad_nonce"


@pytest.mark.parametrize("what", ["nonce", "aud"])
def test_a_presentation_for_another_nonce_or_audience_is_refused(what: str) -> None:
    auth = authenticator()
    nonce = challenge(auth)["nonce"]
    other = b64u(bytes(32))
    message, _ = (
        presentation(credential(), other)
        if what == "nonce"
        else presentation(credential(), nonce, aud="did:key:z6MkOther")
    )
    out, grant = auth.on_request(message, NOW_MS)
    assert grant is None and reason(out) == "bad_nonce"
    # Refused before verification: the real nonce still works.
    message, _ = presentation(credential(), nonce, disclose=("household", "role"))
    assert auth.on_request(message, NOW_MS)[1] is not None


def test_the_wallet_handshake_takes_its_clock_window_and_session_from_its_core() -> None:
    auth = authenticator(clock_skew_ms=60_000)
    ahead = NOW_MS // 1000 + 120  # the wallet's clock is two minutes ahead
    shown = ("household", "role")
    message, _ = presentation(credential(), challenge(auth)["nonce"], disclose=shown, iat=ahead)
    out, grant = auth.on_request(message, NOW_MS)
    assert grant is None and reason(out) == "clock_skew"
    auth.core.retime(session_ms=600_000, clock_skew_ms=300_000)
    message, _ = presentation(credential(), challenge(auth)["nonce"], disclose=shown, iat=ahead)
    _, grant = auth.on_request(message, NOW_MS)
    assert grant is not None and grant.expires_ms == NOW_MS + 600_000


def test_expired_revoked_and_useless_credentials_are_refused() -> None:
    auth = authenticator()
    expired = credential(exp=NOW_MS // 1000 - 1)
    message, _ = presentation(expired, challenge(auth)["nonce"], disclose=("household", "role"))
    assert reason(auth.on_request(message, NOW_MS)[0]) == "bad_presentation"
    message, _ = presentation(credential(), challenge(auth)["nonce"])  # household not shown
    assert reason(auth.on_request(message, NOW_MS)[0]) == "not_permitted"
    revoked = authenticator(revoked=True)
    message, _ = presentation(credential(), challenge(revoked)["nonce"])
    assert reason(revoked.on_request(message, NOW_MS)[0]) == "revoked"


def test_hellos_need_a_did_key_and_garbage_gets_no_grant() -> None:
    auth = authenticator()
    hello = json.dumps({"type": "hello", "did": "did:web:example.com", "reply": REPLY}).encode()
    out, _ = auth.on_request(hello, NOW_MS)
    assert reason(out) == "not_permitted"
    bad = json.dumps(
        {"type": "presentation", "did": HOLDER.did, "reply": REPLY, "presentations": ["x"]}
    ).encode()
    out, grant = auth.on_request(bad, NOW_MS)
    assert grant is None and reason(out) == "malformed"
    assert auth.on_request(b"\xff not json", NOW_MS) == (None, None)


def test_requests_are_parsed_strictly_and_need_the_right_permission() -> None:
    manager = Permissions(HOLDER.did, facility_manager=True)
    member = Permissions(HOLDER.did, households={HOUSEHOLD: frozenset({"buyer"})})
    suspend = requests.parse_request(
        json.dumps({"id": "r1", "action": "suspend", "did": HOUSEHOLD, "reason": "x"}).encode()
    )
    requests.allowed(manager, suspend)
    with pytest.raises(requests.RequestRefused) as refused:
        requests.allowed(member, suspend)
    assert (refused.value.reason, refused.value.request_id) == ("not_facility_manager", "r1")
    order = requests.parse_request(b'{"id": "r2", "action": "order", "order": "a.b.c"}')
    requests.allowed(member, order)
    with pytest.raises(requests.RequestRefused) as refused:
        requests.allowed(manager, order)
    assert refused.value.reason == "not_member"
    for bad, why in [
        (b'{"id": "r3", "action": "delete", "did": "x"}', "unknown_action"),
        (b'{"id": "r3", "action": "suspend", "did": "' + HOUSEHOLD.encode() + b'"}', "malformed"),
        (b'{"id": "r3", "action": "revoke", "did": "not a did", "reason": "x"}', "malformed"),
        (b'{"id": "bad id!", "action": "revoke"}', "malformed"),
        (b"[]", "malformed"),
    ]:
        with pytest.raises(requests.RequestRefused) as refused:
            requests.parse_request(bad)
        assert refused.value.reason == why, bad


def test_actions_carry_digests_and_personal_data_stays_in_the_disclosure_entry() -> None:
    request = requests.parse_request(
        json.dumps({"id": "r1", "action": "revoke", "did": HOUSEHOLD, "reason": "x"}).encode()
    )
    digest = "ab" * 32
    action = requests.action_entry(HOLDER.did, request, digests=[digest], disclosure=7)
    assert action.kind == "person-action" and action.actor == HOLDER.did
    assert json.loads(action.payload) == {
        "action": "revoke",
        "request": "r1",
        "presentations": [digest],
        "disclosure": 7,
        "device": HOUSEHOLD,
    }
    disclosed = requests.disclosure_entry(HOLDER.did, [digest], {"vct": {"name": "Alice"}})
    assert b"Alice" in disclosed.payload and b"Alice" not in action.payload

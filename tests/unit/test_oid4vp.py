"""The OpenID4VP verifier core without a server: pending requests, the request object, the
response's form. (Presentations themselves are checked against a real gateway in
tests/integration/test_login.py.)"""

from __future__ import annotations

import json
import secrets

import pytest

from gateway.credentials import oid4vp
from gateway.credentials.oid4vp import PendingLogins, PoolFull, VpRefused
from gateway.identity import Signer, offline_resolver, verify_jws
from gateway.identity.keystore import generate_key


def pool(capacity: int = 2) -> PendingLogins:
    return PendingLogins(capacity, random_bytes=secrets.token_bytes)


def test_a_full_pool_refuses_and_forgets_nobody_until_a_request_expires() -> None:
    logins = pool(2)
    first = logins.new("b1", 0)
    logins.new("b2", 0)
    with pytest.raises(PoolFull):
        logins.new("b3", 1000)
    assert logins.get(first.id, 1000) is first
    logins.new("b3", oid4vp.REQUEST_LIFETIME_MS)  # the first two have expired
    assert len(logins) == 1


def test_a_request_is_answered_once_and_not_after_it_expires() -> None:
    logins = pool()
    request = logins.new("b", 0)
    assert logins.claim(request.state, 1) is request
    with pytest.raises(VpRefused) as refused:
        logins.claim(request.state, 2)
    assert refused.value.reason == "replayed"
    late = logins.new("b", 0)
    with pytest.raises(VpRefused) as refused:
        logins.claim(late.state, oid4vp.REQUEST_LIFETIME_MS)
    assert refused.value.reason == "expired_request"
    with pytest.raises(VpRefused) as refused:
        logins.claim("nobody's", 0)
    assert refused.value.reason == "unknown_request"


def test_only_the_browser_that_started_a_sign_in_finishes_it() -> None:
    logins = pool()
    request = logins.new(oid4vp.browser_hash("cookie"), 0)
    logins.claim(request.state, 1)
    request.refusal = VpRefused("revoked")
    assert logins.finish(request.id, oid4vp.browser_hash("other"), 2) is None
    assert logins.finish(request.id, oid4vp.browser_hash("cookie"), 2) is request
    assert logins.get(request.id, 3) is None  # finished: gone


def test_the_request_object_is_signed_by_the_gateway_did_with_the_prefixed_client_id() -> None:
    signer = Signer.for_did_key(generate_key())
    request = pool().new("b", 1_000_000)
    jwt = oid4vp.request_object(request, signer=signer, base_url="https://gw", now_ms=1_000_000)
    verified = verify_jws(
        jwt, resolver=offline_resolver(), relationship="assertionMethod", now=1000
    )
    assert verified.header["typ"] == "oauth-authz-req+jwt"
    assert verified.signer.did == signer.did
    claims = json.loads(verified.payload)
    assert claims["client_id"] == f"decentralized_identifier:{signer.did}"
    assert (claims["nonce"], claims["state"]) == (request.nonce, request.state)
    assert len(oid4vp.b64u(b"\0" * oid4vp.NONCE_BYTES)) == len(request.nonce)  # 128 bits
    assert claims["response_uri"] == "https://gw/oid4vp/response"
    assert claims["response_mode"] == "direct_post"
    household = claims["dcql_query"]["credentials"][0]
    assert [c["path"] for c in household["claims"]] == [["household"], ["role"]]  # not name


@pytest.mark.parametrize(
    "form",
    [
        {},
        {"state": "s"},
        {"state": "s", "vp_token": "not json"},
        {"state": "s", "vp_token": "[]"},
        {"state": "s", "vp_token": '{"household": "a~b"}'},
        {"state": "s", "vp_token": '{"household": ["a~", "b~"]}'},
        {"state": "s" * 65, "vp_token": '{"household": ["a~"]}'},
    ],
)
def test_a_malformed_response_is_refused_before_any_lookup(form: dict[str, str]) -> None:
    with pytest.raises(VpRefused) as refused:
        oid4vp.parse_response(form)
    assert refused.value.reason == "malformed"


def test_every_reason_is_explained() -> None:
    for reason in oid4vp.REASONS:
        assert VpRefused(reason).reason == reason
    with pytest.raises(ValueError):
        VpRefused("no such reason")

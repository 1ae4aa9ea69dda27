"""The OpenID4VP verifier core without a server: pending requests, the request object, the
response's form. (Presentations themselves are checked against a real gateway in
tests/integration/test_login.py.)"""

from __future__ import annotations

import json
import secrets

import pytest
from joserfc import jwe
from joserfc.jwk import ECKey, OKPKey

from gateway.config import HttpSection
from gateway.credentials import oid4vp, response_encryption
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
    assert claims["response_mode"] == "direct_post.jwt"
    metadata = claims["client_metadata"]
    assert metadata["encrypted_response_enc_values_supported"] == ["A128GCM", "A256GCM"]
    keys = metadata["jwks"]["keys"]
    assert [(k["kty"], k["crv"]) for k in keys] == [("EC", "P-256"), ("OKP", "X25519")]
    for key in keys:
        assert (key["use"], key["alg"]) == ("enc", "ECDH-ES")
        assert "d" not in key  # public halves only
    assert len({k["kid"] for k in keys}) == 2


def test_a_direct_post_request_offers_no_key() -> None:
    signer = Signer.for_did_key(generate_key())
    request = pool().new("b", 0, "direct_post")
    jwt = oid4vp.request_object(request, signer=signer, base_url="https://gw", now_ms=0)
    claims = json.loads(
        verify_jws(jwt, resolver=offline_resolver(), relationship="assertionMethod", now=0).payload
    )
    assert claims["response_mode"] == "direct_post"
    assert claims["client_metadata"] == {"vp_formats_supported": oid4vp.VP_FORMATS}
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
        {"state": "s", "vp_token": "[" * 50_000},  # deeper than Python's recursion limit
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
    assert set(oid4vp.REASONS) >= oid4vp.INVALID_REQUEST


# -- encrypted responses (direct_post.jwt) -------------------------------------------------

VP_TOKEN = {"household": ["issuer.jwt.x~disclosure~kb.jwt.x"]}


def public_key(request: oid4vp.LoginRequest, index: int = 0) -> ECKey | OKPKey:
    assert request.keys is not None
    jwk = request.keys.jwks()["keys"][index]
    return ECKey.import_key(jwk) if jwk["kty"] == "EC" else OKPKey.import_key(jwk)


def sealed(
    request: oid4vp.LoginRequest,
    payload: object | None = None,
    *,
    index: int = 0,
    header: dict[str, str] | None = None,
    to: ECKey | OKPKey | None = None,
) -> str:
    """A JWE (joserfc, the test's side) of ``payload`` to the request's key ``index``."""
    key = public_key(request, index)
    body = {"vp_token": VP_TOKEN, "state": request.state} if payload is None else payload
    protected = {"alg": "ECDH-ES", "enc": "A128GCM", "kid": str(key.kid), **(header or {})}
    return jwe.encrypt_compact(protected, json.dumps(body).encode(), to or key)


def refused(form: dict[str, str], logins: PendingLogins, now_ms: int = 1) -> str:
    with pytest.raises(VpRefused) as refusal:
        oid4vp.take_response(form, logins, now_ms)
    return refusal.value.reason


@pytest.mark.parametrize(
    "attack",
    ["another_key", "another_enc", "key_wrap", "tampered", "unknown_kid", "no_kid", "zip",
     "oversized", "not_a_jwe", "encrypted_key"],
)  # fmt: skip
def test_a_bad_envelope_is_refused_and_consumes_nothing(attack: str) -> None:
    logins = pool()
    request = logins.new("b", 0)
    token = sealed(request)
    if attack == "another_key":  # encrypted to a key the request did not make, under its kid
        token = sealed(request, to=ECKey.generate_key("P-256"))
    elif attack == "another_enc":
        token = sealed(request, header={"enc": "A192GCM"})
    elif attack == "key_wrap":
        token = sealed(request, header={"alg": "ECDH-ES+A128KW"})
    elif attack == "tampered":
        head, key, iv, ciphertext, tag = token.split(".")
        flipped = ("B" if ciphertext[0] == "A" else "A") + ciphertext[1:]
        token = ".".join([head, key, iv, flipped, tag])
    elif attack == "unknown_kid":
        token = sealed(request, header={"kid": "not-a-kid-of-this-gateway"})
    elif attack == "no_kid":
        head = {"alg": "ECDH-ES", "enc": "A128GCM"}
        token = jwe.encrypt_compact(head, b"{}", public_key(request))
    elif attack == "zip":
        token = sealed(request, header={"zip": "DEF"})
    elif attack == "oversized":
        token = token[:-1] + "A" * response_encryption.MAX_JWE_CHARS
    elif attack == "not_a_jwe":
        token = "eyJhbGciOiJFZERTQSJ9.e30.c2ln"
    elif attack == "encrypted_key":
        head, _, iv, ciphertext, tag = token.split(".")
        token = ".".join([head, "AAAA", iv, ciphertext, tag])
    assert refused({"response": token}, logins) == "bad_encryption"
    assert not request.answered and request.refusal is None
    claimed, _ = oid4vp.take_response({"response": sealed(request)}, logins, 1)  # still open
    assert claimed is request


@pytest.mark.parametrize(("index", "enc"), [(0, "A128GCM"), (0, "A256GCM"), (1, "A256GCM")])
def test_an_encrypted_response_opens_with_the_request_key_once(index: int, enc: str) -> None:
    logins = pool()
    request = logins.new("b", 0)
    token = sealed(request, index=index, header={"enc": enc})
    claimed, vp_token = oid4vp.take_response({"response": token}, logins, 1)
    assert (claimed, vp_token) == (request, VP_TOKEN)
    assert refused({"response": token}, logins) == "replayed"


def test_a_plain_response_to_an_encrypted_request_is_refused_and_ends_it() -> None:
    logins = pool()
    request = logins.new("b", 0)
    form = {"state": request.state, "vp_token": json.dumps(VP_TOKEN)}
    assert refused(form, logins) == "not_encrypted"
    assert request.refusal is not None and request.refusal.reason == "not_encrypted"
    assert refused({"response": sealed(request)}, logins) == "replayed"


def test_an_encrypted_response_to_a_plain_request_is_refused() -> None:
    logins = pool()
    encrypted, plain = logins.new("b", 0), logins.new("b", 0, "direct_post")
    token = sealed(encrypted, {"vp_token": VP_TOKEN, "state": plain.state})
    assert refused({"response": token}, logins) == "bad_encryption"  # another sign-in's key
    assert not plain.answered and not encrypted.answered
    claimed, _ = oid4vp.take_response(
        {"state": plain.state, "vp_token": json.dumps(VP_TOKEN)}, logins, 1
    )
    assert claimed is plain


@pytest.mark.parametrize(
    "case", ["array", "string", "no_vp_token", "vp_token_string", "no_state", "nested"]
)
def test_a_malformed_decrypted_response_is_refused(case: str) -> None:
    logins = pool()
    request = logins.new("b", 0)
    payload = {
        "array": [],
        "string": "x",
        "no_vp_token": {"state": request.state},
        "vp_token_string": {"state": request.state, "vp_token": json.dumps(VP_TOKEN)},
        "no_state": {"vp_token": VP_TOKEN},
        "nested": [],
    }[case]
    token = sealed(request, payload)
    if case == "nested":  # deeper than Python's recursion limit
        key = public_key(request)
        head = {"alg": "ECDH-ES", "enc": "A128GCM", "kid": str(key.kid)}
        token = jwe.encrypt_compact(head, b"[" * 30_000, key)
    assert refused({"response": token}, logins) == "malformed"


def test_an_encrypted_response_after_the_request_expired_is_refused() -> None:
    logins = pool()
    request = logins.new("b", 0)
    token = sealed(request)
    assert refused({"response": token}, logins, oid4vp.REQUEST_LIFETIME_MS) == "expired_request"
    logins.purge(oid4vp.REQUEST_LIFETIME_MS)  # gone with its keys
    assert refused({"response": token}, logins, 0) == "bad_encryption"


def test_the_response_field_is_alone() -> None:
    logins = pool()
    request = logins.new("b", 0)
    form = {"response": sealed(request), "state": request.state}
    assert refused(form, logins) == "malformed"


def test_response_keys_come_from_the_given_randomness() -> None:
    stream = iter(range(1, 1000))

    def counter(n: int) -> bytes:
        return bytes([next(stream)]) * n

    first = response_encryption.new_keys(counter)
    stream = iter(range(1, 1000))
    assert response_encryption.new_keys(counter).jwks() == first.jwks()


def test_the_config_offers_the_response_modes_of_the_verifier() -> None:
    assert HttpSection().response_mode == oid4vp.RESPONSE_MODES[0]
    for mode in oid4vp.RESPONSE_MODES:
        assert pool().new("b", 0, mode).response_mode == mode


@pytest.mark.parametrize(("curve", "enc"), [("P-256", "A128GCM"), ("X25519", "A256GCM")])
def test_the_test_wallets_own_ecdh_es_opens_here(curve: str, enc: str) -> None:
    """firmware-sim/web_wallet.py encrypts with cryptography alone (Concat KDF by hand):
    a second implementation against joserfc's, both ways of a mistake in either."""
    import web_wallet as ww

    logins = pool()
    request = logins.new("b", 0)
    assert request.keys is not None
    jwk = next(k for k in request.keys.jwks()["keys"] if k["crv"] == curve)
    payload = json.dumps({"vp_token": VP_TOKEN, "state": request.state}).encode()
    claimed, vp_token = oid4vp.take_response({"response": ww.encrypt(payload, jwk, enc)}, logins, 1)
    assert (claimed, vp_token) == (request, VP_TOKEN)


def test_a_deeply_nested_jwe_header_is_refused() -> None:
    logins = pool()
    logins.new("b", 0)
    head = oid4vp.b64u(b"[" * 1500)  # under the header's size bound, over Python's recursion
    assert refused({"response": f"{head}..a.b.c"}, logins) == "bad_encryption"

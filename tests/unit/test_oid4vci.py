"""OpenID4VCI issuance core: the attacks first (proofs, codes, PINs, tokens, nonces), then
the credential a wallet gets, and what the database keeps (no secret)."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import OKPKey
from sqlite_utils import Database

from gateway.credentials import oid4vci
from gateway.credentials.issuer import CredentialIssuer
from gateway.credentials.kinds import KINDS
from gateway.credentials.offers import MAX_PIN_TRIES, code_of
from gateway.credentials.oid4vci import Issuance, NoncePool, Oid4vciError, check_proof
from gateway.credentials.sd_jwt import b64u, verify_presentation
from gateway.credentials.status_source import StatusLists
from gateway.identity import offline_resolver
from gateway.identity.keystore import public_bytes
from gateway.identity.resolver import Freshness
from gateway.identity.signing import Signer

NOW = 1_700_000_000.0
BASE = "https://gw.example:8443"
GATEWAY = Signer.for_did_key(Ed25519PrivateKey.generate())
HOLDER_KEY = Ed25519PrivateKey.generate()
HOLDER = Signer.for_did_key(HOLDER_KEY)
OTHER_KEY = Ed25519PrivateKey.generate()
HOUSEHOLD = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
CLAIMS = {"household": HOUSEHOLD, "role": "seller", "name": "Alice"}


def jwk_of(key: Ed25519PrivateKey) -> dict[str, str]:
    return {"kty": "OKP", "crv": "Ed25519", "x": b64u(public_bytes(key))}


def proof(
    nonce: str | None,
    *,
    sign_with: Ed25519PrivateKey = HOLDER_KEY,
    header: dict[str, Any] | None = None,
    **payload: Any,
) -> str:
    """A proof JWT as a wallet makes it: by default kid = the holder's did:key DID URL."""
    head = {"typ": oid4vci.PROOF_TYP, "alg": "EdDSA", "kid": HOLDER.kid}
    head.update(header or {})
    head = {k: v for k, v in head.items() if v is not None}
    body = {"aud": BASE, "iat": int(NOW), "nonce": nonce, **payload}
    body = {k: v for k, v in body.items() if v is not None}
    signing_input = f"{b64u(json.dumps(head).encode())}.{b64u(json.dumps(body).encode())}"
    return f"{signing_input}.{b64u(sign_with.sign(signing_input.encode()))}"


@pytest.fixture
def nonces() -> NoncePool:
    return NoncePool(capacity=8, lifetime_ms=60_000, random_bytes=os.urandom)


@pytest.fixture
def desk(db: Database) -> Issuance:
    issuer = CredentialIssuer(
        db, gateway_did=GATEWAY.did, list_url="", validity_seconds=86400, status_valid_seconds=600
    )
    return Issuance(db, issuer, lambda: GATEWAY, base_url=BASE, random_bytes=os.urandom)


def new_offer(desk: Issuance, kind: str = "household", seconds: int = 600, **claims: str) -> Any:
    return desk.offers.create(
        kind,
        claims or CLAIMS,
        now_ms=int(NOW * 1000),
        expires_seconds=seconds,
        random_bytes=os.urandom,
    )


def token_for(desk: Issuance, offer: Any, pin: str | None = None, at: float = NOW) -> str:
    form = {
        "grant_type": oid4vci.PRE_AUTHORIZED_GRANT,
        "pre-authorized_code": offer.pre_authorized_code,
        "tx_code": offer.pin if pin is None else pin,
    }
    return str(desk.token(form, now=at)["access_token"])


# -- the proof JWT ---------------------------------------------------------------------------


def check(jwt: str, nonces: NoncePool) -> oid4vci.ProofKey:
    return check_proof(jwt, audience=BASE, nonces=nonces, now=NOW)


def test_a_proof_for_another_audience_is_refused_and_its_nonce_stays_usable(
    nonces: NoncePool,
) -> None:
    nonce = nonces.issue(int(NOW * 1000))
    with pytest.raises(Oid4vciError, match="aud") as caught:
        check(proof(nonce, aud="https://evil.example"), nonces)
    assert caught.value.error == "invalid_proof"
    assert check(proof(nonce), nonces).did == HOLDER.did


def test_a_nonce_we_never_gave_or_already_took_is_refused(nonces: NoncePool) -> None:
    with pytest.raises(Oid4vciError, match="not one this issuer gave") as caught:
        check(proof("made-up"), nonces)
    assert caught.value.error == "invalid_nonce"
    nonce = nonces.issue(int(NOW * 1000))
    check(proof(nonce), nonces)
    with pytest.raises(Oid4vciError, match="used") as caught:
        check(proof(nonce), nonces)  # a replayed proof
    assert caught.value.error == "invalid_nonce"


def test_a_proof_without_a_nonce_is_refused(nonces: NoncePool) -> None:
    with pytest.raises(Oid4vciError, match="no nonce"):
        check(proof(None), nonces)


def test_an_expired_nonce_is_refused(nonces: NoncePool) -> None:
    nonce = nonces.issue(int(NOW * 1000) - 61_000)
    with pytest.raises(Oid4vciError, match="expired"):
        check(proof(nonce), nonces)


@pytest.mark.parametrize(
    ("iat", "reason"),
    [(int(NOW) - 301, "more than 300 seconds ago"), (int(NOW) + 61, "future"), ("now", "no iat")],
)
def test_a_stale_future_or_missing_iat_is_refused(nonces: NoncePool, iat: Any, reason: str) -> None:
    nonce = nonces.issue(int(NOW * 1000))
    with pytest.raises(Oid4vciError, match=reason):
        check(proof(nonce, iat=iat), nonces)


def test_a_proof_signed_by_another_key_than_it_names_is_refused(nonces: NoncePool) -> None:
    nonce = nonces.issue(int(NOW * 1000))
    with pytest.raises(Oid4vciError, match="signature") as caught:
        check(proof(nonce, sign_with=OTHER_KEY), nonces)
    assert caught.value.error == "invalid_proof"
    jwk_proof = proof(nonce, sign_with=OTHER_KEY, header={"kid": None, "jwk": jwk_of(HOLDER_KEY)})
    with pytest.raises(Oid4vciError, match="signature"):
        check(jwk_proof, nonces)


def test_a_tampered_payload_is_refused(nonces: NoncePool) -> None:
    nonce = nonces.issue(int(NOW * 1000))
    head, _, sig = proof(nonce).split(".")
    forged = b64u(json.dumps({"aud": BASE, "iat": int(NOW), "nonce": nonce, "x": 1}).encode())
    with pytest.raises(Oid4vciError, match="signature"):
        check(f"{head}.{forged}.{sig}", nonces)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"x5c": ["MIIB"]}, "x5c"),
        ({"jku": "https://evil.example/jwks"}, "jku"),
        ({"alg": "ES256"}, "alg 'ES256' is refused"),
        ({"alg": "none"}, "alg 'none' is refused"),
        ({"typ": "JWT"}, "typ"),
        ({"kid": "did:web:evil.example#key-1"}, "not a did:key"),
        ({"kid": HOLDER.did + "#wrong"}, "kid must be"),
        ({"kid": None}, "one only"),
        ({"jwk": jwk_of(HOLDER_KEY)}, "one only"),
        ({"kid": None, "jwk": {"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}}, "Ed25519"),
        ({"kid": None, "jwk": {**jwk_of(HOLDER_KEY), "x": "AAAA"}}, "32-byte"),
    ],
)
def test_a_proof_header_we_do_not_take_is_refused(
    nonces: NoncePool, header: dict[str, Any], reason: str
) -> None:
    nonce = nonces.issue(int(NOW * 1000))
    with pytest.raises(Oid4vciError, match=reason) as caught:
        check(proof(nonce, header=header), nonces)
    assert caught.value.error == "invalid_proof"
    assert len(nonces) == 1  # the nonce is still there for a good proof


def test_a_jwk_holding_the_private_key_is_refused(nonces: NoncePool) -> None:
    nonce = nonces.issue(int(NOW * 1000))
    private = OKPKey.import_key(HOLDER_KEY).as_dict(private=True)
    assert "d" in private
    with pytest.raises(Oid4vciError, match="private key"):
        check(proof(nonce, header={"kid": None, "jwk": private}), nonces)


DEEP = base64.urlsafe_b64encode(b"[" * 6000).rstrip(b"=").decode()  # deeper than json recurses


@pytest.mark.parametrize(
    "jwt", ["", "a.b", "x" * 9000, 42, None, "e30.e30.e30", f"{DEEP}.e30.e30", f"e30.{DEEP}.e30"]
)
def test_garbage_is_refused_as_a_proof(nonces: NoncePool, jwt: Any) -> None:
    with pytest.raises(Oid4vciError) as caught:
        check_proof(jwt, audience=BASE, nonces=nonces, now=NOW)
    assert caught.value.error == "invalid_proof"


def test_the_two_ways_of_naming_the_key_prove_the_same_holder(nonces: NoncePool) -> None:
    by_kid = check(proof(nonces.issue(int(NOW * 1000))), nonces)
    by_jwk = check(
        proof(nonces.issue(int(NOW * 1000)), header={"kid": None, "jwk": jwk_of(HOLDER_KEY)}),
        nonces,
    )
    assert (by_kid.by, by_jwk.by) == ("kid", "jwk")
    assert by_kid.did == by_jwk.did == HOLDER.did
    assert by_kid.public_key == by_jwk.public_key


# -- nonces --------------------------------------------------------------------------------------


def test_a_full_nonce_pool_refuses_rather_than_forgets(nonces: NoncePool) -> None:
    given = [nonces.issue(int(NOW * 1000)) for _ in range(8)]
    with pytest.raises(Oid4vciError, match="too many nonces") as caught:
        nonces.issue(int(NOW * 1000))
    assert caught.value.status == 503
    assert nonces.take(given[0], int(NOW * 1000))  # the old ones still work
    nonces.issue(int(NOW * 1000))  # room again
    later = int(NOW * 1000) + 60_000  # all expired: the pool empties itself
    nonces.issue(later)
    assert len(nonces) == 1


# -- offers and the token endpoint ---------------------------------------------------------------


def test_a_wrong_pin_is_counted_and_the_fifth_locks_the_offer(desk: Issuance) -> None:
    offer = new_offer(desk)
    wrong = "000000" if offer.pin != "000000" else "111111"
    for tries_left in range(MAX_PIN_TRIES - 1, 0, -1):
        with pytest.raises(Oid4vciError, match=f"{tries_left} tr") as caught:
            token_for(desk, offer, wrong)
        assert caught.value.error == "invalid_grant"
    with pytest.raises(Oid4vciError, match="now locked"):
        token_for(desk, offer, wrong)
    with pytest.raises(Oid4vciError, match="locked after 5 wrong") as caught:
        token_for(desk, offer)  # the right PIN, too late
    assert caught.value.error == "invalid_grant"
    with pytest.raises(Oid4vciError, match="locked"):
        desk.offer(offer.offer_id, now=NOW)


def test_a_missing_pin_is_an_invalid_request_and_costs_no_try(desk: Issuance) -> None:
    offer = new_offer(desk)
    for _ in range(MAX_PIN_TRIES + 1):
        with pytest.raises(Oid4vciError, match="needs its transaction code") as caught:
            token_for(desk, offer, "")
        assert caught.value.error == "invalid_request"
    assert token_for(desk, offer)


def test_an_offer_is_redeemed_once(desk: Issuance) -> None:
    offer = new_offer(desk)
    token_for(desk, offer)
    with pytest.raises(Oid4vciError, match="already used") as caught:
        token_for(desk, offer)
    assert caught.value.error == "invalid_grant"
    with pytest.raises(Oid4vciError, match="already used") as caught:
        desk.offer(offer.offer_id, now=NOW)
    assert caught.value.status == 410


def test_an_expired_offer_is_refused(desk: Issuance) -> None:
    offer = new_offer(desk, seconds=60)
    with pytest.raises(Oid4vciError, match="expired") as caught:
        token_for(desk, offer, at=NOW + 60)
    assert caught.value.error == "invalid_grant"
    with pytest.raises(Oid4vciError, match="expired"):
        desk.offer(offer.offer_id, now=NOW + 61)


def test_unknown_codes_and_grants_are_refused(desk: Issuance) -> None:
    with pytest.raises(Oid4vciError, match="unknown pre-authorized code"):
        desk.token(
            {
                "grant_type": oid4vci.PRE_AUTHORIZED_GRANT,
                "pre-authorized_code": "x",
                "tx_code": "1",
            },
            now=NOW,
        )
    with pytest.raises(Oid4vciError, match="grant_type") as caught:
        desk.token({"grant_type": "authorization_code", "code": "x"}, now=NOW)
    assert caught.value.error == "unsupported_grant_type"
    with pytest.raises(Oid4vciError, match="no such credential offer") as caught:
        desk.offer("nope", now=NOW)
    assert caught.value.status == 404


def test_an_offer_with_bad_claims_is_never_made(desk: Issuance) -> None:
    with pytest.raises(Exception, match="missing"):
        new_offer(desk, "household", role="seller")
    with pytest.raises(Exception, match="between 1 second"):
        new_offer(desk, seconds=0)
    assert desk.offers.offers() == []


# -- the credential endpoint ------------------------------------------------------------------


def credential_request(desk: Issuance, kind: str = "household", **extra: Any) -> dict[str, Any]:
    nonce = desk.nonce(now=NOW)["c_nonce"]
    return {"credential_configuration_id": kind, "proofs": {"jwt": [proof(nonce)]}, **extra}


def test_the_token_gets_one_credential_bound_to_the_proven_key(
    desk: Issuance, db: Database
) -> None:
    offer = new_offer(desk)
    token = token_for(desk, offer)
    answer = desk.credential(token, credential_request(desk), now=NOW + 1)
    text = answer["credentials"][0]["credential"]
    verified = verify_presentation(
        text,
        resolver=offline_resolver(),
        now=NOW + 2,
        nonce="",
        aud="",
        status=StatusLists(
            resolver=offline_resolver(),
            freshness=Freshness(ttl=60, max_stale=600),
            local=desk.issuer.local_list,
        ),
        key_binding=False,
    )
    assert verified.issuer == GATEWAY.did
    assert verified.vct == "urn:didgw:credential:household"
    assert verified.claims["sub"] == HOLDER.did
    assert verified.claims["cnf"]["jwk"] == jwk_of(HOLDER_KEY)
    assert verified.claims["role"] == "seller"
    with pytest.raises(Oid4vciError, match="already used") as caught:
        desk.credential(token, credential_request(desk), now=NOW + 3)
    assert (caught.value.error, caught.value.status) == ("invalid_token", 401)
    (kept,) = desk.offers.offers()
    assert kept.claims == {}  # the claims stay with the holder
    assert kept.credential_id == desk.issuer.records()[0].id


def test_the_older_single_proof_shape_is_taken(desk: Issuance) -> None:
    token = token_for(desk, new_offer(desk))
    nonce = desk.nonce(now=NOW)["c_nonce"]
    request = {
        "credential_configuration_id": "household",
        "proof": {"proof_type": "jwt", "jwt": proof(nonce)},
    }
    assert desk.credential(token, request, now=NOW)["credentials"]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"credential_configuration_id": "vouch"}, "unknown_credential_configuration"),
        ({"credential_configuration_id": None}, "invalid_credential_request"),
        ({"credential_identifier": "x"}, "unknown_credential_identifier"),
        ({"credential_response_encryption": {}}, "invalid_encryption_parameters"),
        ({"proofs": None}, "invalid_proof"),
        ({"proofs": {"jwt": []}}, "invalid_proof"),
        ({"proofs": {"jwt": ["a", "b"]}}, "invalid_proof"),
        ({"proofs": {"attestation": ["a"]}}, "invalid_proof"),
        ({"proof": {"proof_type": "jwt", "jwt": "a"}}, "invalid_credential_request"),
    ],
)
def test_a_credential_request_we_do_not_take_is_refused_and_the_token_kept(
    desk: Issuance, change: dict[str, Any], error: str
) -> None:
    token = token_for(desk, new_offer(desk))
    request = {k: v for k, v in {**credential_request(desk), **change}.items() if v is not None}
    with pytest.raises(Oid4vciError) as caught:
        desk.credential(token, request, now=NOW)
    assert caught.value.error == error
    assert desk.credential(token, credential_request(desk), now=NOW)["credentials"]


def test_an_unknown_or_expired_token_is_refused(desk: Issuance) -> None:
    with pytest.raises(Oid4vciError, match="unknown access token") as caught:
        desk.credential("forged", credential_request(desk), now=NOW)
    assert caught.value.status == 401
    token = token_for(desk, new_offer(desk))
    with pytest.raises(Oid4vciError, match="expired"):
        desk.credential(token, credential_request(desk), now=NOW + 301)


def test_the_database_keeps_no_secret(desk: Issuance, db: Database) -> None:
    offer = new_offer(desk)
    token = token_for(desk, offer)
    dump = "\n".join(db.conn.iterdump())
    for secret in (offer.offer_id, offer.pre_authorized_code, offer.pin, token):
        assert secret not in dump
    assert code_of(offer.offer_id) == offer.pre_authorized_code


# -- metadata and the offer -------------------------------------------------------------------


def test_the_metadata_names_every_kind_and_what_it_takes() -> None:
    meta = oid4vci.issuer_metadata(BASE)
    assert meta["credential_issuer"] == BASE
    assert meta["nonce_endpoint"] == BASE + "/oid4vci/nonce"
    assert set(meta["credential_configurations_supported"]) == set(KINDS)
    household = meta["credential_configurations_supported"]["household"]
    assert household["format"] == "dc+sd-jwt"
    assert household["vct"] == "urn:didgw:credential:household"
    assert household["cryptographic_binding_methods_supported"] == ["jwk", "did:key"]
    assert household["proof_types_supported"]["jwt"]["proof_signing_alg_values_supported"] == [
        "EdDSA"
    ]
    claims = {c["path"][0]: c["mandatory"] for c in household["credential_metadata"]["claims"]}
    assert claims == {"household": True, "role": True, "name": False}
    server = oid4vci.authorization_server_metadata(BASE)
    assert server["pre-authorized_grant_anonymous_access_supported"] is True
    assert server["token_endpoint"] == BASE + "/oid4vci/token"


def test_the_offer_is_served_by_reference_with_its_code_and_pin_shape(desk: Issuance) -> None:
    offer = new_offer(desk)
    uri = oid4vci.offer_uri(BASE, offer.offer_id)
    assert uri.startswith("openid-credential-offer://?credential_offer_uri=https%3A%2F%2Fgw")
    served = desk.offer(offer.offer_id, now=NOW)
    grant = served["grants"][oid4vci.PRE_AUTHORIZED_GRANT]
    assert grant["pre-authorized_code"] == offer.pre_authorized_code
    assert grant["tx_code"]["input_mode"] == "numeric" and grant["tx_code"]["length"] == 6
    assert served["credential_configuration_ids"] == ["household"]
    assert len(offer.offer_id) >= 43  # 32 random bytes: the URL is the secret
    assert "<svg" in oid4vci.offer_qr_svg(uri)

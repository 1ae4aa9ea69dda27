"""SD-JWT VC: issue, present, verify; every refusal the specification requires."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.credentials import sd_jwt
from gateway.credentials.permissions import permissions_from
from gateway.credentials.sd_jwt import (
    digest_of,
    issue,
    make_disclosure,
    present,
    verify_presentation,
)
from gateway.errors import CredentialError
from gateway.identity import offline_resolver
from gateway.identity.keystore import public_bytes
from gateway.identity.signing import Signer, sign_jws

NOW = 1_700_000_000
ISSUER = Signer.for_did_key(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
HOLDER = Signer.for_did_key(Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))))
HOUSEHOLD = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"


def clear(**changes: Any) -> dict[str, Any]:
    claims = {
        "iss": ISSUER.did,
        "iat": NOW - 10,
        "exp": NOW + 3600,
        "vct": "urn:didgw:credential:household",
        "sub": HOLDER.did,
        "cnf": {"jwk": sd_jwt.ed25519_jwk(public_bytes(HOLDER.private_key))},
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def issued(**changes: Any) -> str:
    selective = {"household": HOUSEHOLD, "role": "seller", "name": "Alice Example"}
    return issue(clear(**changes), selective, ISSUER, random_bytes=os.urandom)


def verify(text: str, nonce: str = "n-1", aud: str = "did:key:gw", **kw: Any) -> Any:
    return verify_presentation(
        text, resolver=offline_resolver(), now=NOW, nonce=nonce, aud=aud, status=None, **kw
    )


def presented(
    text: str | None = None, disclose: tuple[str, ...] = ("household", "role"), **kw: Any
) -> str:
    args = {"nonce": "n-1", "aud": "did:key:gw", "iat": NOW, **kw}
    return present(text or issued(), disclose, HOLDER, **args)


def test_a_subset_is_disclosed_and_verifies() -> None:
    result = verify(presented())
    assert result.claims["household"] == HOUSEHOLD and result.claims["role"] == "seller"
    assert "name" not in result.claims and "name" not in result.disclosed
    assert result.disclosed == {"household": HOUSEHOLD, "role": "seller"}
    assert result.subject == HOLDER.did and result.issuer == ISSUER.did
    permissions = permissions_from([result], holder=HOLDER.did, trusted_issuers={ISSUER.did})
    assert permissions.may_trade_for(HOUSEHOLD, "sell")
    assert permissions.may_trade_for(HOUSEHOLD, "buy").reason == "wrong_role"
    assert permissions.may_trade_for("did:key:other").reason == "not_member"
    assert permissions.may_manage_devices().reason == "not_facility_manager"


def test_personal_data_stays_out_of_the_issuer_jwt() -> None:
    token = issued().split("~")[0]
    payload = base64.urlsafe_b64decode(token.split(".")[1] + "==")
    assert b"Alice" not in payload and b"seller" not in payload


def test_disclosure_digest_is_the_rfcs_example() -> None:
    # RFC 9901 §5.2.1: the disclosure of ["_26bc4LT-ac6q2KI6cBW5es", "family_name", "Möbius"]
    encoded = "WyJfMjZiYzRMVC1hYzZxMktJNmNCVzVlcyIsICJmYW1pbHlfbmFtZSIsICJNw7ZiaXVzIl0"
    assert json.loads(base64.urlsafe_b64decode(encoded + "==")) == [
        "_26bc4LT-ac6q2KI6cBW5es",
        "family_name",
        "Möbius",
    ]
    assert digest_of(encoded) == "X9yH0Ajrdm1Oij4tWso9UzzKJvPoDxwmuEcO3XAdRC0"


def test_an_sd_jwt_built_by_hand_from_the_spec_verifies() -> None:
    # Disclosures in the RFC's own spacing (a space after each comma), not ours.
    spaced = base64.urlsafe_b64encode(b'["salt-1", "household", "' + HOUSEHOLD.encode() + b'"]')
    d1 = spaced.rstrip(b"=").decode()
    d2 = make_disclosure("role", "seller", b"s" * 16).encoded
    body = {
        **clear(),
        "_sd": [digest_of(d1), digest_of(d2), digest_of("decoy")],
        "_sd_alg": "sha-256",
    }
    token = sign_jws(json.dumps(body).encode(), ISSUER, headers={"typ": "dc+sd-jwt"})
    text = f"{token}~{d1}~{d2}~"
    result = verify(presented(text))
    assert result.claims["household"] == HOUSEHOLD


def _reissue(body_change: Any, disclosures: list[str], typ: str = "dc+sd-jwt") -> str:
    body = clear()
    body_change(body)
    token = sign_jws(json.dumps(body).encode(), ISSUER, headers={"typ": typ})
    return "~".join([token, *disclosures]) + "~"


def test_a_repeated_digest_is_refused() -> None:
    d = make_disclosure("role", "seller", b"x" * 16).encoded
    text = _reissue(lambda b: b.update(_sd=[digest_of(d)], nested={"_sd": [digest_of(d)]}), [d])
    with pytest.raises(CredentialError, match="more than once"):
        verify(presented(text, disclose=("role",)))


def test_an_unreferenced_disclosure_is_refused() -> None:
    d = make_disclosure("role", "seller", b"x" * 16).encoded
    text = _reissue(lambda b: b.update(_sd=[]), [])
    forged = presented(text, disclose=())
    # slip in a disclosure the issuer never referenced, and re-bind so only that is wrong
    jwt = forged.split("~")[0]
    with pytest.raises(CredentialError, match="not referenced"):
        verify(present(f"{jwt}~{d}~", ["role"], HOLDER, nonce="n-1", aud="did:key:gw", iat=NOW))


def test_a_disclosure_that_overwrites_a_clear_claim_is_refused() -> None:
    d = make_disclosure("household", "did:key:zOther", b"x" * 16).encoded
    text = _reissue(lambda b: b.update(household=HOUSEHOLD, _sd=[digest_of(d)]), [d])
    with pytest.raises(CredentialError, match="overwrite"):
        verify(presented(text, disclose=("household",)))


@pytest.mark.parametrize(("nonce", "aud"), [("n-2", "did:key:gw"), ("n-1", "did:key:other")])
def test_key_binding_over_another_nonce_or_audience_is_refused(nonce: str, aud: str) -> None:
    with pytest.raises(CredentialError, match="another"):
        verify(presented(), nonce=nonce, aud=aud)


def test_key_binding_by_another_key_is_refused() -> None:
    text = presented()
    stranger = Signer.for_did_key(Ed25519PrivateKey.generate())
    base = text[: text.rindex("~") + 1]
    claims = {"iat": NOW, "aud": "did:key:gw", "nonce": "n-1", "sd_hash": digest_of(base)}
    kb = sign_jws(json.dumps(claims).encode(), stranger, headers={"typ": "kb+jwt"})
    with pytest.raises(CredentialError, match="key-binding JWT"):
        verify(base + kb)


def test_key_binding_with_wrong_typ_or_sd_hash_or_age_is_refused() -> None:
    base = presented()[: presented().rindex("~") + 1]
    claims = {"iat": NOW, "aud": "did:key:gw", "nonce": "n-1", "sd_hash": digest_of(base)}
    wrong_typ = sign_jws(json.dumps(claims).encode(), HOLDER, headers={"typ": "JWT"})
    with pytest.raises(CredentialError, match="typ"):
        verify(base + wrong_typ)
    other_hash = {**claims, "sd_hash": digest_of(base + "x")}
    kb = sign_jws(json.dumps(other_hash).encode(), HOLDER, headers={"typ": "kb+jwt"})
    with pytest.raises(CredentialError, match="sd_hash"):
        verify(base + kb)
    with pytest.raises(CredentialError, match="iat"):
        verify(presented(iat=NOW - 3600))


def test_a_dropped_disclosure_after_binding_is_refused() -> None:
    text = presented()
    parts = text.split("~")
    with pytest.raises(CredentialError, match="sd_hash"):
        verify("~".join([parts[0], parts[1], parts[-1]]))


def test_without_key_binding_a_presentation_is_refused() -> None:
    with pytest.raises(CredentialError, match="no key-binding"):
        verify(issued())


def test_expired_not_yet_valid_wrong_typ_and_missing_vct_are_refused() -> None:
    with pytest.raises(CredentialError, match="expired"):
        verify(presented(issued(exp=NOW - 1)))
    with pytest.raises(CredentialError, match="not valid yet"):
        verify(presented(issued(nbf=NOW + 3600)))
    with pytest.raises(CredentialError, match="no vct"):
        verify(presented(issued(vct=None)))
    wrong = _reissue(lambda b: None, [], typ="JWT")
    with pytest.raises(CredentialError, match="typ"):
        verify(presented(wrong, disclose=()))


def test_issuer_claims_must_match_the_signer() -> None:
    with pytest.raises(CredentialError, match="iss"):
        verify(presented(issued(iss="did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp")))


def test_tampered_issuer_jwt_is_refused() -> None:
    text = presented()
    jwt, rest = text.split("~", 1)
    head, body, sig = jwt.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=="))
    payload["vct"] = "urn:didgw:credential:facility-manager"
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    with pytest.raises(CredentialError, match="issuer signature"):
        verify(f"{head}.{forged}.{sig}~{rest}")


@pytest.mark.parametrize(
    "bad",
    [
        "not-an-sd-jwt",
        "a.b.c~~~x",
        "x" * 70_000,
    ],
)
def test_garbage_is_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(CredentialError):
        verify(bad)


@pytest.mark.parametrize(
    "disclosure",
    [
        base64.urlsafe_b64encode(b'["s", "_sd", 1]').decode().rstrip("="),
        base64.urlsafe_b64encode(b'["s", "cnf", {}]').decode().rstrip("="),
        base64.urlsafe_b64encode(b'{"a": 1}').decode().rstrip("="),
        base64.urlsafe_b64encode(b'["s", 5, 1]').decode().rstrip("="),
        "!!!",
    ],
)
def test_malformed_disclosures_are_refused(disclosure: str) -> None:
    text = _reissue(lambda b: b.update(_sd=[digest_of(disclosure)]), [disclosure])
    kb_base = text
    claims = {"iat": NOW, "aud": "did:key:gw", "nonce": "n-1", "sd_hash": digest_of(kb_base)}
    kb = sign_jws(json.dumps(claims).encode(), HOLDER, headers={"typ": "kb+jwt"})
    with pytest.raises(CredentialError):
        verify(kb_base + kb)


def test_present_refuses_claims_that_are_not_there() -> None:
    with pytest.raises(CredentialError, match="cannot disclose"):
        presented(disclose=("address",))


def test_permissions_need_a_trusted_issuer_and_the_holders_own_credential() -> None:
    result = verify(presented())
    with pytest.raises(CredentialError, match="not trusted"):
        permissions_from([result], holder=HOLDER.did, trusted_issuers={"did:key:other"})
    with pytest.raises(CredentialError, match="holder"):
        permissions_from([result], holder=ISSUER.did, trusted_issuers={ISSUER.did})
    assert len(hashlib.sha256(b"").hexdigest()) == 64


class NoNetwork:
    """A resolver that fails the test if anything is resolved."""

    def resolve(self, did: str, *, now: float) -> Any:
        raise AssertionError(f"{did} was resolved")


@pytest.mark.parametrize(
    "signer",
    [
        Signer(ISSUER.private_key, "did:web:attacker.example#key-1"),  # kid on a host of theirs
        ISSUER,  # a did:key, whose credential points its status list at a host of theirs
    ],
)
def test_an_untrusted_issuer_is_refused_before_anything_is_resolved_or_fetched(
    signer: Signer,
) -> None:
    status = {"status_list": {"idx": 3, "uri": "https://attacker.example/list"}}
    body = clear(iss=signer.did, status=status)
    credential = issue(body, {}, signer, random_bytes=os.urandom)
    text = present(credential, (), HOLDER, nonce="n-1", aud="did:key:gw", iat=NOW)
    with pytest.raises(sd_jwt.UntrustedIssuer, match=f"{signer.did} are not trusted here"):
        verify_presentation(
            text,
            resolver=NoNetwork(),
            now=NOW,
            nonce="n-1",
            aud="did:key:gw",
            status=None,
            trusted_issuers={"did:key:gw"},
        )


def test_a_trusted_issuer_is_verified_as_before() -> None:
    result = verify(presented(), trusted_issuers={ISSUER.did})
    assert result.issuer == ISSUER.did
    header, rest = presented().split(".", 1)
    decoded = json.loads(base64.urlsafe_b64decode(header + "=="))
    decoded["kid"] = "did:web:attacker.example#key-1"  # iss still names the trusted one
    bad = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()
    with pytest.raises(sd_jwt.UntrustedIssuer):
        verify(f"{bad}.{rest}", trusted_issuers={ISSUER.did})

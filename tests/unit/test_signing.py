"""The signing recipes: RFC 8032 and RFC 8037 vectors through them, and every refusal."""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import load_vectors

from gateway.errors import ResolutionError, SignatureError
from gateway.identity import offline_resolver, sign_jws, verify_detached, verify_jws
from gateway.identity.did_key import did_from_public_key, ed25519_multikey
from gateway.identity.resolver import Resolution
from gateway.identity.signing import Signer, resolve_key

RFC8032 = load_vectors("rfc8032/ed25519.json")
RFC8037 = load_vectors("rfc8037/jws_ed25519.json")
NOW = 1_700_000_000.0


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def kid_of(public_hex: str) -> str:
    raw = bytes.fromhex(public_hex)
    return f"{did_from_public_key(raw)}#{ed25519_multikey(raw)}"


@pytest.mark.parametrize("vector", RFC8032, ids=[v["name"] for v in RFC8032])
def test_rfc8032_vector_signs_and_verifies_through_the_recipes(vector: dict) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["secret_key"]))
    signer = Signer.for_did_key(key)
    assert signer.kid == kid_of(vector["public_key"])
    message = bytes.fromhex(vector["message"])
    assert signer.sign(message).hex() == vector["signature"]
    verified = verify_detached(
        signer.kid,
        message,
        bytes.fromhex(vector["signature"]),
        resolver=offline_resolver(),
        relationship="authentication",
        now=NOW,
    )
    assert verified.did == signer.did


@pytest.mark.parametrize("vector", RFC8032, ids=[v["name"] for v in RFC8032])
def test_rfc8032_vector_with_one_bit_flipped_is_refused(vector: dict) -> None:
    signature = bytearray(bytes.fromhex(vector["signature"]))
    signature[5] ^= 0x01
    with pytest.raises(SignatureError, match="does not verify"):
        verify_detached(
            kid_of(vector["public_key"]),
            bytes.fromhex(vector["message"]),
            bytes(signature),
            resolver=offline_resolver(),
            relationship="assertionMethod",
            now=NOW,
        )


def test_rfc8037_a4_signature_is_reproduced_and_verified() -> None:
    a4 = RFC8037["A.4_signing"]
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8037["A.1_d_hex"]))
    signer = Signer.for_did_key(key)
    signing_input = a4["signing_input"].encode()
    assert b64u(signer.sign(signing_input)) == a4["signature_b64url"]
    verify_detached(
        signer.kid,
        signing_input,
        bytes.fromhex(a4["signature_hex"]),
        resolver=offline_resolver(),
        relationship="assertionMethod",
        now=NOW,
    )


def test_rfc8037_a4_jws_without_kid_is_refused() -> None:
    # Valid per RFC 8037, but the gateway needs a kid to know whose key to use.
    with pytest.raises(SignatureError, match="no kid"):
        verify_jws(
            RFC8037["A.4_signing"]["jws_compact"],
            resolver=offline_resolver(),
            relationship="assertionMethod",
            now=NOW,
        )


def test_jws_round_trip_with_the_rfc8037_key() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8037["A.1_d_hex"]))
    signer = Signer.for_did_key(key)
    token = sign_jws(b"Example of Ed25519 signing", signer, headers={"typ": "didgw-reading"})
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "EdDSA", "kid": signer.kid, "typ": "didgw-reading"}
    verified = verify_jws(
        token, resolver=offline_resolver(), relationship="assertionMethod", now=NOW
    )
    assert verified.payload == b"Example of Ed25519 signing"
    assert verified.signer.did == signer.did
    assert verified.header["typ"] == "didgw-reading"


def test_sign_jws_writes_what_joserfc_writes_and_joserfc_verifies_it() -> None:
    """sign_jws serialises the compact JWS itself (the handshake's hot path): byte for byte
    what joserfc makes of the same header, payload and key, and joserfc's check accepts it,
    for the RFC 8037 key and fresh ones, with and without extra header members, for empty,
    binary and non-ASCII payloads."""
    from joserfc import jws
    from joserfc.jwk import OKPKey

    keys = [Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8037["A.1_d_hex"]))]
    keys += [Ed25519PrivateKey.generate() for _ in range(3)]
    payloads = [b"", b"Example of Ed25519 signing", bytes(range(256)), "Zähler 1".encode()]
    for key, payload, headers in itertools.product(
        keys, payloads, [None, {"typ": "didgw-grant"}, {"typ": "x", "cty": "é"}]
    ):
        signer = Signer.for_did_key(key)
        ours = sign_jws(payload, signer, headers=headers)
        theirs = jws.serialize_compact(
            {"alg": "EdDSA", "kid": signer.kid, **(headers or {})},
            payload,
            OKPKey.import_key(key),
            algorithms=["EdDSA"],
        )
        assert ours == theirs
        checked = jws.deserialize_compact(ours, OKPKey.import_key(key.public_key()), ["EdDSA"])
        assert checked.payload == payload


def _token(header: dict[str, Any], payload: bytes, key: Ed25519PrivateKey) -> str:
    signing_input = f"{b64u(json.dumps(header).encode())}.{b64u(payload)}"
    return f"{signing_input}.{b64u(key.sign(signing_input.encode()))}"


def _verify(token: str, relationship: str = "assertionMethod") -> Any:
    return verify_jws(token, resolver=offline_resolver(), relationship=relationship, now=NOW)


def test_fully_specified_ed25519_alg_is_accepted(new_did: Any) -> None:
    signer = new_did()
    token = _token({"alg": "Ed25519", "kid": signer.kid}, b"x", signer.private_key)
    assert _verify(token).payload == b"x"


@pytest.mark.parametrize("alg", ["none", "HS256", "ES256", "RS256", None])
def test_other_algorithms_are_refused(new_did: Any, alg: str | None) -> None:
    signer = new_did()
    token = _token({"alg": alg, "kid": signer.kid}, b"x", signer.private_key)
    with pytest.raises(SignatureError, match="alg"):
        _verify(token)


def test_tampered_payload_is_refused(new_did: Any) -> None:
    signer = new_did()
    head, _, sig = sign_jws(b'{"w":1}', signer).split(".")
    with pytest.raises(SignatureError, match="does not verify"):
        _verify(head + "." + b64u(b'{"w":9}') + "." + sig)


def test_signature_by_another_key_under_a_victims_kid_is_refused(new_did: Any) -> None:
    victim, attacker = new_did(), new_did()
    token = _token({"alg": "EdDSA", "kid": victim.kid}, b"x", attacker.private_key)
    with pytest.raises(SignatureError, match="does not verify"):
        _verify(token)


def test_kid_fragment_that_is_not_in_the_document_is_refused(new_did: Any) -> None:
    signer = new_did()
    token = _token({"alg": "EdDSA", "kid": signer.did + "#key-2"}, b"x", signer.private_key)
    with pytest.raises(SignatureError, match="no verification method"):
        _verify(token)


@pytest.mark.parametrize("kid", ["z6Mk", "did:key:z6Mkabc", "https://example.com/key", 7])
def test_kid_that_is_not_a_did_url_is_refused(new_did: Any, kid: Any) -> None:
    signer = new_did()
    token = _token({"alg": "EdDSA", "kid": kid}, b"x", signer.private_key)
    with pytest.raises(SignatureError):
        _verify(token)


def test_unresolvable_method_is_refused_with_the_reason(new_did: Any) -> None:
    signer = new_did()
    token = _token({"alg": "EdDSA", "kid": "did:example:123#key-1"}, b"x", signer.private_key)
    with pytest.raises(SignatureError, match="did:example is not supported"):
        _verify(token)


def test_critical_headers_are_refused(new_did: Any) -> None:
    signer = new_did()
    # RFC 7797 unencoded payload: must not be silently treated as an ordinary JWS.
    token = _token(
        {"alg": "EdDSA", "kid": signer.kid, "b64": False, "crit": ["b64"]}, b"x", signer.private_key
    )
    with pytest.raises(SignatureError, match="critical"):
        _verify(token)


@pytest.mark.parametrize(
    "token", ["", "a.b", "a.b.c.d", "!!!.e30.AAAA", "e30.e30", b"\xff.\xff.\xff"]
)
def test_malformed_tokens_are_refused(token: Any) -> None:
    with pytest.raises(SignatureError):
        _verify(token)


def test_relationship_is_enforced(new_did: Any) -> None:
    signer = new_did()
    token = sign_jws(b"x", signer)
    with pytest.raises(SignatureError, match="not authorised for keyAgreement"):
        _verify(token, relationship="keyAgreement")


class _FixedResolver:
    """A resolver that returns one hand-written document (a did:web-like controller)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def resolve(self, did: str, *, now: float) -> Resolution:
        if did != self.document["id"]:
            raise ResolutionError(f"unknown {did}")
        return Resolution(did, self.document, "test", now)


def test_method_listed_only_for_authentication_cannot_sign_assertions(new_did: Any) -> None:
    signer = new_did()
    did = "did:web:example.com"
    document = {
        "id": did,
        "verificationMethod": [
            {
                "id": "#auth",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": signer.kid.rpartition("#")[2],
            }
        ],
        "authentication": ["#auth"],
    }
    resolver = _FixedResolver(document)
    key = resolve_key(f"{did}#auth", resolver=resolver, relationship="authentication", now=NOW)
    assert key.did == did
    with pytest.raises(SignatureError, match="not authorised for assertionMethod"):
        resolve_key(f"{did}#auth", resolver=resolver, relationship="assertionMethod", now=NOW)


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ({"type": "EcdsaSecp256k1VerificationKey2019", "publicKeyHex": "02"}, "cannot use"),
        (
            {"type": "JsonWebKey2020", "publicKeyJwk": {"kty": "EC", "crv": "P-256"}},
            "not a public Ed25519 JWK",
        ),
        (
            {
                "type": "Multikey",
                "publicKeyMultibase": "zDnaerDaTF5BXEavCrfRZEk316dpbLsfPDZ3WJ5hRTPFU2169",
            },
            "not an Ed25519 key",
        ),
    ],
)
def test_unusable_verification_methods_are_refused(method: dict, message: str) -> None:
    did = "did:web:example.com"
    document = {
        "id": did,
        "verificationMethod": [{"id": f"{did}#k", "controller": did, **method}],
        "assertionMethod": [f"{did}#k"],
    }
    with pytest.raises(SignatureError, match=message):
        resolve_key(
            f"{did}#k", resolver=_FixedResolver(document), relationship="assertionMethod", now=NOW
        )


def test_jwk_with_private_part_is_refused(new_did: Any) -> None:
    jwk = dict(RFC8037["A.1_private_key_jwk"])
    did = "did:web:example.com"
    document = {
        "id": did,
        "verificationMethod": [
            {"id": f"{did}#k", "type": "JsonWebKey2020", "controller": did, "publicKeyJwk": jwk}
        ],
        "assertionMethod": [f"{did}#k"],
    }
    with pytest.raises(SignatureError, match="public Ed25519 JWK"):
        resolve_key(
            f"{did}#k", resolver=_FixedResolver(document), relationship="assertionMethod", now=NOW
        )


def test_jwk_and_2018_key_encodings_verify() -> None:
    import base58

    a4 = RFC8037["A.4_signing"]
    did = "did:web:example.com"
    document = {
        "id": did,
        "verificationMethod": [
            {
                "id": f"{did}#jwk",
                "type": "JsonWebKey2020",
                "controller": did,
                "publicKeyJwk": RFC8037["A.2_public_key_jwk"],
            },
            {
                "id": f"{did}#b58",
                "type": "Ed25519VerificationKey2018",
                "controller": did,
                "publicKeyBase58": base58.b58encode(bytes.fromhex(RFC8037["A.1_x_hex"])).decode(),
            },
        ],
        "assertionMethod": [f"{did}#jwk", f"{did}#b58"],
    }
    for vm in ("#jwk", "#b58"):
        verify_detached(
            did + vm,
            a4["signing_input"].encode(),
            bytes.fromhex(a4["signature_hex"]),
            resolver=_FixedResolver(document),
            relationship="assertionMethod",
            now=NOW,
        )


# -- the header rules, one for every verifier -------------------------------------------


def _the_three_verifiers(token: str, signer: Signer) -> list[tuple[str, str]]:
    """(verifier, outcome) for the token through each of the three JWS verifiers: the
    DID-resolving one, the raw-key one (SD-JWT key binding) and the readings' fast path."""
    from gateway.auth.strict import AuthRefused, split_jws, verify_signed
    from gateway.identity.keystore import public_bytes
    from gateway.identity.signing import verify_jws_with_key

    def resolving() -> None:
        _verify(token)

    def raw_key() -> None:
        verify_jws_with_key(token, public_bytes(signer.private_key))

    def readings() -> None:
        header, body = split_jws(token.encode(), "t")
        verify_signed(
            token.encode(),
            header,
            body,
            signer.did,
            resolver=offline_resolver(),
            relationship="assertionMethod",
            now_ms=int(NOW * 1000),
        )

    outcomes = []
    for name, check in (("resolving", resolving), ("raw key", raw_key), ("readings", readings)):
        try:
            check()
            outcomes.append((name, "accepted"))
        except SignatureError as exc:
            outcomes.append((name, f"refused: {exc}"))
        except AuthRefused as exc:
            assert exc.reason == "bad_signature"
            outcomes.append((name, f"refused: {exc.detail}"))
    return outcomes


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({}, None),
        ({"alg": "Ed25519"}, None),
        ({"alg": "none"}, "JWS alg 'none' refused; expected EdDSA"),
        ({"alg": "HS256"}, "JWS alg 'HS256' refused; expected EdDSA"),
        ({"b64": False, "crit": ["b64"]}, "JWS has critical header parameters ['b64']; refused"),
        ({"crit": []}, "JWS has critical header parameters []; refused"),
    ],
)
def test_every_verifier_applies_the_same_header_rules(
    new_did: Any, change: dict[str, Any], why: str | None
) -> None:
    signer = new_did()
    token = _token(
        {"alg": "EdDSA", "kid": signer.kid, "typ": "t", **change}, b"x", signer.private_key
    )
    expected = "accepted" if why is None else f"refused: {why}"
    assert _the_three_verifiers(token, signer) == [
        ("resolving", expected),
        ("raw key", expected),
        ("readings", expected),
    ]


def test_a_kid_is_needed_except_where_the_key_is_given(new_did: Any) -> None:
    signer = new_did()
    token = _token({"alg": "EdDSA", "typ": "t"}, b"x", signer.private_key)
    refused = "refused: JWS header has no kid (the signer's DID URL)"
    assert _the_three_verifiers(token, signer) == [
        ("resolving", refused),
        ("raw key", "accepted"),
        ("readings", refused),
    ]


@pytest.mark.parametrize("name", ["alg", "kid", "crit"])
def test_what_the_rules_set_cannot_be_set_by_a_caller(new_did: Any, name: str) -> None:
    with pytest.raises(ValueError, match="set by the header rules"):
        sign_jws(b"x", new_did(), headers={"typ": "t", name: "none"})

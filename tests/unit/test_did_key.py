"""did:key: the spec's vectors, the reference document shape, and every way a did:key is wrong."""

from __future__ import annotations

import pytest
from support import load_vectors

from gateway.errors import DidError
from gateway.identity.did_key import (
    X25519_PUB,
    did_from_public_key,
    ed25519_to_x25519,
    encode_multikey,
    parse_did_key,
    resolve_did_key,
)
from gateway.identity.document import split_did_url

VALID = load_vectors("did-key/ed25519.json")["vectors"]
INVALID = load_vectors("did-key/invalid.json")["vectors"]


@pytest.mark.parametrize("vector", VALID, ids=[v["name"] for v in VALID])
def test_spec_vector_decodes_to_its_public_key(vector: dict) -> None:
    parsed = parse_did_key(vector["did"])
    assert parsed.public_key.hex() == vector["public_key_hex"]
    assert did_from_public_key(parsed.public_key) == vector["did"]


@pytest.mark.parametrize(
    "vector", [v for v in VALID if v.get("x25519_public_key_hex")], ids=lambda v: v["name"]
)
def test_spec_vector_x25519_derivation(vector: dict) -> None:
    x25519 = ed25519_to_x25519(bytes.fromhex(vector["public_key_hex"]))
    assert x25519.hex() == vector["x25519_public_key_hex"]


def test_spec_multikey_document_with_key_agreement_is_reproduced_exactly() -> None:
    # did:key spec, Appendix "Test Vectors" > "Ed25519 with X25519" (Multikey form).
    vector = next(v for v in VALID if v["name"] == "spec-appendix-ed25519-with-x25519-multikey")
    document = resolve_did_key(vector["did"], key_agreement=True)
    assert document == vector["did_document"]
    assert list(document) == list(vector["did_document"])  # same key order too


def test_default_document_has_the_four_relationships_and_no_key_agreement() -> None:
    did = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    vm = f"{did}#z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    document = resolve_did_key(did)
    assert document["@context"] == [
        "https://www.w3.org/ns/did/v1",
        "https://w3id.org/security/multikey/v1",
    ]
    assert document["verificationMethod"] == [
        {
            "id": vm,
            "type": "Multikey",
            "controller": did,
            "publicKeyMultibase": "z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
        }
    ]
    for rel in (
        "authentication",
        "assertionMethod",
        "capabilityDelegation",
        "capabilityInvocation",
    ):
        assert document[rel] == [vm]
    assert "keyAgreement" not in document


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_test_suite_invalid_dids_are_refused(vector: dict) -> None:
    with pytest.raises(DidError):
        if "did_url" in vector:  # a DID URL with characters DID syntax does not allow
            split_did_url(vector["did_url"])
        else:
            parse_did_key(vector["did"])


@pytest.mark.parametrize(
    ("did", "message"),
    [
        ("did:key:", "expected did:key:<multibase key>"),
        ("did:web:example.com", "must start with 'did:key:'"),
        ("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK#frag", "expected did:key"),
        ("did:key:m7QFlZSBrZXk", "multibase prefix 'm' is not supported"),
        ("did:key:z0OIl", "not valid base58btc"),
        # P-256 key (multicodec 0x1200), from the did:key spec's P-256 examples.
        ("did:key:zDnaerDaTF5BXEavCrfRZEk316dpbLsfPDZ3WJ5hRTPFU2169", "p256-pub"),
        # secp256k1 (0xe7), from the did:key spec's secp256k1 examples.
        ("did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme", "secp256k1-pub"),
    ],
)
def test_clear_errors(did: str, message: str) -> None:
    with pytest.raises(DidError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_did_key(did)


def test_x25519_did_key_is_refused_with_its_codec_name() -> None:
    x_did = "did:key:" + encode_multikey(X25519_PUB, bytes(32))
    with pytest.raises(DidError, match="x25519-pub"):
        parse_did_key(x_did)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_wrong_key_length(length: int) -> None:
    did = "did:key:" + encode_multikey(0xED, bytes(range(length)))
    with pytest.raises(DidError, match=f"this one is {length}"):
        parse_did_key(did)
    with pytest.raises(DidError, match="32 bytes"):
        did_from_public_key(bytes(length))


def test_round_trip_of_generated_keys() -> None:
    from gateway.identity.keystore import generate_key, public_bytes

    for _ in range(20):
        raw = public_bytes(generate_key())
        did = did_from_public_key(raw)
        assert did.startswith("did:key:z6Mk")
        assert parse_did_key(did).public_key == raw

"""eddsa-jcs-2022 against the W3C vc-di-eddsa test vectors, and its refusals."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import base58
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import VECTORS, WebResolver

from gateway.credentials.data_integrity import (
    add_proof,
    canonical,
    hash_data,
    proof_config,
    verify_proofs,
)
from gateway.errors import CredentialError
from gateway.identity import offline_resolver
from gateway.identity.did_key import decode_multikey
from gateway.identity.signing import Signer

DIR = VECTORS / "w3c-vc-di-eddsa"
NOW = 1_700_000_000.0


def text(name: str) -> str:
    return (DIR / name).read_text().strip()


def load(name: str) -> Any:
    return json.loads((DIR / name).read_text())


def vector_signer() -> Signer:
    pair = load("keyPair.json")
    codec, secret = decode_multikey(pair["privateKeyMultibase"])
    assert codec == 0x1300  # multicodec ed25519-priv
    signer = Signer.for_did_key(Ed25519PrivateKey.from_private_bytes(secret))
    assert signer.did == f"did:key:{pair['publicKeyMultibase']}"
    return signer


def test_canonical_document_is_the_vectors() -> None:
    assert canonical(load("unsigned.json")).decode() == text("eddsa-jcs-2022_canonDocJCS.txt")


def test_proof_config_and_its_canonical_form_are_the_vectors() -> None:
    signer = vector_signer()
    config = proof_config(load("unsigned.json"), signer.kid, created="2023-02-24T23:36:38Z")
    assert config == load("eddsa-jcs-2022_proofConfigJCS.json")
    assert canonical(config).decode() == text("eddsa-jcs-2022_proofCanonJCS.txt")


def test_combined_hash_is_the_vectors() -> None:
    config = load("eddsa-jcs-2022_proofConfigJCS.json")
    combined = hash_data(load("unsigned.json"), config)
    assert combined.hex() == text("eddsa-jcs-2022_combinedHashJCS.txt")
    assert (
        combined[:32] == hashlib.sha256(text("eddsa-jcs-2022_proofCanonJCS.txt").encode()).digest()
    )


def test_signing_reproduces_the_signed_vector_exactly() -> None:
    signed = add_proof(load("unsigned.json"), vector_signer(), created="2023-02-24T23:36:38Z")
    assert signed == load("eddsa-jcs-2022_signedJCS.json")
    assert signed["proof"]["proofValue"] == text("eddsa-jcs-2022_sigBTC58JCS.txt")
    # key order as in the vector too (the proof's members in the spec's order)
    assert list(signed["proof"]) == list(load("eddsa-jcs-2022_signedJCS.json")["proof"])


def test_the_signed_vector_verifies() -> None:
    [proof] = verify_proofs(
        load("eddsa-jcs-2022_signedJCS.json"), resolver=offline_resolver(), now=NOW
    )
    assert proof.controller == vector_signer().did


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("credentialSubject", "alumniOf"), "The School of Forgery"),
        (("validFrom",), "2023-01-01T00:00:01Z"),
        (("proof", "created"), "2023-02-24T23:36:39Z"),
        (("@context",), ["https://www.w3.org/ns/credentials/v2"]),
    ],
)
def test_any_change_breaks_the_proof(path: tuple[str, ...], value: Any) -> None:
    doc = load("eddsa-jcs-2022_signedJCS.json")
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(CredentialError):
        verify_proofs(doc, resolver=offline_resolver(), now=NOW)


def _signed() -> dict[str, Any]:
    return load("eddsa-jcs-2022_signedJCS.json")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("proof"), "no proof"),
        (lambda d: d.__setitem__("proof", []), "empty proof set"),
        (lambda d: d["proof"].__setitem__("cryptosuite", "eddsa-rdfc-2022"), "unsupported proof"),
        (lambda d: d["proof"].__setitem__("proofPurpose", "authentication"), "proofPurpose"),
        (lambda d: d["proof"].__setitem__("proofValue", "u" + "A" * 86), "base58btc"),
        (lambda d: d["proof"].__setitem__("proofValue", "z0OIl"), "base58btc"),
        (lambda d: d["proof"].__setitem__("proofValue", "z" + "1" * 40), "bytes"),
        (lambda d: d["proof"].__setitem__("previousProof", "urn:x"), "chains"),
        (lambda d: d["proof"].__setitem__("expires", "2023-03-01T00:00:00Z"), "expired"),
        (lambda d: d["proof"].__setitem__("created", "yesterday"), "date-time"),
        (lambda d: d["proof"].__setitem__("verificationMethod", "did:web:x.example"), "DID URL"),
        (
            lambda d: d["proof"].__setitem__("@context", ["https://example.org/other"]),
            "@context",
        ),
        (lambda d: d.__setitem__("extra", float("nan")), "canonicalise"),
    ],
)
def test_refusals_say_why(change: Any, message: str) -> None:
    doc = _signed()
    change(doc)
    with pytest.raises(CredentialError, match=message):
        verify_proofs(doc, resolver=offline_resolver(), now=NOW)


def test_a_proof_set_fails_if_any_proof_fails() -> None:
    other = Signer.for_did_key(Ed25519PrivateKey.generate())
    doc = add_proof(_signed(), other, created="2024-01-01T00:00:00Z")
    assert isinstance(doc["proof"], list) and len(doc["proof"]) == 2
    assert len(verify_proofs(doc, resolver=offline_resolver(), now=NOW)) == 2
    bad = copy.deepcopy(doc)
    sig = base58.b58decode(bad["proof"][1]["proofValue"][1:])
    bad["proof"][1]["proofValue"] = "z" + base58.b58encode(bytes([sig[0] ^ 1]) + sig[1:]).decode()
    with pytest.raises(CredentialError, match="proof 2 of 2"):
        verify_proofs(bad, resolver=offline_resolver(), now=NOW)


def test_an_issuer_on_did_web_verifies_through_the_resolver() -> None:
    key = Ed25519PrivateKey.generate()
    did_key_signer = Signer.for_did_key(key)
    multikey = did_key_signer.kid.split("#")[1]
    did = "did:web:issuer.example"
    document = {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": did,
        "verificationMethod": [
            {
                "id": f"{did}#k1",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": multikey,
            }
        ],
        "assertionMethod": [f"{did}#k1"],
    }
    resolver = WebResolver(document)
    signed = add_proof(
        {**load("unsigned.json"), "issuer": did},
        Signer(key, f"{did}#k1"),
        created="2024-01-01T00:00:00Z",
    )
    [proof] = verify_proofs(signed, resolver=resolver, now=NOW)
    assert proof.controller == did
    document["assertionMethod"] = []
    with pytest.raises(CredentialError, match="not authorised for assertionMethod"):
        verify_proofs(signed, resolver=WebResolver(document), now=NOW)

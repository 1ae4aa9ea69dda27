"""``didgw did resolve`` prints the same did:key document as the reference implementation.

The reference is Digital Bazaar's ``@digitalbazaar/did-method-key`` (pinned in
tests/interop/didkey-js, installed by scripts/setup.sh --dev), run under node.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from support import ROOT, Run, load_vectors

from gateway.identity.did_key import did_from_public_key, resolve_did_key
from gateway.identity.keystore import generate_key, public_bytes

pytestmark = pytest.mark.integration

SCRIPT = ROOT / "tests" / "interop" / "didkey-js" / "resolve.mjs"


def reference(*dids: str, suite: str | None = None) -> list[dict]:
    node = shutil.which("node")
    assert node, "node is not installed: run scripts/setup.sh --dev"
    assert (SCRIPT.parent / "node_modules").is_dir(), "run scripts/setup.sh --dev (npm ci)"
    args = [node, str(SCRIPT), *([suite] if suite else []), *dids]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def sample_dids() -> list[str]:
    vectors = {v["did"] for v in load_vectors("did-key/ed25519.json")["vectors"]}
    generated = {did_from_public_key(public_bytes(generate_key())) for _ in range(40)}
    # Keys with leading zero bytes exercise base58's leading-'1' rule.
    edge = {did_from_public_key(bytes(32)), did_from_public_key(b"\x00\x00" + bytes(range(30)))}
    return sorted(vectors | generated | edge)


def test_documents_equal_the_reference_implementation() -> None:
    dids = sample_dids()
    for did, expected in zip(dids, reference(*dids), strict=True):
        ours = resolve_did_key(did)
        assert ours == expected, did
        assert list(ours) == list(expected)  # key order too, so the JSON text matches


def test_cli_output_is_the_reference_document(didgw: Run) -> None:
    dids = sample_dids()[:3]
    for did, expected in zip(dids, reference(*dids), strict=True):
        result = didgw("did", "resolve", did)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == expected


def test_x25519_key_agreement_matches_the_reference_derivation() -> None:
    dids = sample_dids()[:10]
    for did, expected in zip(dids, reference(*dids, suite="--ed25519-2020"), strict=True):
        ours = resolve_did_key(did, key_agreement=True)["keyAgreement"][0]
        theirs = expected["keyAgreement"][0]
        assert ours["publicKeyMultibase"] == theirs["publicKeyMultibase"]
        assert ours["id"] == theirs["id"]


@pytest.mark.parametrize(
    "did",
    [
        "did:key:z6MkINVALID",
        "did:key:z6Mkabc",
        "did:key:z6LSbysY2xFMRpGMhb7tFTLMpeuPRaqaWM1yECx2AtzE3KCc",
    ],
)
def test_both_implementations_refuse_invalid_dids(didgw: Run, did: str) -> None:
    node = subprocess.run(
        [shutil.which("node") or "node", str(SCRIPT), did],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert node.returncode == 1
    ours = didgw("did", "resolve", did)
    assert ours.returncode == 1 and ours.stderr.startswith("didgw: error:")

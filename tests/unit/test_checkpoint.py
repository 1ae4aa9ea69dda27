"""Signed checkpoints: round trips, Go's signed-note vectors, the C2SP examples, every refusal."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from support import load_vectors

from gateway.chain.checkpoint import (
    MAX_NOTE_BYTES,
    CheckpointError,
    checkpoint_body,
    note_key_id,
    parse_checkpoint,
    parse_note,
    sign_checkpoint,
    sign_note,
    signature_line,
    verifier_key,
    verify_checkpoint,
)
from gateway.identity import offline_resolver
from gateway.identity.did_key import ed25519_multikey
from gateway.identity.keystore import generate_key, public_bytes
from gateway.identity.resolver import Resolution
from gateway.identity.signing import Signer

GO = load_vectors("signed-note/golang-sumdb-note.json")
C2SP = load_vectors("signed-note/c2sp-examples.json")
NOW = 1_700_000_000.0
TIME = 1_700_000_042
ROOT = hashlib.sha256(b"a Merkle tree root").digest()
EM_DASH = "\u2014"


@pytest.fixture(scope="module")
def gateway() -> Signer:
    return Signer.for_did_key(generate_key())


@pytest.fixture(scope="module")
def other() -> Signer:
    return Signer.for_did_key(generate_key())


@pytest.fixture(scope="module")
def signed(gateway: Signer) -> str:
    return sign_checkpoint(checkpoint_body(gateway.did, 5, ROOT, TIME), gateway)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def verify(note: str | bytes, **kwargs: Any) -> Any:
    return verify_checkpoint(note, resolver=offline_resolver(), now=NOW, **kwargs)


def split(note: str) -> tuple[list[str], str]:
    """The body lines and the signature block of a signed note."""
    body, _, sigs = note.partition("\n\n")
    return body.split("\n"), sigs


def join(lines: list[str], sigs: str) -> str:
    return "\n".join(lines) + "\n\n" + sigs


# --- what didgw writes --------------------------------------------------------------------


def test_body_is_origin_size_root_and_time_each_on_its_own_line(gateway: Signer) -> None:
    body = checkpoint_body(gateway.did, 5, ROOT, TIME)
    assert body == f"{gateway.did}\n5\n{b64(ROOT)}\ntime {TIME}\n"


def test_signed_checkpoint_is_body_blank_line_and_origin_signature_line(
    gateway: Signer, signed: str
) -> None:
    body = checkpoint_body(gateway.did, 5, ROOT, TIME)
    assert signed.startswith(body + "\n")
    line = signed[len(body) + 1 :]
    match = re.fullmatch(f"{EM_DASH} (\\S+) ([A-Za-z0-9+/]+=*)\n", line)
    assert match and match.group(1) == gateway.did
    raw = base64.b64decode(match.group(2))
    key = public_bytes(gateway.private_key)
    expected_id = hashlib.sha256(gateway.did.encode() + b"\n\x01" + key).digest()[:4]
    assert raw[:4] == expected_id
    Ed25519PublicKey.from_public_bytes(key).verify(raw[4:], body.encode())


def test_round_trip_sign_parse_verify(gateway: Signer, signed: str) -> None:
    checkpoint, signatures = parse_checkpoint(signed)
    assert (checkpoint.origin, checkpoint.size, checkpoint.root, checkpoint.time) == (
        gateway.did,
        5,
        ROOT,
        TIME,
    )
    assert checkpoint.text == signed
    assert checkpoint.body == checkpoint_body(gateway.did, 5, ROOT, TIME)
    key_id = note_key_id(gateway.did, public_bytes(gateway.private_key))
    assert [(s.key_name, s.key_id, len(s.signature)) for s in signatures] == [
        (gateway.did, key_id, 64)
    ]
    assert verify(signed) == checkpoint
    assert verify(signed.encode(), origin=gateway.did) == checkpoint


def test_empty_tree_and_largest_values_round_trip(gateway: Signer) -> None:
    for size, time in ((0, 0), (2**64 - 1, 2**63 - 1)):
        note = sign_checkpoint(checkpoint_body(gateway.did, size, ROOT, time), gateway)
        checkpoint = verify(note)
        assert (checkpoint.size, checkpoint.time) == (size, time)


def test_verifier_key_of_a_gateway_is_what_go_note_tools_take(gateway: Signer) -> None:
    key = public_bytes(gateway.private_key)
    name, key_id, encoded = verifier_key(gateway.did, key).split("+", 2)
    assert name == gateway.did
    assert int(key_id, 16) == note_key_id(gateway.did, key)
    assert base64.b64decode(encoded) == b"\x01" + key


# --- verification refusals ----------------------------------------------------------------


def test_checkpoint_from_another_origin_than_expected_is_refused(
    signed: str, other: Signer
) -> None:
    with pytest.raises(CheckpointError, match=f"not from {re.escape(other.did)}"):
        verify(signed, origin=other.did)


@pytest.mark.parametrize(
    ("line", "value"),
    [(1, "6"), (2, b64(hashlib.sha256(b"another root").digest())), (3, f"time {TIME + 1}")],
    ids=["size", "root", "time"],
)
def test_tampered_line_is_refused(signed: str, line: int, value: str) -> None:
    lines, sigs = split(signed)
    lines[line] = value
    with pytest.raises(CheckpointError, match="does not verify"):
        verify(join(lines, sigs))


def test_tampered_origin_is_refused(signed: str, other: Signer) -> None:
    lines, sigs = split(signed)
    lines[0] = other.did
    with pytest.raises(CheckpointError, match="not signed by its origin"):
        verify(join(lines, sigs))
    renamed = sigs.replace(split(signed)[0][0], other.did)
    with pytest.raises(CheckpointError, match="not signed by its origin"):
        verify(join(lines, renamed))


def test_signature_by_another_key_under_the_origins_name_is_refused(
    gateway: Signer, other: Signer
) -> None:
    body = checkpoint_body(gateway.did, 5, ROOT, TIME)
    impostor = sign_note(body, other, gateway.did)  # another key ID: not the origin's key
    with pytest.raises(CheckpointError, match="not signed by its origin"):
        verify(impostor)
    forged_id = note_key_id(gateway.did, public_bytes(gateway.private_key)).to_bytes(4, "big")
    forged = f"{body}\n{EM_DASH} {gateway.did} {b64(forged_id + other.sign(body.encode()))}\n"
    with pytest.raises(CheckpointError, match="does not verify"):
        verify(forged)


def test_sign_checkpoint_refuses_a_signer_that_is_not_the_origin(
    gateway: Signer, other: Signer
) -> None:
    body = checkpoint_body(gateway.did, 5, ROOT, TIME)
    with pytest.raises(CheckpointError, match="signed by the gateway whose DID is its origin"):
        sign_checkpoint(body, other)
    with pytest.raises(CheckpointError, match="signed by the gateway whose DID is its origin"):
        sign_checkpoint(body, other, key_name=gateway.did)


def test_cosignature_lines_are_ignored(gateway: Signer, other: Signer, signed: str) -> None:
    body = checkpoint_body(gateway.did, 5, ROOT, TIME)
    witness = signature_line(body, other, "witness.example/w1")
    assert sign_checkpoint(body, other, key_name="witness.example/w1") == body + "\n" + witness
    unknown = f"{EM_DASH} witness.example/w2 {b64(bytes(76))}\n"  # e.g. a timestamped cosignature
    same_name_other_key = signature_line(body, other, gateway.did)
    for note in (
        signed + witness + unknown,
        body + "\n" + witness + same_name_other_key + signed[len(body) + 1 :],
    ):
        assert verify(note).size == 5
        assert len(parse_checkpoint(note)[1]) == 3


def test_unsigned_by_origin_is_refused_even_with_valid_cosignatures(
    gateway: Signer, other: Signer
) -> None:
    body = checkpoint_body(gateway.did, 5, ROOT, TIME)
    note = sign_checkpoint(body, other, key_name="witness.example/w1")
    with pytest.raises(CheckpointError, match=r"none of its 1 signature line\(s\)"):
        verify(note)


class StaticResolver:
    """A resolver that knows one DID document (a did:web gateway, say)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def resolve(self, did: str, *, now: float) -> Resolution:
        assert did == self.document["id"]
        return Resolution(did, self.document, "https://gw.example/.well-known/did.json", now)


def did_web_document(key: Ed25519PrivateKey, relationship: str) -> dict[str, Any]:
    did = "did:web:gw.example"
    method = {
        "id": f"{did}#key-1",
        "type": "Multikey",
        "controller": did,
        "publicKeyMultibase": ed25519_multikey(public_bytes(key)),
    }
    return {"id": did, "verificationMethod": [method], relationship: [method["id"]]}


def test_origin_that_is_not_a_did_key_is_checked_through_its_document() -> None:
    key = generate_key()
    signer = Signer(key, "did:web:gw.example#key-1")
    note = sign_checkpoint(checkpoint_body(signer.did, 7, ROOT, TIME), signer)
    resolver = StaticResolver(did_web_document(key, "assertionMethod"))
    assert verify_checkpoint(note, resolver=resolver, now=NOW).size == 7
    only_auth = StaticResolver(did_web_document(key, "authentication"))
    with pytest.raises(CheckpointError, match="not signed by its origin"):
        verify_checkpoint(note, resolver=only_auth, now=NOW)


# --- malformed input ----------------------------------------------------------------------


def replace_line(index: int, value: str) -> Any:
    def mutate(note: str) -> str:
        lines, sigs = split(note)
        lines[index] = value
        return join(lines, sigs)

    return mutate


def insert_line(index: int, value: str) -> Any:
    def mutate(note: str) -> str:
        lines, sigs = split(note)
        lines.insert(index, value)
        return join(lines, sigs)

    return mutate


def replace_signatures(value: str) -> Any:
    return lambda note: join(split(note)[0], value)


MALFORMED: list[tuple[str, Any, str]] = [
    ("no blank line", lambda n: n.replace("\n\n", "\n"), "no blank line"),
    ("no signature lines", lambda n: n.partition("\n\n")[0] + "\n\n", "no signature lines"),
    ("signature without newline", lambda n: n[:-1], "does not end with a newline"),
    ("root not base64", replace_line(2, "not*base64"), "root hash .* is not standard base64"),
    ("root unpadded", replace_line(2, b64(ROOT).rstrip("=")), "not standard base64"),
    ("root urlsafe", replace_line(2, base64.urlsafe_b64encode(b"\xff" * 32).decode()), "base64"),
    ("root non-canonical", replace_line(2, b64(ROOT)[:-2] + "J="), "not canonical base64"),
    ("root 31 bytes", replace_line(2, b64(ROOT[:31])), "root hash is 31 bytes"),
    ("root 33 bytes", replace_line(2, b64(ROOT + b"\0")), "root hash is 33 bytes"),
    ("size leading zero", replace_line(1, "05"), "tree size '05' is not a decimal"),
    ("size plus", replace_line(1, "+5"), "tree size '\\+5' is not a decimal"),
    ("size minus", replace_line(1, "-5"), "not a decimal"),
    ("size space", replace_line(1, " 5"), "not a decimal"),
    ("size underscore", replace_line(1, "5_0"), "not a decimal"),
    ("size arabic digit", replace_line(1, "\u0665"), "not a decimal"),
    ("size hex", replace_line(1, "0x5"), "not a decimal"),
    ("size too large", replace_line(1, str(2**64)), "larger than"),
    ("size huge", replace_line(1, "9" * 5000), "larger than"),
    ("size empty", replace_line(1, ""), "line 2 is empty"),
    ("origin empty", replace_line(0, ""), "origin \\(line 1\\) is empty"),
    (
        "origin not a DID",
        replace_line(0, "example.com/log"),
        "origin 'example.com/log' is not a DID",
    ),
    ("origin bad did:key", replace_line(0, "did:key:zBad"), "not a usable did:key"),
    ("time missing", lambda n: join(split(n)[0][:3], split(n)[1]), "has 3 lines"),
    ("time leading zero", replace_line(3, "time 01"), "time '01' is not a decimal"),
    ("time negative", replace_line(3, "time -1"), "not a decimal"),
    ("time too large", replace_line(3, f"time {2**63}"), "larger than"),
    ("time wrong keyword", replace_line(3, f"Time {TIME}"), "line 4 must be 'time <unix seconds>'"),
    ("time two spaces", replace_line(3, f"time  {TIME}"), "not a decimal"),
    ("extra extension line", insert_line(4, "note something"), "1 line\\(s\\) after the time line"),
    ("empty line in text", insert_line(1, ""), "line 2 is empty"),
    ("hyphen not em dash", lambda n: n.replace(EM_DASH, "-"), "does not start with an em dash"),
    ("en dash", lambda n: n.replace(EM_DASH, "\u2013"), "does not start with an em dash"),
    ("no space after dash", lambda n: n.replace(EM_DASH + " ", EM_DASH), "em dash"),
    ("no signature", replace_signatures(f"{EM_DASH} name\n"), "no space between key name"),
    ("empty key name", replace_signatures(f"{EM_DASH}  {b64(bytes(68))}\n"), "key name is empty"),
    ("key name with plus", replace_signatures(f"{EM_DASH} a+b {b64(bytes(68))}\n"), "'\\+'"),
    ("key name nbsp", replace_signatures(f"{EM_DASH} a\u00a0b {b64(bytes(68))}\n"), "space"),
    ("signature not base64", replace_signatures(f"{EM_DASH} n abc!\n"), "not standard base64"),
    ("signature two spaces", replace_signatures(f"{EM_DASH} n  {b64(bytes(68))}\n"), "base64"),
    ("signature too short", replace_signatures(f"{EM_DASH} n {b64(bytes(4))}\n"), "is 4 bytes"),
    ("trailing junk line", lambda n: n + "Unexpected line.\n", "line 2 does not start"),
    ("trailing blank line", lambda n: n + "\n", "no signature lines"),
    ("carriage return", lambda n: n.replace("\n", "\r\n"), "carriage return"),
    ("tab", replace_line(1, "5\t"), "control character U\\+0009"),
    ("NUL", lambda n: "\0" + n, "control character U\\+0000"),
    ("lone surrogate", replace_line(0, "did:key:\udc00"), "not valid UTF-8"),
    ("too many signatures", lambda n: n + split(n)[1] * 100, "101 signature lines"),
    ("too large", lambda n: n + f"{EM_DASH} n {'A' * MAX_NOTE_BYTES}\n", "larger than"),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_checkpoint_is_refused(signed: str, mutate: Any, message: str) -> None:
    with pytest.raises(CheckpointError, match=message) as refused:
        verify(mutate(signed))
    assert refused.value.code == "invalid_checkpoint"


def test_bytes_that_are_not_utf8_are_refused(signed: str) -> None:
    with pytest.raises(CheckpointError, match="not valid UTF-8"):
        parse_checkpoint(signed.encode().replace(b"\n5\n", b"\n5\xff\n"))


def test_refusal_messages_stay_short_for_hostile_input(signed: str) -> None:
    with pytest.raises(CheckpointError) as refused:
        parse_checkpoint(replace_line(1, "x" * 100_000)(signed))
    assert len(str(refused.value)) < 200


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"origin": ""}, "origin \\(line 1\\) is empty"),
        ({"origin": "example.com/log"}, "'example.com/log' is not a DID"),
        ({"origin": "did:key:z6Mk\nx"}, "is not a DID"),
        ({"size": -1}, "tree size '-1' is not a decimal"),
        ({"size": 2**64}, "larger than"),
        ({"root": ROOT[:16]}, "root hash is 16 bytes"),
        ({"time": -1}, "time '-1' is not a decimal"),
    ],
)
def test_checkpoint_body_refuses_what_parsing_would_refuse(
    gateway: Signer, fields: dict[str, Any], message: str
) -> None:
    arguments = {"origin": gateway.did, "size": 5, "root": ROOT, "time": TIME, **fields}
    with pytest.raises(CheckpointError, match=message):
        checkpoint_body(**arguments)


def test_signing_refuses_malformed_text_and_key_names(gateway: Signer) -> None:
    with pytest.raises(CheckpointError, match="end with a newline"):
        sign_note("no newline", gateway, "name")
    with pytest.raises(CheckpointError, match="space or '\\+'"):
        sign_note("text\n", gateway, "bad name")
    with pytest.raises(CheckpointError, match="key name is empty"):
        sign_note("text\n", gateway, "")
    with pytest.raises(CheckpointError, match="control character"):
        sign_note("a\x07\n", gateway, "name")
    with pytest.raises(CheckpointError, match="didgw checkpoints have 4"):
        sign_checkpoint(f"{gateway.did}\n5\n{b64(ROOT)}\n", gateway)


# --- golang.org/x/mod/sumdb/note vectors --------------------------------------------------


def go_verifier(vkey: str) -> tuple[str, int, bytes]:
    """``<name>+<hash>+<base64(0x01 || key)>`` as note.NewVerifier reads it."""
    name, key_id, encoded = vkey.split("+", 2)
    raw = base64.b64decode(encoded)
    assert raw[0] == 0x01 and len(raw) == 33
    return name, int(key_id, 16), raw[1:]


def go_signer() -> tuple[str, int, Ed25519PrivateKey]:
    """``PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>`` as note.NewSigner reads it."""
    private, key, name, key_id, encoded = GO["signer_key"].split("+", 4)
    assert (private, key) == ("PRIVATE", "KEY")
    raw = base64.b64decode(encoded)
    assert raw[0] == 0x01 and len(raw) == 33
    return name, int(key_id, 16), Ed25519PrivateKey.from_private_bytes(raw[1:])


@pytest.mark.parametrize("name", sorted(GO["verifier_keys"]))
def test_go_verifier_keys_have_our_key_ids(name: str) -> None:
    vkey = GO["verifier_keys"][name]
    key_name, key_id, public_key = go_verifier(vkey)
    assert key_name == name
    assert note_key_id(name, public_key) == key_id
    assert verifier_key(name, public_key) == vkey


def test_go_signer_key_is_the_peter_neumann_key() -> None:
    name, key_id, private_key = go_signer()
    assert (name, key_id, public_bytes(private_key)) == go_verifier(
        GO["verifier_keys"]["PeterNeumann"]
    )


def test_go_signed_note_parses_and_its_signature_verifies() -> None:
    text, signatures = parse_note(GO["signed_note"])
    assert text == GO["text"]
    name, key_id, public_key = go_verifier(GO["verifier_keys"]["PeterNeumann"])
    assert [(s.key_name, s.key_id) for s in signatures] == [(name, key_id)]
    Ed25519PublicKey.from_public_bytes(public_key).verify(signatures[0].signature, text.encode())


def test_go_cosigned_note_parses_and_both_signatures_verify() -> None:
    text, signatures = parse_note(GO["cosigned_note"].encode())
    assert text == GO["text"]
    assert [s.key_name for s in signatures] == ["PeterNeumann", "EnochRoot"]
    for signature in signatures:
        _, key_id, public_key = go_verifier(GO["verifier_keys"][signature.key_name])
        assert signature.key_id == key_id
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature.signature, text.encode())


def test_our_signer_reproduces_the_go_signature_line() -> None:
    name, _, private_key = go_signer()
    signer = Signer.for_did_key(private_key)
    assert signature_line(GO["text"], signer, name) == GO["signature_lines"][name]
    assert sign_note(GO["text"], signer, name) == GO["signed_note"]


def test_go_corrupted_signature_parses_but_does_not_verify() -> None:
    text, signatures = parse_note(GO["invalid_signature_note"]["note"])
    _, key_id, public_key = go_verifier(GO["verifier_keys"]["PeterNeumann"])
    assert signatures[0].key_id == key_id
    with pytest.raises(InvalidSignature):
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signatures[0].signature, text.encode()
        )


@pytest.mark.parametrize(
    "vector", GO["malformed"], ids=[v["construction"][:40] for v in GO["malformed"]]
)
def test_notes_go_calls_malformed_are_refused(vector: dict[str, str]) -> None:
    with pytest.raises(CheckpointError):
        parse_note(base64.b64decode(vector["note_b64"]))


# --- C2SP specification examples (no published keys: structure only) ---------------------


@pytest.mark.parametrize("vector", C2SP["notes"], ids=[v["name"] for v in C2SP["notes"]])
def test_c2sp_example_notes_parse(vector: dict[str, Any]) -> None:
    text, signatures = parse_note(vector["note"])
    assert text == vector["text"]
    assert [(s.key_name, f"{s.key_id:08x}", len(s.signature)) for s in signatures] == [
        (s["key_name"], s["key_id"], s["signature_bytes"]) for s in vector["signatures"]
    ]
    for signature, expected in zip(signatures, vector["signatures"], strict=True):
        if "cosignature_timestamp" in expected:  # tlog-cosignature: u64 timestamp || signature
            assert (
                int.from_bytes(signature.signature[:8], "big") == expected["cosignature_timestamp"]
            )


@pytest.mark.parametrize(
    "vector", [v for v in C2SP["notes"] if "checkpoint" in v], ids=lambda v: v["name"]
)
def test_c2sp_checkpoint_example_has_the_standard_lines_but_no_time_line(
    vector: dict[str, Any],
) -> None:
    expected = vector["checkpoint"]
    lines = vector["text"].split("\n")
    assert lines[:3] == [
        expected["origin"],
        str(expected["size"]),
        b64(bytes.fromhex(expected["root_hex"])),
    ]
    with pytest.raises(CheckpointError, match="has 3 lines"):
        parse_checkpoint(vector["note"])
    with_time = vector["note"].replace("\n\n", "\ntime 1679315147\n\n")
    with pytest.raises(
        CheckpointError, match=re.escape("'example.com/behind-the-sofa' is not a DID")
    ):
        parse_checkpoint(with_time)

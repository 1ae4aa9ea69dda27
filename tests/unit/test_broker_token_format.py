"""Broker session tokens (gateway/auth/broker_tokens.py): the vectors the plugin's test
shares, and every way a token must fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC

from gateway.auth import broker_tokens as bt
from gateway.errors import DidgwError

VECTORS = json.loads(
    (Path(__file__).parents[1] / "vectors" / "broker-token" / "tokens.json").read_text()
)
KEY = bytes.fromhex(VECTORS["key_hex"])
DID = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
NOW = 1_790_000_000


def mint(**over: object) -> str:
    args: dict[str, object] = dict(
        sub=DID, kind="device", prefix="didgw", now=NOW, lifetime=3600, random_bytes=bytes(16)
    )
    args.update(over)
    return bt.mint(KEY, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_vectors_give_the_exact_token(case: dict[str, object]) -> None:
    token = bt.mint(
        KEY,
        sub=str(case["sub"]),
        kind=str(case["kind"]),
        prefix=str(case["prefix"]),
        now=int(str(case["now"])),
        lifetime=int(str(case["lifetime"])),
        random_bytes=bytes.fromhex(str(case["random_hex"])),
    )
    assert token == case["token"]


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_the_tag_is_hmac_sha256_as_openssl_computes_it(case: dict[str, str]) -> None:
    """A second implementation (OpenSSL's, through cryptography) of the tag: the vectors
    were also checked with ``openssl dgst -sha256 -mac HMAC`` (tests/vectors/README.md)."""
    covered, _, tag = case["token"].rpartition(".")
    mac = HMAC(KEY, hashes.SHA256())
    mac.update(covered.encode())
    assert bt.b64url(mac.finalize()) == tag


def test_verify_returns_the_claims() -> None:
    claims = bt.verify(mint(), KEY, NOW + 10)
    assert claims == bt.Claims(DID, "device", "didgw", NOW, NOW + 3600, bt.b64url(bytes(16)))


def test_the_payload_is_canonical_json() -> None:
    payload = bt.b64url_decode(mint().split(".")[1])
    body = json.loads(payload)
    assert payload == json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert list(body) == ["exp", "iat", "jti", "kind", "pfx", "sub"]


def test_expired_at_exp_exactly() -> None:
    token = mint()
    bt.verify(token, KEY, NOW + 3599)
    with pytest.raises(bt.TokenError, match="expired"):
        bt.verify(token, KEY, NOW + 3600)


def test_another_key_is_refused() -> None:
    other = bytes(range(1, 33))
    with pytest.raises(bt.TokenError, match="tag"):
        bt.verify(mint(), other, NOW)


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33), bytes(32), b"\xff" * 32])
def test_keys_that_are_not_32_random_bytes_are_refused(key: bytes) -> None:
    with pytest.raises(bt.TokenError, match="32 random bytes"):
        bt.mint(key, sub=DID, kind="device", prefix="didgw", now=NOW, lifetime=1,
                random_bytes=bytes(16))  # fmt: skip


def resign(signed: str) -> str:
    return f"{signed}.{bt.b64url(bt.tag(KEY, signed))}"


GOOD_PAYLOAD = (
    '{"exp":1790003600,"iat":1790000000,"jti":"x","kind":"device","pfx":"didgw","sub":"did:ex:a"}'
)


def test_the_good_payload_is_accepted() -> None:
    resigned = resign(f"v2.{bt.b64url(GOOD_PAYLOAD.encode())}")
    assert bt.verify(resigned, KEY, NOW).sub == "did:ex:a"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"exp":', '"exp": '),  # whitespace: not the canonical spelling
        ('"exp":1790003600,"iat":1790000000', '"iat":1790000000,"exp":1790003600'),  # order
        ('"device"', '"robot"'),
        ('"didgw"', '"#"'),
        ('"did:ex:a"', '"a/b"'),
        ("1790003600", "1790000000"),  # expires when issued
        ("1790003600", '"1790003600"'),
        ('"did:ex:a"}', '"did:ex:a","x":1}'),
        (GOOD_PAYLOAD, "[]"),
        (GOOD_PAYLOAD, "not json"),
    ],
)
def test_sealed_but_bad_payloads_are_refused(old: str, new: str) -> None:
    payload = GOOD_PAYLOAD.replace(old, new, 1)
    assert payload != GOOD_PAYLOAD
    with pytest.raises(bt.TokenError):
        bt.verify(resign(f"v2.{bt.b64url(payload.encode())}"), KEY, NOW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "v2",
        "v2..",
        "garbage",
        "v1." + mint()[3:],
        mint()[:-3],
        mint() + "A",
        mint().replace(".", "=.", 1),
        "v2." + "A" * (bt.MAX_TOKEN_CHARS + 1),
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(bt.TokenError):
        bt.verify(token, KEY, NOW)


def test_another_version_with_a_valid_tag_is_refused() -> None:
    signed = "v1." + mint().split(".")[1]
    with pytest.raises(bt.TokenError, match="v2"):
        bt.verify(resign(signed), KEY, NOW)


@pytest.mark.parametrize(
    "over",
    [
        {"sub": "not-a-did"},
        {"sub": 'did:ex:a"b'},
        {"kind": "admin"},
        {"prefix": "a/#"},
        {"prefix": "$SYS"},
        {"lifetime": 0},
        {"random_bytes": b"short"},
        {"sub": "did:ex:" + "a" * 2000},
    ],
)
def test_mint_refuses_what_it_cannot_seal(over: dict[str, object]) -> None:
    with pytest.raises((ValueError, DidgwError)):
        mint(**over)


def test_deny_file_text() -> None:
    assert bt.deny_file_text({"did:ex:b": 20, "did:ex:a": 10}) == "did:ex:a 10\ndid:ex:b 20\n"
    with pytest.raises(DidgwError):
        bt.deny_file_text({"did:ex:a b": 1})

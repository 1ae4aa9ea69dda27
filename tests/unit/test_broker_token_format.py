"""Broker session tokens (gateway/auth/broker_tokens.py): the vectors the plugin's test
shares, and every way a token must fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.auth import broker_tokens as bt
from gateway.errors import DidgwError

VECTORS = json.loads(
    (Path(__file__).parents[1] / "vectors" / "broker-token" / "tokens.json").read_text()
)
KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["seed_hex"]))
PUBLIC = KEY.public_key()
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
    assert bytes.fromhex(VECTORS["public_key_hex"]) == bt.public_raw(PUBLIC)


def test_verify_returns_the_claims() -> None:
    claims = bt.verify(mint(), PUBLIC, NOW + 10)
    assert claims == bt.Claims(DID, "device", "didgw", NOW, NOW + 3600, bt.b64url(bytes(16)))


def test_the_payload_is_canonical_json() -> None:
    payload = bt.b64url_decode(mint().split(".")[1])
    body = json.loads(payload)
    assert payload == json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert list(body) == ["exp", "iat", "jti", "kind", "pfx", "sub"]


def test_expired_at_exp_exactly() -> None:
    token = mint()
    bt.verify(token, PUBLIC, NOW + 3599)
    with pytest.raises(bt.TokenError, match="expired"):
        bt.verify(token, PUBLIC, NOW + 3600)


def test_another_key_is_refused() -> None:
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(bt.TokenError, match="signature"):
        bt.verify(mint(), other, NOW)


def resign(signed: str) -> str:
    return f"{signed}.{bt.b64url(KEY.sign(signed.encode()))}"


GOOD_PAYLOAD = (
    '{"exp":1790003600,"iat":1790000000,"jti":"x","kind":"device","pfx":"didgw","sub":"did:ex:a"}'
)


def test_the_good_payload_is_accepted() -> None:
    resigned = resign(f"v1.{bt.b64url(GOOD_PAYLOAD.encode())}")
    assert bt.verify(resigned, PUBLIC, NOW).sub == "did:ex:a"


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
def test_signed_but_bad_payloads_are_refused(old: str, new: str) -> None:
    payload = GOOD_PAYLOAD.replace(old, new, 1)
    assert payload != GOOD_PAYLOAD
    with pytest.raises(bt.TokenError):
        bt.verify(resign(f"v1.{bt.b64url(payload.encode())}"), PUBLIC, NOW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "v1",
        "v1..",
        "garbage",
        "v2." + mint()[3:],
        mint()[:-3],
        mint() + "A",
        mint().replace(".", "=.", 1),
        "v1." + "A" * (bt.MAX_TOKEN_CHARS + 1),
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(bt.TokenError):
        bt.verify(token, PUBLIC, NOW)


def test_a_v2_token_with_a_valid_signature_is_refused() -> None:
    signed = "v2." + mint().split(".")[1]
    with pytest.raises(bt.TokenError, match="v1"):
        bt.verify(resign(signed), PUBLIC, NOW)


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
def test_mint_refuses_what_it_cannot_sign(over: dict[str, object]) -> None:
    with pytest.raises((ValueError, DidgwError)):
        mint(**over)


def test_deny_file_text() -> None:
    assert bt.deny_file_text({"did:ex:b": 20, "did:ex:a": 10}) == "did:ex:a 10\ndid:ex:b 20\n"
    with pytest.raises(DidgwError):
        bt.deny_file_text({"did:ex:a b": 1})

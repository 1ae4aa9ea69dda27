"""The broker-token key on disk (gateway/service.py): the gateway's private copy, the
broker's copy in the token directory, and a gateway from before HMAC tokens moving over."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gateway.auth.broker_tokens import KEY_BYTES
from gateway.config import Config
from gateway.errors import KeyStoreError
from gateway.service import TOKEN_KEY_FILE, init_gateway, open_gateway


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_the_key_and_the_brokers_copy(tmp_path: Path) -> None:
    state = tmp_path / "state"
    init_gateway(Config(), state, {})
    key = (state / TOKEN_KEY_FILE).read_bytes()
    assert len(key) == KEY_BYTES and len(set(key)) > 1
    assert mode(state / TOKEN_KEY_FILE) == 0o600
    copy = state / "broker" / "token.key"
    assert copy.read_bytes() == key
    assert mode(copy) == 0o640  # the token directory's group (the broker's) reads it
    init_gateway(Config(), state, {})  # again: the key is kept, never replaced
    assert (state / TOKEN_KEY_FILE).read_bytes() == key


def test_a_gateway_from_before_gets_a_key_and_loses_its_public_key_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    init_gateway(Config(), state, {})
    (state / TOKEN_KEY_FILE).unlink()  # as a gateway of v1 tokens had none
    (state / "broker" / "token.key").unlink()
    old = state / "broker" / "token.pub"
    old.write_text("-----BEGIN PUBLIC KEY-----\n…\n-----END PUBLIC KEY-----\n")
    key = open_gateway(Config(), state).broker_token_key()
    assert (state / "broker" / "token.key").read_bytes() == key
    assert (state / TOKEN_KEY_FILE).read_bytes() == key
    assert not old.exists()


@pytest.mark.parametrize(
    ("content", "file_mode", "why"),
    [
        (bytes(range(31)), 0o600, "is not 32 random bytes"),
        (bytes(range(33)), 0o600, "larger than 32 bytes"),
        (bytes(32), 0o600, "is not 32 random bytes"),
        (bytes(range(32)), 0o644, "others"),
    ],
)
def test_a_bad_or_shared_key_file_is_refused_with_why(
    tmp_path: Path, content: bytes, file_mode: int, why: str
) -> None:
    state = tmp_path / "state"
    init_gateway(Config(), state, {})
    path = state / TOKEN_KEY_FILE
    path.write_bytes(content)
    path.chmod(file_mode)
    with pytest.raises(KeyStoreError, match=why):
        open_gateway(Config(), state).broker_token_key()

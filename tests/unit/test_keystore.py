"""Keys on disk: 0600, never overwritten, refused when exposed, passphrases handled strictly."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import ConfigError, KeyStoreError
from gateway.identity.keystore import (
    PASSPHRASE_ENV,
    generate_key,
    load_private_key,
    public_bytes,
    read_passphrase,
    write_private_key,
)


def test_written_key_is_0600_pkcs8_and_loads_back(tmp_path: Path) -> None:
    os.umask(0o022)
    key = generate_key()
    path = tmp_path / "k.pem"
    write_private_key(path, key, None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_bytes(load_private_key(path, None)) == public_bytes(key)


def test_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    write_private_key(path, generate_key(), None)
    before = path.read_bytes()
    with pytest.raises(KeyStoreError, match="not overwriting"):
        write_private_key(path, generate_key(), None)
    assert path.read_bytes() == before


def test_encrypted_key_needs_the_right_passphrase(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "k.pem"
    write_private_key(path, key, b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert public_bytes(load_private_key(path, b"correct horse")) == public_bytes(key)
    with pytest.raises(KeyStoreError, match="is encrypted; give its passphrase"):
        load_private_key(path, None)
    with pytest.raises(KeyStoreError, match="wrong passphrase") as exc:
        load_private_key(path, b"battery staple")
    assert "battery" not in str(exc.value)  # a passphrase never appears in a message


def test_passphrase_given_for_an_unencrypted_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    write_private_key(path, generate_key(), None)
    with pytest.raises(KeyStoreError, match="not encrypted, but a passphrase is configured"):
        load_private_key(path, b"secret")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k.pem"
    write_private_key(path, generate_key(), None)
    path.chmod(mode)
    with pytest.raises(KeyStoreError, match=f"mode {mode:04o}.*chmod 600"):
        load_private_key(path, None)


def test_missing_garbage_and_foreign_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="does not exist"):
        load_private_key(tmp_path / "nope.pem", None)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a key")
    garbage.chmod(0o600)
    with pytest.raises(KeyStoreError, match="not a readable PKCS#8 PEM key"):
        load_private_key(garbage, None)
    p256 = tmp_path / "p256.pem"
    p256.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    p256.chmod(0o600)
    with pytest.raises(KeyStoreError, match="does not hold an Ed25519 key"):
        load_private_key(p256, None)


def test_passphrase_sources(tmp_path: Path) -> None:
    file = tmp_path / "pass"
    file.write_text("from-file\n")
    file.chmod(0o600)
    assert read_passphrase(str(file), {}) == b"from-file"
    assert read_passphrase("", {PASSPHRASE_ENV: "from-env"}) == b"from-env"
    assert read_passphrase("", {}) is None
    with pytest.raises(ConfigError, match="set only one"):
        read_passphrase(str(file), {PASSPHRASE_ENV: "x"})
    with pytest.raises(KeyStoreError, match=r"passphrase file .*missing does not exist"):
        read_passphrase(str(tmp_path / "missing"), {})
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "empty").chmod(0o600)
    with pytest.raises(KeyStoreError, match="is empty"):
        read_passphrase(str(tmp_path / "empty"), {})
    with pytest.raises(KeyStoreError, match="set but empty"):
        read_passphrase("", {PASSPHRASE_ENV: ""})


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_passphrase_file_readable_by_others_is_refused_like_a_key(
    tmp_path: Path, mode: int
) -> None:
    file = tmp_path / "pass"
    file.write_text("from-file\n")
    file.chmod(mode)
    with pytest.raises(
        KeyStoreError,
        match=f"passphrase file {file} is accessible by group or "
        f"others .mode {mode:04o}.; run: chmod 600 {file}",
    ):
        read_passphrase(str(file), {})

"""Private keys on disk: PKCS#8 PEM, mode 0600, optionally passphrase-encrypted.

Three kinds live here under the same rules: the gateway's Ed25519 identity key,
its secp256k1 ledger account key (the one that signs anchor transactions) and the
P-256 key of its TLS certificate authority (``certs.py``).

Rules, all failing closed:

* a key file is created with ``O_EXCL`` and mode 0600 and fsynced, so an
  existing key is never overwritten and a crash never leaves half a key;
* a key file readable by group or others is refused, as ssh does, and so is a
  passphrase file (:mod:`gateway.files` holds these rules for every secret file);
* an encrypted key without its passphrase, or with the wrong one, is refused
  with a message naming the file (never the passphrase).

Nothing here logs or returns key material except the key object itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from gateway.errors import ConfigError, KeyStoreError
from gateway.files import read_secret, write_private

PASSPHRASE_ENV = "DIDGW_KEY_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret


def generate_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 key from the operating system's CSPRNG."""
    return Ed25519PrivateKey.generate()


def generate_ledger_key() -> ec.EllipticCurvePrivateKey:
    """A fresh secp256k1 key (an EVM account) from the operating system's CSPRNG."""
    return ec.generate_private_key(ec.SECP256K1())


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def read_passphrase(passphrase_file: str, env: Mapping[str, str]) -> bytes | None:
    """The key passphrase from ``passphrase_file`` or ``$DIDGW_KEY_PASSPHRASE``; None if neither.

    Both at once is refused: which one wins would be a guess. A trailing newline
    in the file is ignored (``echo secret > file`` is how people write it).
    """
    from_env = env.get(PASSPHRASE_ENV)
    if passphrase_file and from_env is not None:
        raise ConfigError(f"both keys.passphrase_file and ${PASSPHRASE_ENV} are set; set only one")
    if passphrase_file:
        value = read_secret(passphrase_file, "passphrase file", KeyStoreError).rstrip(b"\r\n")
        if not value:
            raise KeyStoreError(f"passphrase file {passphrase_file} is empty")
        return value
    if from_env is not None:
        if not from_env:
            raise KeyStoreError(f"${PASSPHRASE_ENV} is set but empty")
        return from_env.encode()
    return None


def write_private_key(
    path: Path, key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey, passphrase: bytes | None
) -> None:
    """Write ``key`` as PKCS#8 PEM to a new 0600 file; refuse if ``path`` exists."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    write_private(
        path, pem, error=KeyStoreError, exists=f"{path} already exists; not overwriting a key"
    )


def load_private_key(path: Path, passphrase: bytes | None) -> Ed25519PrivateKey:
    """Load an Ed25519 PKCS#8 PEM key, checking its permissions first."""
    key = _load_pem(path, passphrase)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyStoreError(f"key file {path} does not hold an Ed25519 key")
    return key


def load_ledger_key(path: Path, passphrase: bytes | None) -> ec.EllipticCurvePrivateKey:
    """Load the secp256k1 ledger account key, under the same rules as the gateway key."""
    key = _load_pem(path, passphrase)
    if not (isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256K1)):
        raise KeyStoreError(f"key file {path} does not hold a secp256k1 key")
    return key


def load_tls_key(path: Path, passphrase: bytes | None) -> ec.EllipticCurvePrivateKey:
    """Load the P-256 key of the gateway's TLS certificate authority, under the same rules."""
    key = _load_pem(path, passphrase)
    if not (isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)):
        raise KeyStoreError(f"key file {path} does not hold a P-256 key")
    return key


def _load_pem(path: Path, passphrase: bytes | None) -> PrivateKeyTypes:
    pem = read_secret(path, "key file", KeyStoreError)
    encrypted = b"ENCRYPTED PRIVATE KEY" in pem
    if encrypted and not passphrase:
        raise KeyStoreError(
            f"key file {path} is encrypted; give its passphrase in keys.passphrase_file "
            f"or ${PASSPHRASE_ENV}"
        )
    if passphrase and not encrypted:
        raise KeyStoreError(
            f"key file {path} is not encrypted, but a passphrase is configured; "
            "remove the passphrase setting or re-create the key encrypted"
        )
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except ValueError:
        what = "wrong passphrase for" if encrypted else "not a readable PKCS#8 PEM key:"
        raise KeyStoreError(f"{what} key file {path}") from None
    return key

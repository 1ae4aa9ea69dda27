"""A sensor device that speaks didgw's MQTT wire protocol (docs/protocol/mqtt.md).

Everything here is what a device vendor could write with public libraries: pyca/cryptography
for Ed25519, X25519, HKDF and ChaCha20-Poly1305, joserfc for compact JWS, base58 for the
did:key multibase and paho-mqtt 2.x for MQTT. Nothing is imported from the gateway.

Layers, bottom up:

* pure functions (no I/O, no clock): did:key encoding, the auth response, the reading JWS,
  opening a grant (signature check and broker-secret decryption);
* :class:`Outbox`, the device's state on disk: the persistent sequence number and the
  readings not yet acknowledged (SQLite, one file per device);
* :class:`Device`: authentication, the broker connection, publishing, acks, re-sending,
  renewal before the account expires, recovery after a lost or refused connection;
* :class:`Fleet`: many devices in one process for load tests.

Threads: each MQTT connection runs paho's own network thread (``loop_start``); a device
started with :meth:`Device.start` has one supervisor thread (a fleet has one for all its
devices); re-authentication and reconnection run in a short-lived worker thread per device.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import queue
import re
import secrets
import socket
import sqlite3
import ssl
import stat
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import base58
import paho.mqtt.client as mqtt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey
from paho.mqtt.enums import CallbackAPIVersion

# The protocol mandates alg "EdDSA" (RFC 8037); RFC 9864 deprecates the name in favour of
# "Ed25519" (the same signature) and joserfc warns on every use.
warnings.filterwarnings("ignore", message="EdDSA is deprecated via RFC 9864")

ED25519_MULTICODEC = b"\xed\x01"
DID_KEY_PREFIX = "did:key:"
AUTH_TYP = "didgw-auth+jws"
GRANT_TYP = "didgw-grant+jws"
#: Refusals that are not the reading's fault: the device keeps the reading and sends it again.
TRANSIENT_REASONS = frozenset({"unavailable", "storage_full"})
READING_TYP = "didgw-reading+jws"
SECRET_INFO = b"didgw broker secret v1"
JWS_ALGS = ("EdDSA", "Ed25519")  # the same signature under its old and its new name
PASSPHRASE_ENV = "DIDGW_KEY_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
MAX_INFLIGHT = 1_000  # readings awaiting an ack, by default
# The gateway takes a reading up to 1,024 below the newest it accepted (its anti-replay
# window); with no more than that in flight, a reading lost and sent again is still taken.
MAX_INFLIGHT_LIMIT = 1_024
MAX_FLEET = 150  # devices per process; see Fleet
#: The broker refuses a client id without this prefix (mosquitto's clientid_prefixes).
CLIENT_ID_PREFIX = "didgw-"
# Refusals that answer a hello; any other refusal answers a response (maybe someone else's).
# unknown_device and not_active answer this device's own signed response (gateways before
# that answered a hello with them); no forger can cause them, so they end an attempt at once.
HELLO_REFUSALS = frozenset({"unknown_device", "not_active", "rate_limited", "unavailable"})
#: Refusals a later try may pass: the device waits what the gateway said, plus jitter.
TRY_LATER = frozenset({"rate_limited", "unavailable"})
REGISTRY_REFUSALS = frozenset({"unknown_device", "not_active"})
REFUSAL_GRACE = 2.0  # seconds a grant may still follow a refusal after our response
_B64U = re.compile(r"^[A-Za-z0-9_-]*$")

Log = Callable[[str], None]


class DeviceError(Exception):
    """Something the device cannot do or will not accept; the message says what and why."""


class AuthError(DeviceError):
    """Authentication failed: no gateway answer, a malformed or forged answer, broker trouble."""


class AuthRefused(AuthError):
    """The gateway answered ``refused``; :attr:`reason` is its reason word, and
    :attr:`retry_after` (seconds, or None) when it said to come back later."""

    def __init__(self, reason: str, did: str, retry_after: float | None = None) -> None:
        self.reason = reason
        self.did = did
        self.retry_after = retry_after
        hint = {
            "unknown_device": (
                f"; register it first: didgw device register {did} --name NAME --kind sensor"
            ),
            "not_active": "; the device is suspended or revoked in the gateway's registry",
            "clock_skew": "; the device clock differs too much from the gateway's",
            "rate_limited": "; too many attempts, try again later",
        }.get(reason, "")
        super().__init__(f"gateway refused authentication: {reason}{hint}")


class ConnectRefused(DeviceError):
    """The broker refused the CONNECT (bad credentials, expired or deleted account)."""


def retry_after_of(message: dict[str, Any]) -> float | None:
    """A refusal's ``retry_after`` (ms) in seconds, when it is a sane number."""
    value = message.get("retry_after")
    if type(value) is not int or not 0 <= value <= 3_600_000:
        return None
    return value / 1000


# --------------------------------------------------------------------------- encodings


def b64u_encode(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: Any, what: str = "value") -> bytes:
    """Strict unpadded base64url: no padding, no whitespace, no other alphabet."""
    if not isinstance(text, str) or not _B64U.match(text) or len(text) % 4 == 1:
        raise DeviceError(f"{what} is not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def did_from_public_key(public_key: bytes) -> str:
    """``did:key:z…``: multicodec ed25519-pub (0xed 0x01) + key, base58btc, multibase 'z'."""
    if len(public_key) != 32:
        raise DeviceError(f"an Ed25519 public key has 32 bytes, not {len(public_key)}")
    return DID_KEY_PREFIX + "z" + base58.b58encode(ED25519_MULTICODEC + public_key).decode()


def kid_for(did: str) -> str:
    """The DID URL of a did:key's one verification method: ``did:key:z…#z…``."""
    return f"{did}#{did.removeprefix(DID_KEY_PREFIX)}"


def public_key_from_did(did: str) -> bytes:
    """The raw Ed25519 public key of an Ed25519 did:key (a DID or its key's DID URL)."""
    base, _, fragment = did.partition("#")
    if not base.startswith(DID_KEY_PREFIX):
        raise DeviceError(f"{did!r} is not a did:key (this device checks did:key gateways only)")
    multibase = base.removeprefix(DID_KEY_PREFIX)
    if not multibase.startswith("z"):
        raise DeviceError(f"{did!r}: the did:key value must be base58btc multibase ('z…')")
    if fragment and fragment != multibase:
        raise DeviceError(f"{did!r}: a did:key has one key, #{multibase}")
    try:
        raw = base58.b58decode(multibase[1:].encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise DeviceError(f"{did!r}: the did:key value is not base58btc") from None
    if raw[:2] != ED25519_MULTICODEC:
        raise DeviceError(f"{did!r} is not an Ed25519 did:key (multicodec 0xed01)")
    if len(raw) != 34:
        raise DeviceError(f"{did!r}: an Ed25519 key has 32 bytes, not {len(raw) - 2}")
    return raw[2:]


def _raw_public(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class Identity:
    """A device's Ed25519 key, its did:key and the DID URL (``kid``) its signatures name."""

    private_key: Ed25519PrivateKey = field(repr=False)
    did: str
    kid: str

    @classmethod
    def from_key(cls, private_key: Ed25519PrivateKey) -> Identity:
        did = did_from_public_key(_raw_public(private_key))
        return cls(private_key, did, kid_for(did))

    def sign_jws(self, typ: str, payload: bytes) -> str:
        """Compact JWS, ``alg`` EdDSA, ``kid`` this key's DID URL."""
        header = {"alg": "EdDSA", "kid": self.kid, "typ": typ}
        return jws.serialize_compact(
            header, payload, OKPKey.import_key(self.private_key), algorithms=["EdDSA"]
        )


def load_or_create_key(
    path: Path, passphrase: bytes | None = None, *, log: Log | None = None
) -> Ed25519PrivateKey:
    """The Ed25519 key in the PKCS#8 PEM file ``path`` (as ``didgw did new -o`` writes it).

    A missing file is created: a new key, mode 0600, never overwriting (``O_EXCL``), fsynced,
    encrypted when ``passphrase`` is given. A key file readable by group or others is refused.
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        _write_key(path, key, passphrase)
        if log:
            log(f"created a new key in {path} (mode 0600)")
        return key
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DeviceError(f"{path} is accessible by group or others; chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=passphrase)
    except TypeError:
        if passphrase:
            raise DeviceError(f"{path} is not encrypted but a passphrase was given") from None
        raise DeviceError(f"{path} is encrypted; set ${PASSPHRASE_ENV}") from None
    except ValueError:
        raise DeviceError(f"cannot read {path}: not a PEM key, or a wrong passphrase") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise DeviceError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def _write_key(path: Path, key: Ed25519PrivateKey, passphrase: bytes | None) -> None:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --------------------------------------------------------------------------- messages


def make_hello(did: str, reply: str) -> bytes:
    return _json({"type": "hello", "did": did, "reply": reply})


def check_challenge(
    message: dict[str, Any], *, did: str, gateway_did: str | None
) -> tuple[str, bytes]:
    """The gateway DID and the nonce bytes of a challenge, after checking it is for us."""
    if message.get("device") != did:
        raise AuthError(f"challenge is for {message.get('device')!r}, not for this device")
    gateway = message.get("gateway")
    if not isinstance(gateway, str):
        raise AuthError("challenge names no gateway DID")
    if gateway_did is not None and gateway != gateway_did:
        raise AuthError(f"challenge from gateway {gateway}, but this device trusts {gateway_did}")
    try:
        public_key_from_did(gateway)
    except DeviceError as exc:
        raise AuthError(f"challenge from an unusable gateway DID: {exc}") from None
    nonce_text = message.get("nonce")
    try:
        nonce = b64u_decode(nonce_text, "challenge nonce")
    except DeviceError as exc:
        raise AuthError(str(exc)) from None
    if len(nonce) != 32:
        raise AuthError(f"challenge nonce has {len(nonce)} bytes, not 32")
    return gateway, nonce


def make_auth_response(
    identity: Identity,
    *,
    nonce: str,
    gateway: str,
    epk: bytes,
    reply: str,
    ts_ms: int,
) -> str:
    """The response JWS (``typ`` didgw-auth+jws) answering a challenge."""
    payload = {
        "type": "response",
        "nonce": nonce,
        "device": identity.did,
        "gateway": gateway,
        "ts": ts_ms,
        "epk": b64u_encode(epk),
        "reply": reply,
    }
    return identity.sign_jws(AUTH_TYP, _json(payload))


def make_reading(
    identity: Identity, *, seq: int, ts_ms: int, reading_type: str, values: dict[str, Any]
) -> str:
    """The reading JWS (``typ`` didgw-reading+jws)."""
    payload = {
        "did": identity.did,
        "seq": seq,
        "ts": ts_ms,
        "type": reading_type,
        "values": values,
    }
    return identity.sign_jws(READING_TYP, _json(payload))


def secret_key(shared_secret: bytes, nonce: bytes) -> bytes:
    """HKDF-SHA256(ikm = X25519 output, salt = nonce bytes, info = "didgw broker secret v1")."""
    return HKDF(hashes.SHA256(), 32, salt=nonce, info=SECRET_INFO).derive(shared_secret)


def decrypt_secret(
    device_epk: X25519PrivateKey,
    gateway_epk: bytes,
    *,
    nonce: bytes,
    iv: bytes,
    ciphertext: bytes,
    did: str,
) -> bytes:
    """The broker password: ChaCha20-Poly1305, associated data = the device DID (UTF-8)."""
    try:
        shared = device_epk.exchange(X25519PublicKey.from_public_bytes(gateway_epk))
    except ValueError as exc:
        raise AuthError(f"grant epk is not a usable X25519 key: {exc}") from None
    try:
        return ChaCha20Poly1305(secret_key(shared, nonce)).decrypt(iv, ciphertext, did.encode())
    except InvalidTag:
        raise AuthError("grant secret does not decrypt (not for this device or exchange)") from None


@dataclass(frozen=True)
class Grant:
    """What a successful authentication gives: broker credentials and topics."""

    gateway_did: str
    username: str
    password: bytes = field(repr=False)
    expires_ms: int
    readings: str
    acks: str


def open_grant(
    token: str | bytes,
    *,
    gateway_did: str,
    did: str,
    nonce: bytes,
    device_epk: X25519PrivateKey,
    prefix: str,
) -> Grant:
    """Check a grant JWS (signed by ``gateway_did``'s key, for this device) and decrypt it."""
    payload = _verified_grant_payload(token, gateway_did)
    if payload.get("type") != "grant":
        raise AuthError("grant payload is not a grant")
    if payload.get("device") != did:
        raise AuthError(f"grant is for {payload.get('device')!r}, not for this device")
    if payload.get("username") != did:
        raise AuthError(f"grant username {payload.get('username')!r} is not this device's DID")
    expires = payload.get("expires")
    if not isinstance(expires, int) or isinstance(expires, bool):
        raise AuthError("grant has no expiry time")
    expected = {"readings": f"{prefix}/d/{did}/readings", "acks": f"{prefix}/d/{did}/acks"}
    for name, topic in expected.items():
        if payload.get(name) != topic:
            raise AuthError(f"grant {name} topic {payload.get(name)!r}, expected {topic}")
    try:
        gateway_epk = b64u_decode(payload.get("epk"), "grant epk")
        iv = b64u_decode(payload.get("iv"), "grant iv")
        ciphertext = b64u_decode(payload.get("secret"), "grant secret")
    except DeviceError as exc:
        raise AuthError(str(exc)) from None
    if len(iv) != 12:
        raise AuthError(f"grant iv has {len(iv)} bytes, not 12")
    password = decrypt_secret(
        device_epk, gateway_epk, nonce=nonce, iv=iv, ciphertext=ciphertext, did=did
    )
    return Grant(gateway_did, did, password, expires, expected["readings"], expected["acks"])


def _verified_grant_payload(token: str | bytes, gateway_did: str) -> dict[str, Any]:
    """The payload of a grant JWS whose header and signature by ``gateway_did`` check out."""
    raw = token.encode("ascii") if isinstance(token, str) else bytes(token)
    try:
        obj = jws.extract_compact(raw)
        header = obj.headers()
    except (JoseError, ValueError) as exc:
        raise AuthError(f"grant is not a compact JWS: {exc}") from None
    alg = header.get("alg")
    if alg not in JWS_ALGS:
        raise AuthError(f"grant alg {alg!r} refused; expected EdDSA")
    if "crit" in header:
        raise AuthError("grant has critical header parameters; refused")
    if header.get("typ") != GRANT_TYP:
        raise AuthError(f"grant typ {header.get('typ')!r}, expected {GRANT_TYP}")
    if header.get("kid") != kid_for(gateway_did):
        raise AuthError(f"grant signed by {header.get('kid')!r}, not by {kid_for(gateway_did)}")
    public = Ed25519PublicKey.from_public_bytes(public_key_from_did(gateway_did))
    try:
        valid = jws.validate_compact(obj, OKPKey.import_key(public), algorithms=[alg])
    except JoseError:
        valid = False
    if not valid:
        raise AuthError(f"grant signature by {gateway_did} does not verify")
    try:
        payload = json.loads(obj.payload)
    except (ValueError, UnicodeDecodeError):
        raise AuthError("grant payload is not JSON") from None
    if not isinstance(payload, dict):
        raise AuthError("grant payload is not a JSON object")
    return payload


# --------------------------------------------------------------------------- outbox


class Outbox:
    """The device's state: its last sequence number and the readings not yet acknowledged.

    One SQLite file in WAL mode, opened with exclusive locking: the open connection keeps
    every other one out (a second process using the same state is refused), and the file
    and its WAL are the only two file descriptors a device holds for its state. The file
    is bound to one DID. ``durable=True`` syncs every change to disk before returning
    (survives power loss); ``durable=False`` survives the process dying, not the machine.
    """

    def __init__(self, path: Path, did: str, *, durable: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._closed = False
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        self._db = sqlite3.connect(
            self.path, timeout=0.5, isolation_level=None, check_same_thread=False
        )
        try:
            self._setup(did, durable)
        except BaseException:
            self._db.close()
            raise

    def _setup(self, did: str, durable: bool) -> None:
        # Exclusive before WAL: SQLite then keeps the WAL index in memory (no -shm file).
        self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            raise DeviceError(f"{self.path} is in use by another device process") from None
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        with self._transaction():
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outbox ("
                " seq INTEGER PRIMARY KEY, token TEXT NOT NULL, created_ms INTEGER NOT NULL)"
            )
            row = self._db.execute("SELECT value FROM meta WHERE name = 'did'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('did', ?), ('last_seq', 0)", (did,))
            elif row[0] != did:
                raise DeviceError(f"{self.path} holds the state of {row[0]}, not of {did}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @property
    def last_seq(self) -> int:
        with self._lock:
            return int(
                self._db.execute("SELECT value FROM meta WHERE name='last_seq'").fetchone()[0]
            )

    def add(self, build: Callable[[int], str], created_ms: int) -> tuple[int, str]:
        """Allocate the next seq, build the reading for it and store it, in one transaction."""
        with self._lock, self._transaction():
            last = self._db.execute("SELECT value FROM meta WHERE name='last_seq'").fetchone()
            seq = int(last[0]) + 1
            token = build(seq)
            self._db.execute("UPDATE meta SET value = ? WHERE name = 'last_seq'", (seq,))
            self._db.execute("INSERT INTO outbox VALUES (?, ?, ?)", (seq, token, created_ms))
        return seq, token

    def remove(self, seq: int) -> bool:
        """Forget an acknowledged reading; False if it was not (or no longer) queued."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            return cursor.rowcount > 0

    def after(self, seq: int, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` queued readings with a sequence number above ``seq``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, token FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
        return [(int(s), str(t)) for s, t in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()


# --------------------------------------------------------------------------- TLS

MQTT_PORT, MQTTS_PORT = 1883, 8883  # IANA's ports for MQTT and MQTT over TLS
#: The shipped broker's TLS authentication listener (configs/mosquitto/mosquitto.conf);
#: its accounts listener is on 8883.
MQTTS_AUTH_PORT = 8884
#: Ports that mean TLS in a ``HOST:PORT`` without a scheme.
TLS_PORTS = frozenset({MQTTS_PORT, MQTTS_AUTH_PORT})


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is, and whether to speak TLS to it."""

    host: str
    port: int
    tls: bool


def parse_broker_url(text: str) -> BrokerAddress:
    """``mqtts://HOST[:PORT]`` (TLS, port 8883 by default), ``mqtt://HOST[:PORT]`` (plain,
    1883), or ``HOST[:PORT]``: TLS when the port is 8883 or 8884 (the shipped broker's TLS
    listeners: accounts and authentication). ``[v6]`` for an IPv6 address."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        host, port = parse_broker(text)
        return BrokerAddress(host, port, port in TLS_PORTS)
    if scheme not in ("mqtt", "mqtts") or not rest or "/" in rest:
        raise DeviceError(f"broker {text!r} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    tls = scheme == "mqtts"
    if rest.rpartition(":")[1] and "]" not in rest.rpartition(":")[2]:
        host, port = parse_broker(rest)
    else:
        host, port = rest.strip("[]"), MQTTS_PORT if tls else MQTT_PORT
    return BrokerAddress(host, port, tls)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def resolve_brokers(
    broker: str | tuple[str, int],
    account_broker: str | tuple[str, int] | None,
    tls: Trust | None,
    *,
    exposed: str = "the broker password and every reading",
) -> tuple[BrokerAddress, BrokerAddress, Trust | None]:
    """Where to authenticate, where the account connects (by default the same place), each
    with whether it speaks TLS, and the one :class:`Trust` both TLS connections use.

    Each address is read by :func:`parse_broker_url` (a ``(host, port)`` pair by the same
    port rule). A trust anchor given (``tls``) means TLS on both connections; without one, a
    TLS address trusts the system's store. Plain MQTT to a host other than this machine is
    refused, for either address: ``exposed`` (the broker password and every reading) would
    cross the network in clear.
    """
    where = _broker_address(broker, tls)
    account = where if account_broker is None else _broker_address(account_broker, tls)
    for address in (where, account):
        if not address.tls and not is_loopback(address.host):
            raise DeviceError(
                f"refusing plain MQTT to {address.host}:{address.port}: {exposed} would cross "
                "the network in clear. Use TLS: mqtts://HOST (the shipped broker: 8884 to "
                "authenticate, 8883 for the account) with the gateway's CA (a CA file, or its "
                "fingerprint)"
            )
    trust = tls if tls is not None else (Trust() if where.tls or account.tls else None)
    return where, account, trust


def _broker_address(value: str | tuple[str, int], tls: Trust | None) -> BrokerAddress:
    """One address: a URL, or a ``(host, port)`` pair by the port rule; TLS if ``tls``."""
    if isinstance(value, str):
        address = parse_broker_url(value)
    else:
        address = BrokerAddress(value[0], value[1], value[1] in TLS_PORTS)
    if tls is not None and not address.tls:
        address = BrokerAddress(address.host, address.port, True)
    return address


def fingerprint_bytes(text: str) -> bytes:
    """A SHA-256 fingerprint as ``didgw tls show`` or ``openssl x509 -fingerprint -sha256``
    prints it (hex, with or without colons, any case)."""
    value = text.strip().lower().removeprefix("sha256 fingerprint=").replace(":", "")
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise DeviceError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits)")
    return bytes.fromhex(value)


class Trust:
    """What the device accepts as the broker, provisioned before its first connection.

    * ``ca_file``: the certificate authority's certificate (PEM), as ``didgw tls show --pem``
      prints it;
    * ``pin``: the SHA-256 fingerprint of that certificate (32 bytes to provision instead of
      a file). The broker presents the CA's certificate after its own; the device takes the
      one whose fingerprint is the pin as its trust anchor, and then verifies the broker's
      certificate against it like any other (learnt once per process, over a connection on
      which nothing is sent);
    * neither: the system's trust store (a broker with a publicly trusted certificate).

    Either way the broker's certificate must chain to the anchor and name the host the
    device connects to, or the device refuses it before it sends a byte of MQTT.
    """

    def __init__(self, ca_file: str | Path | None = None, pin: str | bytes | None = None) -> None:
        if ca_file is not None and pin is not None:
            raise DeviceError("give the broker's CA as a file or as a fingerprint, not both")
        self.ca_file = None if ca_file is None else Path(ca_file)
        self.pin = fingerprint_bytes(pin) if isinstance(pin, str) else pin
        if self.pin is not None and len(self.pin) != 32:
            raise DeviceError("a SHA-256 fingerprint has 32 bytes")
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None

    def context(self, host: str, port: int, timeout: float) -> ssl.SSLContext:
        """The TLS client context, verifying against the provisioned anchor."""
        with self._lock:
            if self._context is None:
                if self.ca_file is not None:
                    try:
                        context = ssl.create_default_context(cafile=str(self.ca_file))
                    except (OSError, ssl.SSLError) as exc:
                        raise DeviceError(f"cannot use {self.ca_file} as the CA: {exc}") from None
                elif self.pin is not None:
                    anchor = _pinned_ca(host, port, self.pin, timeout)
                    context = ssl.create_default_context(cadata=anchor)
                else:
                    context = ssl.create_default_context()
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                context.sslsocket_class = ClosingSSLSocket
                self._context = context
            return self._context


class ClosingSSLSocket(ssl.SSLSocket):
    """A TLS socket that closes itself when its handshake fails (a certificate refused):
    paho drops it unclosed, and Python would warn about it when it is collected."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def _pinned_ca(host: str, port: int, pin: bytes, timeout: float) -> bytes:
    """The DER certificate in the broker's chain whose SHA-256 is ``pin``.

    The chain is read without checking it (that is what the pin is for): the TLS handshake
    completes, and the connection is closed without sending anything over it.
    """
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout) as raw,
            probe.wrap_socket(raw, server_hostname=host) as tls,
        ):
            getter = getattr(tls, "get_unverified_chain", None)  # public from Python 3.13
            if getter is None:
                getter = tls._sslobj.get_unverified_chain  # type: ignore[union-attr]
            chain = [
                c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
                for c in getter() or []
            ]
    except (OSError, ssl.SSLError) as exc:
        raise DeviceError(f"cannot reach the broker at {host}:{port} over TLS: {exc}") from None
    for der in chain:
        if hashlib.sha256(der).digest() == pin:
            return der
    raise DeviceError(
        f"refusing the broker at {host}:{port}: none of the {len(chain)} certificates it "
        f"presents is the pinned certificate authority (SHA-256 {pin.hex()[:16]}…)"
    )


# --------------------------------------------------------------------------- MQTT


class _Link:
    """One MQTT connection, used once: when it ends, the device makes a new one.

    paho's network thread runs it (``loop_start``) with its own reconnection turned off, so
    paho never re-sends anything behind the device's back; the device decides what to resend.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        subscribe: str,
        on_message: Callable[[bytes], None],
        username: str | None = None,
        password: bytes | None = None,
        on_lost: Callable[[_Link], None] | None = None,
        max_inflight: int = MAX_INFLIGHT,
        keepalive: int = 30,
        log: Log | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.keepalive = host, port, keepalive
        self.topic = subscribe
        self.ready = threading.Event()  # connected and subscribed
        self.closed = threading.Event()  # the connection is over (or never was)
        self.refused: str | None = None  # the CONNACK reason when the broker refused
        self.error: str | None = None
        self._on_message, self._on_lost, self._log = on_message, on_lost, log
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        if username is not None:
            client.username_pw_set(username, password)  # type: ignore[arg-type]  # bytes work
        if tls is not None:
            client.tls_set_context(tls)
        client.max_inflight_messages_set(max_inflight)
        client.on_connect = self._connected
        client.on_subscribe = self._subscribed
        client.on_message = self._message
        client.on_disconnect = self._disconnected
        self.client = client

    def open(self, timeout: float) -> None:
        """Connect and subscribe; raise if the broker refuses or does not answer in time."""
        try:
            self.client.connect(self.host, self.port, keepalive=self.keepalive)
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise DeviceError(
                f"refusing the broker at {self.host}:{self.port}: its certificate does not "
                f"verify ({exc.verify_message}); nothing was sent to it"
            ) from None
        except OSError as exc:
            self.close()
            raise DeviceError(
                f"cannot reach the broker at {self.host}:{self.port}: {exc}"
            ) from None
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self.ready.is_set() and not self.closed.is_set():
            if time.monotonic() >= deadline:
                self.close()
                raise TimeoutError(f"broker {self.host}:{self.port} did not answer in {timeout} s")
            self.ready.wait(0.05)
        if not self.ready.is_set():
            self.close()
            if self.refused is not None:
                raise ConnectRefused(f"broker refused the connection: {self.refused}")
            raise DeviceError(self.error or "the broker closed the connection")

    def publish(self, topic: str, payload: bytes | str) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=1)

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()
        # Drop the callbacks (bound methods of this link): without that reference cycle the
        # client is freed as soon as the link is, and paho then closes its wake-up sockets.
        client = self.client
        client.on_connect = client.on_subscribe = client.on_message = None
        client.on_disconnect = None

    # paho callbacks (paho's thread). An exception here would end paho's thread: none escape.

    def _connected(self, client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            self.refused = str(reason_code)
            self.closed.set()
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):  # send each small reading at once (no Nagle)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(self.topic, qos=1)

    def _subscribed(self, client, _userdata, _mid, reason_codes, _properties) -> None:
        if any(code.is_failure for code in reason_codes):
            self.error = f"the broker refused the subscription to {self.topic}"
            self.closed.set()
            client.disconnect()
            return
        self.ready.set()

    def _message(self, _client, _userdata, message) -> None:
        try:
            self._on_message(message.payload)
        except Exception as exc:  # a bad message must not end the connection
            if self._log:
                self._log(f"ignored a message on {message.topic}: {exc}")

    def _disconnected(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        was_closed = self.closed.is_set()
        self.closed.set()
        self.ready.clear()
        if self._on_lost is not None and not was_closed:
            try:
                self._on_lost(self)
            except Exception as exc:
                if self._log:
                    self._log(f"error after losing the connection ({reason_code}): {exc}")


def parse_broker(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6), or ``HOST`` for port 1883."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        return text.strip("[]"), 1883
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise DeviceError(f"broker {text!r} is not HOST:PORT") from None


# --------------------------------------------------------------------------- device


class Device:
    """One sensor: identity, authentication, readings, acks, re-sending, renewal.

    Typical use (a broker and a gateway running, the DID registered)::

        dev = Device("127.0.0.1:1883", key_path="dev.pem", state_dir="dev-state")
        # or, from another machine, to the shipped broker's TLS listeners:
        dev = Device("mqtts://gateway.local:8884", key_path="dev.pem", state_dir="dev-state",
                     account_broker="mqtts://gateway.local:8883",
                     tls=Trust(pin="AB:CD:…"))  # or Trust(ca_file="ca.crt")
        dev.start(timeout=10)                 # authenticate, connect, supervise
        dev.publish_reading("energy", {"power_w": {"value": 812, "unit": "W"}})
        dev.wait_acked(timeout=10)
        dev.close()                           # stop, disconnect, close the state file

    Or step by step: :meth:`authenticate` (returns the :class:`Grant`), :meth:`connect`,
    :meth:`publish_reading`, :meth:`tick` to supervise by hand.

    ``broker`` is where the device authenticates (anonymously); ``account_broker`` (by
    default the same) is the broker's accounts listener, where it connects with the account
    it was given. Both are read by the same rules (:func:`parse_broker_url`) and share one
    trust anchor: TLS for both connections with ``tls``; otherwise for an address with
    ``mqtts://`` or on port 8883 or 8884. Plain MQTT only to a broker on this machine
    (``127.0.0.1:1883``).
    """

    def __init__(
        self,
        broker: str | tuple[str, int] = "127.0.0.1:1883",
        *,
        key_path: str | Path,
        state_dir: str | Path,
        account_broker: str | tuple[str, int] | None = None,
        prefix: str = "didgw",
        gateway_did: str | None = None,
        passphrase: bytes | None = None,
        max_inflight: int = MAX_INFLIGHT,
        ack_timeout: float = 10.0,
        stall_after: float = 3.0,
        retry_after: float = 5.0,
        renew_before: float = 60.0,
        timeout: float = 10.0,
        durable: bool = True,
        log: Log | None = None,
        on_ack: Callable[[dict[str, Any]], None] | None = None,
        auth_gate: threading.Semaphore | None = None,
        clock: Callable[[], float] = time.time,
        tls: Trust | None = None,
    ) -> None:
        if not 1 <= max_inflight <= MAX_INFLIGHT_LIMIT:
            raise DeviceError(
                f"max_inflight must be between 1 and {MAX_INFLIGHT_LIMIT:,} (the gateway's "
                "anti-replay window)"
            )
        # Where the device authenticates (anonymously), and where its account connects: the
        # broker's accounts listener, which gives a client its username as client id, so
        # that nobody else can take over the connection (docs/protocol/mqtt.md, "The
        # broker"). Anonymous clients cannot use it. Both by the same rules, with one trust.
        where, account, self.trust = resolve_brokers(broker, account_broker, tls)
        self.host, self.port = where.host, where.port
        self.account_host, self.account_port = account.host, account.port
        self._auth_tls, self._account_tls = where.tls, account.tls
        self.prefix = prefix
        self.gateway_did = gateway_did
        self.max_inflight = max_inflight
        self.ack_timeout = ack_timeout
        self.stall_after = stall_after
        self.retry_after = retry_after
        self.renew_before = renew_before
        self.timeout = timeout
        self._log_fn = log
        self._on_ack = on_ack
        self._auth_gate = auth_gate
        self._clock = clock
        self.identity = Identity.from_key(load_or_create_key(Path(key_path), passphrase, log=log))
        self.did = self.identity.did
        self.kid = self.identity.kid
        self.state_dir = Path(state_dir)
        self.outbox = Outbox(self.state_dir / "device.db", self.did, durable=durable)
        self.readings_topic = f"{prefix}/d/{self.did}/readings"
        self.acks_topic = f"{prefix}/d/{self.did}/acks"
        self.grant: Grant | None = None
        #: the last acks received (the gateway's JSON objects), newest last
        self.acks: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.stats = dict.fromkeys(
            ("published", "sent", "resent", "accepted", "refused", "deferred", "auths", "connects"),
            0,
        )
        self._lock = threading.RLock()  # link, in-flight window, cursor, counters
        self._send_lock = threading.Lock()  # keeps publishes in seq order
        self._acked = threading.Condition(self._lock)
        self._link: _Link | None = None
        self._inflight: dict[int, float] = {}  # seq -> when sent on the current link
        self._cursor = 0  # highest seq sent on the current link
        self._paused_until = 0.0  # after a transient refusal, nothing is sent before this
        self._window = 1  # how many may await an ack now: 1 on a new link, + 1 per ack
        self._high_sent = 0  # highest seq ever sent by this process
        self._renew_at = float("inf")
        self._retry_at = 0.0
        self._backoff = 1.0
        self._worker: threading.Thread | None = None
        self._supervisor: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopped = False

    def _log(self, message: str) -> None:
        if self._log_fn is not None:
            self._log_fn(message)

    def _tls(self, timeout: float, *, account: bool = False) -> ssl.SSLContext | None:
        """The TLS context for the authentication (or the ``account``) connection; None: plain."""
        if self.trust is None or not (self._account_tls if account else self._auth_tls):
            return None
        if account:
            return self.trust.context(self.account_host, self.account_port, timeout)
        return self.trust.context(self.host, self.port, timeout)

    def _client_id(self, purpose: str) -> str:
        """``didgw-`` (the broker refuses any other id) and 128 random bits: nobody can guess
        it to take over the connection. The accounts listener replaces it with the DID."""
        return f"{CLIENT_ID_PREFIX}{purpose}-{secrets.token_hex(16)}"

    # ---------------------------------------------------------------- authentication

    def authenticate(self, timeout: float | None = None) -> Grant:
        """Run the DID challenge-response over an anonymous connection; keep the grant.

        Raises :class:`AuthRefused` when the gateway refuses (``.reason``), :class:`AuthError`
        for a missing, malformed or forged answer, :class:`DeviceError` for broker trouble.
        """
        timeout = self.timeout if timeout is None else timeout
        with self._auth_gate or contextlib.nullcontext():
            grant = self._exchange(timeout)
        now = self._clock()
        lifetime = grant.expires_ms / 1000 - now
        if lifetime <= 0:
            self._log("the grant has already expired by this device's clock (clock skew?)")
        margin = min(self.renew_before, max(lifetime, 0) / 4) * (1 + secrets.randbelow(20) / 100)
        self._renew_at = max(grant.expires_ms / 1000 - margin, now + 5)
        with self._lock:
            self.grant = grant
            self.stats["auths"] += 1
        self._log(f"granted until {_clock_text(grant.expires_ms / 1000)} ({lifetime:.0f} s)")
        return grant

    def _exchange(self, timeout: float) -> Grant:
        """hello, challenge, response, grant: the exchange on one anonymous connection."""
        deadline = time.monotonic() + timeout
        reply = secrets.token_urlsafe(24)  # 32 characters of [A-Za-z0-9_-]
        inbox: queue.Queue[bytes] = queue.Queue()
        request_topic = f"{self.prefix}/auth/req"
        link = _Link(
            self.host,
            self.port,
            client_id=self._client_id("auth"),
            subscribe=f"{self.prefix}/auth/res/{reply}",
            on_message=inbox.put,
            log=self._log_fn,
            tls=self._tls(timeout),
        )
        try:
            try:
                link.open(timeout)
            except ConnectRefused as exc:
                raise AuthError(f"{exc} (anonymous clients must reach the auth topics)") from None
            link.publish(request_topic, make_hello(self.did, reply))
            self._log(f"hello sent for {self.did}")
            challenge = self._expect(inbox, deadline, link, "challenge")
            gateway, nonce = check_challenge(challenge, did=self.did, gateway_did=self.gateway_did)
            self._log(f"challenge from gateway {gateway}")
            device_epk = X25519PrivateKey.generate()
            response = make_auth_response(
                self.identity,
                nonce=challenge["nonce"],
                gateway=gateway,
                epk=_raw_public(device_epk),
                reply=reply,
                ts_ms=int(self._clock() * 1000),
            )
            link.publish(request_topic, response)
            token = self._expect(inbox, deadline, link, "grant")
            return open_grant(
                token,
                gateway_did=gateway,
                did=self.did,
                nonce=nonce,
                device_epk=device_epk,
                prefix=self.prefix,
            )
        finally:
            link.close()

    def _expect(self, inbox: queue.Queue[bytes], deadline: float, link: _Link, what: str) -> Any:
        """The next answer on the reply topic: a challenge (JSON) or a grant (compact JWS).

        Anyone can read the challenge on the public reply topics and send a forged response
        with its nonce and reply token; the gateway then answers *that* response on this
        reply topic. So, as the protocol advises, a refusal of a response is ignored while
        no response of ours is out, and after ours a refusal ends the wait only if no grant
        follows within :data:`REFUSAL_GRACE` seconds (``unknown_device`` and ``not_active``
        at once: only our own signature can cause them). A second challenge (a hello
        someone else sent with this reply token) is ignored too.
        """
        refusal: str | None = None
        refusal_until = deadline
        ignored: list[str] = []
        while True:
            now = time.monotonic()
            if refusal is not None and now >= refusal_until:
                raise AuthRefused(refusal, self.did)
            if now >= deadline:
                also = f"; ignored answers: {', '.join(ignored)}" if ignored else ""
                raise AuthError(
                    f"no {what} from the gateway in time (is it running, and subscribed to "
                    f"{self.prefix}/auth/req with this prefix?){also}"
                )
            if link.closed.is_set() and inbox.empty():
                raise AuthError(f"the broker closed the connection while waiting for a {what}")
            try:
                payload = inbox.get(timeout=min(deadline, refusal_until, now + 0.1) - now)
            except queue.Empty:
                continue
            message = _json_object(payload)
            kind = message.get("type") if message is not None else None
            if kind == "refused" and message is not None:
                reason = str(message.get("reason"))
                if reason in (REGISTRY_REFUSALS if what == "grant" else HELLO_REFUSALS):
                    raise AuthRefused(reason, self.did, retry_after_of(message))
                if what == "grant":
                    refusal = reason
                    refusal_until = min(deadline, now + REFUSAL_GRACE)
                else:
                    ignored.append(f"refused ({reason})")
                continue
            if what == "challenge" and kind == "challenge":
                return message
            if what == "grant" and message is None and payload.count(b".") == 2:
                return payload
            if what == "grant" and kind == "challenge":
                ignored.append("a second challenge")
                continue
            raise AuthError(f"expected a {what}, got {payload[:80]!r}")

    # ---------------------------------------------------------------- connection

    def connect(self, timeout: float | None = None) -> None:
        """Connect with the grant's credentials, subscribe to the acks, resend what is queued.

        Raises :class:`ConnectRefused` when the broker refuses the credentials.
        """
        timeout = self.timeout if timeout is None else timeout
        grant = self.grant
        if grant is None:
            raise DeviceError("not authenticated; call authenticate() first")
        link = _Link(
            self.account_host,
            self.account_port,
            client_id=self._client_id("dev"),
            subscribe=grant.acks,
            on_message=self.receive_ack,
            username=grant.username,
            password=grant.password,
            on_lost=self._lost,
            max_inflight=self.max_inflight,
            log=self._log_fn,
            tls=self._tls(timeout, account=True),
        )
        link.open(timeout)
        if self._stopped:
            link.close()
            raise DeviceError("the device was stopped")
        self._install(link)

    def _install(self, link: _Link) -> None:
        """Make ``link`` the connection readings go over; resend from the oldest unacked."""
        with self._lock:
            old, self._link = self._link, link
            self._inflight.clear()
            self._cursor = 0
            self._window = 1
            self.stats["connects"] += 1
            queued = len(self.outbox)
        if old is not None:
            old.close()
        self._log(f"connected as {self.did}" + (f"; {queued} queued to send" if queued else ""))
        self._pump()

    def _lost(self, link: _Link) -> None:
        with self._lock:
            current = link is self._link
        if current and not self._stopped:
            self._log("connection to the broker lost")
            self._wake.set()

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and link.ready.is_set() and not link.closed.is_set()

    # ---------------------------------------------------------------- readings

    def publish_reading(
        self, reading_type: str, values: dict[str, Any], *, ts_ms: int | None = None
    ) -> int:
        """Sign a reading with the next seq, queue it on disk, send it if connected; its seq."""
        ts = int(self._clock() * 1000) if ts_ms is None else ts_ms
        seq, _ = self.outbox.add(
            lambda seq: make_reading(
                self.identity, seq=seq, ts_ms=ts, reading_type=reading_type, values=values
            ),
            created_ms=ts,
        )
        with self._lock:
            self.stats["published"] += 1
        self._pump()
        return seq

    def publish_raw(self, payload: bytes | str, topic: str | None = None) -> None:
        """Publish anything (QoS 1) on the current connection, by default to the readings topic.

        Not queued, not tracked: for testing how a gateway answers malformed input.
        """
        link = self._link
        if link is None or not link.ready.is_set():
            raise DeviceError("not connected")
        link.publish(topic or self.readings_topic, payload)

    def receive_ack(self, payload: bytes) -> None:
        """Handle a message from the acks topic: forget the reading it acknowledges."""
        ack = _json_object(payload)
        if ack is None:
            raise DeviceError(f"ack is not a JSON object: {payload[:80]!r}")
        seq, status = ack.get("seq"), ack.get("status")
        with self._lock:
            self.acks.append(ack)
        if seq is None:
            self._log(f"gateway could not parse a reading: {ack.get('reason')}")
        elif not isinstance(seq, int) or isinstance(seq, bool):
            raise DeviceError(f"ack with a malformed seq: {seq!r}")
        elif status == "refused" and ack.get("reason") in TRANSIENT_REASONS:
            # Not the reading's fault (the gateway's disk is full, or it cannot check now):
            # keep it, and send it again from there after a pause.
            with self._lock:
                self._inflight.pop(seq, None)
                self._cursor = min(self._cursor, seq - 1)
                self._paused_until = self._clock() + self.retry_after
                self.stats["deferred"] += 1
                self._acked.notify_all()
            self._log(f"reading {seq} deferred: {ack.get('reason')}; sending it again later")
        elif status in ("accepted", "refused"):
            # Forget it and count it under one lock: whoever sees the outbox empty (see
            # wait_acked) must also see the count.
            with self._lock:
                removed = self.outbox.remove(seq)
                if self._inflight.pop(seq, None) is not None:
                    self._window = min(self._window + 1, self.max_inflight)
                if removed:
                    self.stats[status] += 1
                self._acked.notify_all()
            if status == "refused" and removed:
                self._log(f"reading {seq} refused: {ack.get('reason')}")
        else:
            raise DeviceError(f"ack with an unknown status: {status!r}")
        if self._on_ack is not None:
            self._on_ack(ack)
        self._pump()

    def _pump(self) -> None:
        """Send queued readings, in seq order, as far as the window allows.

        The gateway refuses a seq not newer than the last it accepted, so a reading lost on
        the way must not be overtaken by a later one that gets through. Hence: on a new
        connection one reading goes first and the window grows by one with each ack (up to
        ``max_inflight``); nothing new is sent while the oldest reading in flight has waited
        more than ``stall_after`` seconds; after ``ack_timeout`` everything in flight is
        sent again from the oldest (see :meth:`tick`).
        """
        with self._send_lock:
            with self._lock:
                link = self._link
                if link is None or not link.ready.is_set() or link.closed.is_set():
                    return
                if self._clock() < self._paused_until:
                    return
                room = self._window - len(self._inflight)
                if self._inflight:
                    oldest = next(iter(self._inflight.values()))
                    if self._clock() - oldest > self.stall_after:
                        room = 0
                cursor = self._cursor
            if room <= 0:
                return
            for seq, token in self.outbox.after(cursor, room):
                info = link.publish(self.readings_topic, token)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    break  # the connection went away; the next one resends
                with self._lock:
                    if link is not self._link:
                        break
                    self._inflight[seq] = self._clock()
                    self._cursor = seq
                    self.stats["resent" if seq <= self._high_sent else "sent"] += 1
                    self._high_sent = max(self._high_sent, seq)

    def pending(self) -> int:
        """Readings stored and not yet acknowledged."""
        return len(self.outbox)

    def wait_acked(self, timeout: float) -> bool:
        """Wait until every queued reading is acknowledged; False if some are not in time."""
        deadline = time.monotonic() + timeout
        with self._acked:
            while len(self.outbox):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._acked.wait(min(remaining, 0.2))
        return True

    # ---------------------------------------------------------------- supervision

    def open(self, timeout: float | None = None) -> None:
        """Authenticate and connect (no supervision): the first half of :meth:`start`."""
        self.authenticate(timeout)
        self.connect(timeout)

    def start(self, timeout: float | None = None, *, retry: bool = False) -> None:
        """Authenticate, connect, and supervise in a background thread until :meth:`stop`.

        A refusal by the gateway (:class:`AuthRefused`) always raises. Other failures (no
        broker, no gateway answer) raise too, unless ``retry``: then the supervisor keeps
        trying, with backoff, and readings wait on disk meanwhile.
        """
        try:
            self.open(timeout)
        except AuthRefused as exc:
            if not (retry and exc.reason in TRY_LATER):
                raise
            self._retry_at = self._clock() + self._delay(exc)
            self._log(f"{exc}; will keep trying")
        except (DeviceError, OSError, TimeoutError) as exc:
            if not retry:
                raise
            self._retry_at = self._clock() + self._backoff
            self._log(f"{exc}; will keep trying")
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"supervise-{self.did[-8:]}", daemon=True
        )
        self._supervisor.start()

    def _supervise(self) -> None:
        while not self._stopped:
            self._wake.wait(0.5)
            self._wake.clear()
            self.tick()

    def tick(self) -> None:
        """One supervision step; never blocks on the network.

        Reconnects a lost connection (re-authenticating first when the broker refused the
        credentials), renews the grant before it expires, resends readings whose ack is late.
        """
        if self._stopped:
            return
        now = self._clock()
        with self._lock:
            link = self._link
            busy = self._worker is not None and self._worker.is_alive()
            late = bool(
                self._inflight
                and link is not None
                and now - next(iter(self._inflight.values())) > self.ack_timeout
            )
            if late:
                self._log(f"no ack for {len(self._inflight)} readings in time; sending again")
                self._inflight.clear()
                self._cursor = 0
                self._window = 1
        if not busy:
            dead = link is None or link.closed.is_set()
            if dead and now >= self._retry_at:
                self._spawn(reauth=False)
            elif not dead and now >= self._renew_at:
                self._log("renewing the grant before it expires")
                self._spawn(reauth=True)
        self._pump()

    def _spawn(self, *, reauth: bool) -> None:
        worker = threading.Thread(
            target=self._reestablish, args=(reauth,), name=f"auth-{self.did[-8:]}", daemon=True
        )
        with self._lock:
            self._worker = worker
        worker.start()

    def _reestablish(self, reauth: bool) -> None:
        """Worker: (re-)authenticate if needed, then connect; on failure, retry with backoff."""
        try:
            need_auth = reauth or self.grant is None or self._clock() >= self._renew_at
            if need_auth:
                self.authenticate()
            try:
                self.connect()
            except ConnectRefused:
                with self._lock:
                    self.grant = None  # the account is gone or expired: never try it again
                if need_auth:
                    raise
                self._log("broker refused the credentials; authenticating again")
                self.authenticate()
                self.connect()
            self._backoff = 1.0
        except (DeviceError, OSError, TimeoutError) as exc:
            if self._stopped:
                return
            delay = self._delay(exc)
            self._retry_at = self._clock() + delay
            if self.connected:  # a renewal failed: the current account still works a while
                self._renew_at = self._retry_at
            self._log(f"{exc}; retrying in {delay:.1f} s")

    def _delay(self, exc: BaseException) -> float:
        """How long to wait before the next try: the backoff (doubling up to 30 s), or, when
        the gateway said when to come back, that; plus up to a quarter (backoff) or a tenth
        (the gateway's word: it gives each refused device its own place in a line already)
        more at random, so that a building coming back at once spreads its retries."""
        said = exc.retry_after if isinstance(exc, AuthRefused) else None
        if said is not None:
            return said * (1 + secrets.randbelow(10) / 100)
        delay = self._backoff * (1 + secrets.randbelow(25) / 100)
        self._backoff = min(self._backoff * 2, 30.0)
        return delay

    def stop(self) -> None:
        """Stop supervising and disconnect; queued readings stay on disk for the next run."""
        self._stopped = True
        self._wake.set()
        for thread in (self._supervisor, self._worker):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=self.timeout + 1)
        with self._lock:
            link, self._link = self._link, None
        if link is not None:
            link.close()

    def close(self) -> None:
        """:meth:`stop`, then close the state file."""
        self.stop()
        self.outbox.close()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _clock_text(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds))


# --------------------------------------------------------------------------- fleet


class Fleet:
    """N devices in one process, for load tests.

    Device ``i`` keeps its key and state in ``<state_dir>/dev-<i>/`` (created on first use);
    ``<state_dir>/dids.txt`` lists the DIDs, one a line, for registering them. Each device has
    its own MQTT connection (paho thread); one supervisor thread serves them all; at most
    ``parallel_auth`` authenticate at once.

    At most :data:`MAX_FLEET` devices: paho's network loop uses ``select()``, which cannot
    watch a file descriptor numbered 1024 or above, and each device holds five (its socket,
    paho's wake-up socket pair, its state file and WAL). Run several processes for more.
    """

    def __init__(
        self,
        size: int,
        broker: str | tuple[str, int] = "127.0.0.1:1883",
        *,
        state_dir: str | Path,
        parallel_auth: int = 8,
        log: Log | None = None,
        **device_options: Any,
    ) -> None:
        if not 1 <= size <= MAX_FLEET:
            raise DeviceError(
                f"a fleet has 1 to {MAX_FLEET} devices per process (paho's select() loop "
                "cannot use file descriptors above 1023); run several processes for more"
            )
        root = Path(state_dir)
        self.parallel_auth = parallel_auth
        self._log = log
        gate = threading.Semaphore(parallel_auth)
        device_options.setdefault("durable", False)
        self.devices: list[Device] = []
        try:
            for i in range(1, size + 1):
                name = f"dev-{i:04d}"
                self.devices.append(
                    Device(
                        broker,
                        key_path=root / name / "key.pem",
                        state_dir=root / name,
                        auth_gate=gate,
                        log=_prefixed(log, name),
                        **device_options,
                    )
                )
        except BaseException:
            for device in self.devices:
                device.close()
            raise
        (root / "dids.txt").write_text("".join(f"{d.did}\n" for d in self.devices))
        self._stopped = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def dids(self) -> list[str]:
        return [device.did for device in self.devices]

    def start(self, timeout: float = 30.0) -> dict[str, Exception]:
        """Authenticate and connect every device; the ones that fail keep retrying.

        Returns the failures of the first attempt, by DID.
        """
        failures: dict[str, Exception] = {}

        def open_one(device: Device) -> None:
            try:
                device.open(timeout)
            except (DeviceError, OSError, TimeoutError) as exc:
                failures[device.did] = exc  # the supervisor retries it
                device._log(f"{exc}; will keep trying")

        pool = ThreadPoolExecutor(max_workers=self.parallel_auth)
        try:
            for future in [pool.submit(open_one, device) for device in self.devices]:
                future.result()
        finally:  # on Ctrl-C, do not start the ones still waiting
            pool.shutdown(wait=True, cancel_futures=True)
        self._supervisor = threading.Thread(target=self._supervise, name="fleet", daemon=True)
        self._supervisor.start()
        return failures

    def _supervise(self) -> None:
        while not self._stopped.wait(0.5):
            for device in self.devices:
                device.tick()

    def publish_round(self, reading_type: str, values: Callable[[Device], dict[str, Any]]) -> None:
        """One reading from every device."""
        for device in self.devices:
            device.publish_reading(reading_type, values(device))

    def pending(self) -> int:
        return sum(device.pending() for device in self.devices)

    def connected(self) -> int:
        return sum(device.connected for device in self.devices)

    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for device in self.devices:
            for name, value in device.stats.items():
                total[name] = total.get(name, 0) + value
        return total

    def wait_acked(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(d.wait_acked(max(deadline - time.monotonic(), 0)) for d in self.devices)

    def stop(self) -> None:
        self._stopped.set()
        if self._supervisor is not None:
            self._supervisor.join()
        for device in self.devices:
            device.stop()

    def close(self) -> None:
        self.stop()
        for device in self.devices:
            device.outbox.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _prefixed(log: Log | None, name: str) -> Log | None:
    if log is None:
        return None
    return lambda message: log(f"{name}: {message}")

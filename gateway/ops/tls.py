"""The gateway's TLS certificate authority and the broker's certificate, on disk.

``didgw init`` makes the certificate authority (:func:`ensure_ca`); ``didgw tls issue`` and
``didgw tls renew`` write the broker's certificate where mosquitto reads it
(:func:`issue_broker`) and tell mosquitto to load it (SIGHUP: mosquitto 2.0 reloads its
certificates and keys on that signal, without dropping a connection). The certificates
themselves are made in ``gateway/identity/certs.py``; here are the files, their modes and
owners, and the signal. Layout::

    <state>/keys/tls-ca.pem   0600  the CA's P-256 key (encrypted like the other keys)
    <state>/tls/ca.crt        the CA certificate: what devices trust (its fingerprint)
    <broker_dir>/broker.crt   the broker's certificate, then the CA's (the chain it serves)
    <broker_dir>/broker.key   0600  the broker's key (not encrypted: mosquitto cannot ask)

``[tls] broker_dir`` defaults to ``<state>/tls``. Every file is written to a temporary name
in its directory, synced and renamed into place, so mosquitto never reads half of one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import secrets
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import Config
from gateway.errors import DidgwError, KeyStoreError, StateError
from gateway.identity import certs, keystore
from gateway.transports.mqtt import client_tls

CA_KEY_FILE = Path("keys") / "tls-ca.pem"
CA_CERT_FILE = Path("tls") / "ca.crt"
BROKER_CERT = "broker.crt"
BROKER_KEY = "broker.key"


class TlsError(DidgwError):
    code = "tls_refused"


def broker_dir(config: Config, state_dir: Path) -> Path:
    """Where the broker's certificate and key are written."""
    return Path(config.tls.broker_dir) if config.tls.broker_dir else state_dir / "tls"


def ca_cert_path(state_dir: Path) -> Path:
    return state_dir / CA_CERT_FILE


def read_ca_cert(state_dir: Path) -> x509.Certificate:
    """The CA certificate (public: no passphrase needed)."""
    path = ca_cert_path(state_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StateError(
            f"{path} does not exist: this gateway has no TLS certificate authority yet; "
            f"run: didgw init --state-dir {state_dir}"
        ) from None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from None
    return certs.load_pem(data, str(path))[0]


def ensure_ca(
    state_dir: Path, passphrase: bytes | None, *, common_name: str, now: float
) -> tuple[x509.Certificate, bool]:
    """The CA certificate, made with its key if this state directory has neither; and
    whether it was made now. Never replaces either: devices pin the certificate."""
    key_path, cert_path = state_dir / CA_KEY_FILE, ca_cert_path(state_dir)
    if key_path.exists() != cert_path.exists():
        have, lost = (key_path, cert_path) if key_path.exists() else (cert_path, key_path)
        raise StateError(
            f"{have} exists but {lost} does not: restore it from the backup (a new "
            "certificate authority would need every device provisioned again)"
        )
    if key_path.exists():
        key = keystore.load_tls_key(key_path, passphrase)
        cert = read_ca_cert(state_dir)
        certs.check_ca_pair(key, cert)
        return cert, False
    _private_dir(key_path.parent)
    _private_dir(cert_path.parent)
    key = certs.generate_key()
    cert = certs.new_ca(key, common_name=common_name, now=now)
    keystore.write_private_key(key_path, key, passphrase)
    _replace(cert_path, certs.to_pem(cert), mode=0o644)
    return cert, True


def load_ca(
    state_dir: Path, passphrase: bytes | None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The CA's key and certificate, checked to belong together."""
    key_path = state_dir / CA_KEY_FILE
    if not key_path.exists():
        read_ca_cert(state_dir)  # raises the message that says what to run
    key = keystore.load_tls_key(key_path, passphrase)
    cert = read_ca_cert(state_dir)
    certs.check_ca_pair(key, cert)
    return key, cert


def read_broker_cert(config: Config, state_dir: Path) -> x509.Certificate | None:
    """The broker certificate in ``broker_dir`` (the first of its chain), None if none."""
    path = broker_dir(config, state_dir) / BROKER_CERT
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TlsError(f"cannot read {path}: {exc.strerror}") from None
    return certs.load_pem(data, str(path))[0]


@dataclass(frozen=True)
class Issued:
    """What :func:`issue_broker` did."""

    cert: x509.Certificate | None  # the certificate now in place
    reason: str | None  # why a new one was issued; None: the current one stays
    directory: Path
    ca_fingerprint: str
    reloaded: int | None = None  # the pid told to reload, if any


def issue_broker(
    config: Config,
    state_dir: Path,
    passphrase: bytes | None,
    *,
    now: float,
    names: certs.Names | None = None,
    force: bool = False,
) -> Issued:
    """Issue the broker's certificate when it is due (see ``certs.renewal_reason``), for
    ``names`` or else the names the current one has; with ``force``, whatever it says.
    A new one is written, handed to ``[tls] broker_owner`` and announced to the broker."""
    directory = broker_dir(config, state_dir)
    current = read_broker_cert(config, state_dir)
    _, ca_cert = ca = load_ca(state_dir, passphrase)
    if names is None:
        if current is None:
            raise TlsError(
                f"there is no broker certificate in {directory} yet; issue the first with "
                "the names devices use for the broker: didgw tls issue --name NAME --ip ADDRESS"
            )
        names = certs.names_of(current)
    names = names.with_loopback()
    reason = certs.renewal_reason(
        current, ca_cert, now=now, renew_before_days=config.tls.renew_before_days, names=names
    )
    if reason is None and not force:
        return Issued(current, None, directory, certs.fingerprint(ca_cert))
    server_key = certs.generate_key()
    cert = certs.issue_server(
        *ca, server_key.public_key(), names, now=now, days=config.tls.broker_days
    )
    owner = _owner(config.tls.broker_owner)
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)  # the key keeps its own 0600
    _replace(directory / BROKER_KEY, certs.private_pem(server_key), mode=0o600, owner=owner)
    _replace(directory / BROKER_CERT, certs.to_pem(cert, ca_cert), mode=0o644, owner=owner)
    pid = _reload(config.tls.broker_pid_file)
    return Issued(cert, reason or "asked to (--force)", directory, certs.fingerprint(ca_cert), pid)


def broker_cert_warning(config: Config, state_dir: Path, *, now: float) -> str | None:
    """Why the broker's certificate needs attention (renewal overdue, foreign, expired), for
    ``didgw run`` to log at start; None when it is fine or this gateway issued none."""
    try:
        current = read_broker_cert(config, state_dir)
        ca_cert = read_ca_cert(state_dir) if current is not None else None
    except DidgwError:
        return None
    if current is None or ca_cert is None:
        return None
    reason = certs.renewal_reason(
        current, ca_cert, now=now, renew_before_days=config.tls.renew_before_days
    )
    if reason is None:
        return None
    return (
        f"{reason}; devices refuse an expired one: is didgw-tls-renew.timer running? "
        "(didgw tls renew renews it)"
    )


def gateway_tls(config: Config, state_dir: Path) -> ssl.SSLContext | None:
    """The TLS of the gateway's own connections to its broker, None when ``[mqtt] tls`` is off."""
    mqtt = config.mqtt
    if not mqtt.tls:
        return None
    ca_file = mqtt.ca_file or str(ca_cert_path(state_dir))
    if not mqtt.ca_file:
        read_ca_cert(state_dir)  # says what to run when there is none
    return client_tls(ca_file, mqtt.cert_file, mqtt.key_file)


def _owner(name: str) -> tuple[int, int] | None:
    if not name:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise TlsError(f"[tls] broker_owner: there is no user {name!r} on this machine") from None
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise TlsError(
            f"[tls] broker_owner = {name!r}: only root may give files to another user; "
            "run didgw tls as root (systemd/didgw-tls-renew.service does)"
        )
    return entry.pw_uid, entry.pw_gid


def _reload(pid_file: str) -> int | None:
    """Send SIGHUP to the broker named by its pid file; the pid, or None when not configured."""
    if not pid_file:
        return None
    try:
        pid = int(Path(pid_file).read_text().strip())
    except (OSError, ValueError) as exc:
        raise TlsError(
            f"the new certificate is in place, but the broker was not told: cannot read a "
            f"pid from {pid_file} ({exc}); run: systemctl reload mosquitto"
        ) from None
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise TlsError(
            f"the new certificate is in place, but the broker (pid {pid} from {pid_file}) was "
            f"not told: {exc.strerror}; run: systemctl reload mosquitto"
        ) from None
    return pid


def _private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"cannot create {path}: {exc.strerror}") from None


def _replace(path: Path, data: bytes, *, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Write ``data`` to a new file beside ``path`` with ``mode`` (and ``owner``), sync it,
    and rename it over ``path``: a reader sees the old file or the new one, never a part."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(temporary, flags, mode)
    except OSError as exc:
        raise KeyStoreError(f"cannot write in {path.parent}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, mode)
            if owner is not None:
                os.fchown(fd, *owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise KeyStoreError(f"cannot write {path}: {exc.strerror}") from None
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


HTTP_CERT = "http.crt"
HTTP_KEY = "http.key"


def http_server_tls(
    config: Config, state_dir: Path, passphrase: bytes | None, *, now: float
) -> ssl.SSLContext | None:
    """The TLS of the HTTP edge: None on plain loopback; the operator's ``cert_file`` and
    ``key_file``; else a certificate of the gateway's CA for ``public_url``'s host (and
    ``host`` when it is an address), in ``<state>/tls/http.crt`` with its key
    (``http.key``, 0600), issued again at start when due."""
    http = config.http
    if not http.tls():
        return None
    if http.cert_file:
        cert_path, key_path = Path(http.cert_file), Path(http.key_file)
    else:
        directory = state_dir / "tls"
        cert_path, key_path = directory / HTTP_CERT, directory / HTTP_KEY
        names = _http_names(config)
        current = _read_cert(cert_path)
        ca = None
        if current is None or certs.renewal_reason(
            current,
            read_ca_cert(state_dir),
            now=now,
            renew_before_days=config.tls.renew_before_days,
            names=names,
        ):
            ca = load_ca(state_dir, passphrase)
        if ca is not None:
            key = certs.generate_key()
            cert = certs.issue_server(
                *ca, key.public_key(), names, now=now, days=config.tls.broker_days
            )
            _private_dir(directory)
            _replace(key_path, certs.private_pem(key), mode=0o600)
            _replace(cert_path, certs.to_pem(cert, ca[1]), mode=0o644)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(
            f"cannot load the HTTP certificate {cert_path} and key {key_path}: {exc}"
        ) from None
    return context


def _http_names(config: Config) -> certs.Names:
    import urllib.parse

    host = urllib.parse.urlsplit(config.http.base_url()).hostname or "localhost"
    dns, ips = [], []
    for name in {host.strip("[]"), config.http.host.strip("[]")}:
        if name in ("", "0.0.0.0", "::"):  # noqa: S104 - naming it, not binding
            continue
        try:
            ipaddress.ip_address(name)
        except ValueError:
            dns.append(name)
        else:
            ips.append(name)
    return certs.parse_names(dns, ips).with_loopback()


def _read_cert(path: Path) -> x509.Certificate | None:
    try:
        return certs.load_pem(path.read_bytes(), str(path))[0]
    except (OSError, DidgwError):
        return None

"""The gateway's certificate authority and the broker's TLS certificate, sans-IO.

Devices reach the broker over TLS on the LAN (``configs/mosquitto/``). What they trust is a
small certificate authority of the gateway's own: its certificate is pinned in every
device's provisioning (the SHA-256 fingerprint, :func:`fingerprint`), and it signs the
broker's server certificate with the names and addresses devices use to reach it. The CA
lives for decades, because a new one means provisioning every device again; the broker
certificate lives for months and is renewed before it expires (:func:`renewal_reason`),
which devices do not notice since they trust the CA, not the certificate.

Everything here is pure: keys and certificates in, certificates and reasons out. Time
comes in as ``now`` (Unix seconds); files, ownership and telling mosquitto to reload are
the edge's (``gateway/ops/tls.py``). Keys are ECDSA P-256: every TLS stack a device may
have (mbedTLS, wolfSSL, BearSSL, OpenSSL) verifies it, which is not yet true of Ed25519.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import ConfigError, KeyStoreError

#: How long the certificate authority is valid: devices pin it, so it outlives them.
CA_DAYS = 20 * 365 + 5
#: Back-dating of notBefore, so that a device whose clock is a little behind accepts a
#: certificate issued a moment ago.
BACKDATE_SECONDS = 3600

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_HEX = re.compile(r"^[0-9a-f]{64}$")

#: Names every broker certificate carries besides the operator's: the gateway's own
#: connection to a broker on the same machine may then use TLS too.
LOOPBACK_DNS = ("localhost",)
LOOPBACK_IPS: tuple[IpAddress, ...] = (
    ipaddress.IPv4Address("127.0.0.1"),
    ipaddress.IPv6Address("::1"),
)


@dataclass(frozen=True)
class Names:
    """The names (DNS) and addresses (IP) a server certificate is valid for, sorted."""

    dns: tuple[str, ...] = ()
    ips: tuple[IpAddress, ...] = ()

    def with_loopback(self) -> Names:
        return Names.of(self.dns + LOOPBACK_DNS, self.ips + LOOPBACK_IPS)

    @staticmethod
    def of(dns: Iterable[str], ips: Iterable[IpAddress]) -> Names:
        return Names(
            tuple(sorted(set(dns))),
            tuple(sorted(set(ips), key=lambda ip: (ip.version, int(ip)))),
        )

    def __str__(self) -> str:
        return ", ".join([*self.dns, *(str(ip) for ip in self.ips)]) or "(none)"


def parse_names(dns: Iterable[str] = (), ips: Iterable[str] = ()) -> Names:
    """Validate what an operator typed: host names (``*.`` once, in front, allowed) and IP
    addresses. Raises :class:`ConfigError` naming the first bad one."""
    names = []
    for raw in dns:
        name = raw.strip().rstrip(".").lower()
        labels = name.removeprefix("*.").split(".")
        if not name or not all(_LABEL.match(label) for label in labels):
            raise ConfigError(f"{raw!r} is not a host name (letters, digits and '-' per label)")
        try:
            ipaddress.ip_address(name)
        except ValueError:
            names.append(name)
        else:
            raise ConfigError(f"{raw!r} is an address: give it with --ip, not as a name")
    addresses = []
    for raw in ips:
        try:
            addresses.append(ipaddress.ip_address(raw.strip().strip("[]")))
        except ValueError:
            raise ConfigError(f"{raw!r} is not an IPv4 or IPv6 address") from None
    return Names.of(names, addresses)


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key from the operating system's CSPRNG."""
    return ec.generate_private_key(ec.SECP256R1())


def _when(now: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(int(now), datetime.UTC)


def _subject(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "didgw"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def new_ca(
    key: ec.EllipticCurvePrivateKey, *, common_name: str, now: float, days: int = CA_DAYS
) -> x509.Certificate:
    """A self-signed CA certificate that may sign server certificates and nothing else
    (``pathLenConstraint`` 0: no intermediate CA below it)."""
    name = _subject(common_name)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_when(now - BACKDATE_SECONDS))
        .not_valid_after(_when(now + days * 86400))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def issue_server(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    names: Names,
    *,
    now: float,
    days: int,
) -> x509.Certificate:
    """A TLS server certificate for ``names``, signed by the CA, valid ``days`` from ``now``."""
    check_ca_pair(ca_key, ca_cert)
    if not names.dns and not names.ips:
        raise ConfigError("a server certificate needs at least one name or address")
    first = names.dns[0] if names.dns else str(names.ips[0])
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names.dns]
    sans += [x509.IPAddress(ip) for ip in names.ips]
    not_after = min(_when(now + days * 86400), ca_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_subject(first))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_when(now - BACKDATE_SECONDS))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def check_ca_pair(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    """Refuse a CA certificate that is not the certificate of ``key``."""
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if mine != theirs:
        raise KeyStoreError("the CA certificate is not the certificate of the CA key")


def names_of(cert: x509.Certificate) -> Names:
    """The DNS names and IP addresses in a certificate's subjectAltName."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return Names()
    ips = [
        ip
        for ip in sans.get_values_for_type(x509.IPAddress)
        if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
    ]
    return Names.of(sans.get_values_for_type(x509.DNSName), ips)


def issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """Whether ``cert`` carries a valid signature of ``ca_cert``'s key."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def renewal_reason(
    cert: x509.Certificate | None,
    ca_cert: x509.Certificate,
    *,
    now: float,
    renew_before_days: int,
    names: Names | None = None,
) -> str | None:
    """Why the broker certificate must be issued again now, or None when it need not be.

    Issued again when there is none, when this CA did not issue it, when it expires within
    ``renew_before_days``, and when ``names`` (if given) differ from the names it has.
    """
    if cert is None:
        return "there is no broker certificate yet"
    if not issued_by(cert, ca_cert):
        return "the broker certificate was not issued by this gateway's certificate authority"
    left = cert.not_valid_after_utc.timestamp() - now
    if left <= 0:
        return f"the broker certificate expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if left <= renew_before_days * 86400:
        return (
            f"the broker certificate expires at {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, "
            f"within {renew_before_days} days"
        )
    if names is not None and names != names_of(cert):
        return f"the names changed (from {names_of(cert)} to {names})"
    return None


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate as ``openssl x509 -fingerprint -sha256`` shows it."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, 64, 2))


def parse_fingerprint(text: str) -> bytes:
    """A SHA-256 fingerprint as typed: hex, upper or lower case, with or without colons,
    optionally after ``sha256:`` or ``SHA256 Fingerprint=``."""
    value = text.strip().lower()
    for prefix in ("sha256 fingerprint=", "sha256:", "sha256="):
        value = value.removeprefix(prefix)
    value = value.replace(":", "")
    if not _HEX.match(value):
        raise ConfigError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits)")
    return bytes.fromhex(value)


def to_pem(*certs: x509.Certificate) -> bytes:
    """Certificates as one PEM file, in the order given (a chain: leaf first)."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def load_pem(data: bytes, what: str) -> list[x509.Certificate]:
    """Every certificate in a PEM file; ``what`` names the file in the error."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise KeyStoreError(f"{what} holds no readable PEM certificate") from None
    return certs


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """An unencrypted PKCS#8 PEM key, for a server that cannot ask for a passphrase."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )

"""The certificate authority and the broker certificate (gateway/identity/certs.py).

Each certificate is also checked by an independent path validator: pyca/cryptography's
``x509.verification`` (the Rust one, after webpki), as a TLS client checks a server. The
command-line OpenSSL checks the served chain in tests/integration/test_mqtt_tls.py.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.errors import ConfigError, KeyStoreError
from gateway.identity import certs, keystore

NOW = 1_800_000_000.0
DAY = 86400


@pytest.fixture(scope="module")
def ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = certs.generate_key()
    return key, certs.new_ca(key, common_name="didgw CA test", now=NOW)


def issue(ca, names: certs.Names, *, now: float = NOW, days: int = 90) -> x509.Certificate:
    return certs.issue_server(*ca, certs.generate_key().public_key(), names, now=now, days=days)


def verifier(ca_cert: x509.Certificate, name: x509.verification.Subject, at: float):
    when = datetime.datetime.fromtimestamp(at, datetime.UTC)
    store = verification.Store([ca_cert])
    return verification.PolicyBuilder().store(store).time(when).build_server_verifier(name)


NAMES = certs.parse_names(["gateway.local"], ["192.168.1.10"]).with_loopback()


def test_the_ca_may_sign_servers_only_and_lives_twenty_years(ca) -> None:
    _, cert = ca
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and not usage.digital_signature
    assert cert.subject == cert.issuer
    assert cert.not_valid_before_utc.timestamp() == NOW - certs.BACKDATE_SECONDS
    assert cert.not_valid_after_utc.timestamp() == NOW + certs.CA_DAYS * DAY
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"


def test_a_server_certificate_verifies_for_its_names_and_addresses_only(ca) -> None:
    cert = issue(ca, NAMES)
    assert certs.names_of(cert) == NAMES
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in (
        x509.DNSName("gateway.local"),
        x509.DNSName("localhost"),
        verification.IPAddress(ipaddress.ip_address("192.168.1.10")),
        verification.IPAddress(ipaddress.ip_address("::1")),
    ):
        chain = verifier(ca[1], name, NOW + DAY).verify(cert, [])
        assert chain[-1] == ca[1]
    for name in (
        x509.DNSName("evil.example"),
        verification.IPAddress(ipaddress.ip_address("192.168.1.11")),
    ):
        with pytest.raises(verification.VerificationError):
            verifier(ca[1], name, NOW + DAY).verify(cert, [])


def test_a_server_certificate_is_valid_for_its_days_and_not_after(ca) -> None:
    cert = issue(ca, NAMES, days=90)
    assert cert.not_valid_after_utc.timestamp() == NOW + 90 * DAY
    name = x509.DNSName("gateway.local")
    verifier(ca[1], name, NOW - 60).verify(cert, [])  # a device clock a minute behind
    with pytest.raises(verification.VerificationError):
        verifier(ca[1], name, NOW + 91 * DAY).verify(cert, [])


def test_another_ca_does_not_verify_it(ca) -> None:
    other_key = certs.generate_key()
    other = certs.new_ca(other_key, common_name="didgw CA test", now=NOW)  # even the same name
    cert = issue(ca, NAMES)
    assert certs.issued_by(cert, ca[1]) and not certs.issued_by(cert, other)
    with pytest.raises(verification.VerificationError):
        verifier(other, x509.DNSName("gateway.local"), NOW).verify(cert, [])
    with pytest.raises(KeyStoreError, match="not the certificate of the CA key"):
        certs.issue_server(other_key, ca[1], other_key.public_key(), NAMES, now=NOW, days=9)


def test_renewal_is_due_when_missing_foreign_expiring_expired_or_renamed(ca) -> None:
    cert = issue(ca, NAMES, days=90)

    def due(c: x509.Certificate | None, now: float, **kw: certs.Names) -> str | None:
        return certs.renewal_reason(c, ca[1], now=now, renew_before_days=30, **kw)

    assert due(cert, NOW) is None
    assert due(cert, NOW + 59 * DAY) is None
    assert due(cert, NOW, names=NAMES) is None
    assert "within 30 days" in str(due(cert, NOW + 61 * DAY))
    assert "expired" in str(due(cert, NOW + 91 * DAY))
    assert "no broker certificate" in str(due(None, NOW))
    other_key = certs.generate_key()
    other = certs.new_ca(other_key, common_name="x", now=NOW)
    foreign = certs.issue_server(other_key, other, other_key.public_key(), NAMES, now=NOW, days=90)
    assert "not issued by" in str(due(foreign, NOW))
    renamed = certs.parse_names(["gw.example"], []).with_loopback()
    assert "names changed" in str(due(cert, NOW, names=renamed))


def test_the_fingerprint_is_openssls_and_parses_back(ca) -> None:
    der = ca[1].public_bytes(serialization.Encoding.DER)
    shown = certs.fingerprint(ca[1])
    assert shown.replace(":", "").lower() == hashlib.sha256(der).hexdigest()
    assert len(shown) == 95 and shown == shown.upper()
    digest = hashlib.sha256(der).digest()
    for typed in (shown, shown.lower(), shown.replace(":", ""), f"sha256 Fingerprint={shown}"):
        assert certs.parse_fingerprint(typed) == digest
    for bad in ("", "AB:CD", "zz" * 32, shown + ":00"):
        with pytest.raises(ConfigError, match="not a SHA-256 fingerprint"):
            certs.parse_fingerprint(bad)


@pytest.mark.parametrize(
    ("dns", "ips", "reason"),
    [
        (["bad name"], [], "not a host name"),
        (["-x.example"], [], "not a host name"),
        (["10.0.0.1"], [], "give it with --ip"),
        ([], ["300.1.1.1"], "not an IPv4 or IPv6 address"),
        ([], ["gateway.local"], "not an IPv4 or IPv6 address"),
    ],
)
def test_names_are_checked(dns: list[str], ips: list[str], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        certs.parse_names(dns, ips)


def test_names_are_normalised_and_loopback_is_added_once() -> None:
    names = certs.parse_names(["Gateway.Local.", "gateway.local"], ["[::1]", " 10.0.0.7 "])
    assert names.dns == ("gateway.local",)
    assert [str(ip) for ip in names.ips] == ["10.0.0.7", "::1"]
    both = names.with_loopback()
    assert both.dns == ("gateway.local", "localhost")
    assert [str(ip) for ip in both.ips] == ["10.0.0.7", "127.0.0.1", "::1"]
    assert both.with_loopback() == both
    key = certs.generate_key()
    authority = certs.new_ca(key, common_name="x", now=NOW)
    with pytest.raises(ConfigError, match="at least one name"):
        certs.issue_server(key, authority, key.public_key(), certs.Names(), now=NOW, days=9)


def test_the_broker_certificate_never_outlives_its_ca() -> None:
    key = certs.generate_key()
    short = certs.new_ca(key, common_name="short", now=NOW, days=10)
    cert = certs.issue_server(key, short, key.public_key(), NAMES, now=NOW, days=90)
    assert cert.not_valid_after_utc == short.not_valid_after_utc


def test_the_ca_key_is_kept_like_the_others(tmp_path) -> None:
    key = certs.generate_key()
    path = tmp_path / "tls-ca.pem"
    keystore.write_private_key(path, key, b"passphrase")
    assert (path.stat().st_mode & 0o777) == 0o600
    loaded = keystore.load_tls_key(path, b"passphrase")
    assert loaded.private_numbers() == key.private_numbers()
    with pytest.raises(KeyStoreError, match="encrypted"):
        keystore.load_tls_key(path, None)
    ledger = tmp_path / "ledger.pem"
    keystore.write_private_key(ledger, keystore.generate_ledger_key(), None)
    with pytest.raises(KeyStoreError, match="not hold a P-256 key"):
        keystore.load_tls_key(ledger, None)

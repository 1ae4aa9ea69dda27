"""A throwaway certificate authority for TLS tests, and an HTTPS server that stalls.

:func:`make_pki` makes a CA (handed to the gateway as ``[resolver] ca_file``), a server
certificate for ``localhost`` / ``127.0.0.1`` issued by it, and one issued by a CA nobody
trusts. :class:`Tarpit` is a real HTTPS server on a free loopback port that completes the
TLS handshake, reads the request, then answers one byte at a time: each byte well within
any per-read timeout, the whole answer never (or only very late). It counts the
connections it receives, so a test can assert that nobody connected at all.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca_file: Path  # the test CA, handed to the gateway as ca_file
    server_cert: Path  # localhost / 127.0.0.1, issued by the test CA
    server_key: Path
    rogue_cert: Path  # localhost / 127.0.0.1, issued by a CA nobody trusts
    rogue_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(
        now + datetime.timedelta(days=2)
    )


def _make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return key, _validity(builder).sign(key, hashes.SHA256())


def _make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
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
        .add_extension(san, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    return key, _validity(builder).sign(ca_key, hashes.SHA256())


def _write_pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def make_pki(directory: Path) -> Pki:
    """A test CA, a server certificate it issued, and a rogue one, as PEM files in ``directory``."""
    ca_key, ca_cert = _make_ca("didgw test CA")
    server_key, server_cert = _make_server_cert(ca_key, ca_cert)
    rogue_ca_key, rogue_ca_cert = _make_ca("untrusted CA")
    rogue_key, rogue_cert = _make_server_cert(rogue_ca_key, rogue_ca_cert)
    return Pki(
        ca_file=_write_pem(directory / "ca.pem", ca_cert),
        server_cert=_write_pem(directory / "server.pem", server_cert),
        server_key=_write_key(directory / "server.key", server_key),
        rogue_cert=_write_pem(directory / "rogue.pem", rogue_cert),
        rogue_key=_write_key(directory / "rogue.key", rogue_key),
    )


class Tarpit:
    """An HTTPS server on 127.0.0.1 that answers ``body`` one byte every ``interval`` seconds.

    Every connection is counted (:attr:`connections`) before the TLS handshake. The
    answer is a well-formed ``200`` with ``Content-Length``, so a client that waits long
    enough gets it whole: ``len(answer) * interval`` seconds. :meth:`stop` closes every
    connection, so whatever a client still waits for ends then.
    """

    def __init__(self, pki: Pki, body: bytes = b"{}", *, interval: float = 0.25) -> None:
        self._context = server_context(pki.server_cert, pki.server_key)
        self._answer = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        self._interval = interval
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.connections = 0
        self.port = int(self._listener.getsockname()[1])
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._sockets.append(conn)
                thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            tls = self._context.wrap_socket(conn, server_side=True)
            with self._lock:
                self._sockets.append(tls)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = tls.recv(4096)
                if not chunk:
                    return
                request += chunk
            for i in range(len(self._answer)):
                if self._stopped.wait(self._interval):
                    return
                tls.sendall(self._answer[i : i + 1])
        except OSError:
            return

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in threads:
            thread.join(5)
        self._acceptor.join(5)

"""DID resolution over real HTTP(S): did:web, a universal resolver, the cache policy.

Every test talks to a real ``ThreadingHTTPServer`` on a free loopback port. TLS
uses a throwaway CA generated per module, trusted by the gateway only through
``ca_file``. Nothing is mocked: the gateway's own ``make_fetch`` (urllib), its
resolver and its SQLite cache do the work. Time is injected through
``resolve(..., now=...)``, so the freshness policy is exercised without sleeping.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import socket
import ssl
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pki import Pki, Tarpit, make_pki, server_context
from sqlite_utils import Database

from gateway.config import Config, ResolverSection, parse_config
from gateway.db import connect, migrate
from gateway.errors import ConfigError, ResolutionError, SignatureError
from gateway.identity.cache import SqliteResolutionCache
from gateway.identity.did_key import ed25519_multikey
from gateway.identity.did_web import document_url
from gateway.identity.keystore import generate_key, public_bytes
from gateway.identity.resolver import (
    DidResolver,
    Freshness,
    MemoryCache,
    NotFound,
    ResolutionCache,
    Unreachable,
)
from gateway.identity.signing import Signer, sign_jws, verify_jws
from gateway.service import build_resolver
from gateway.transports.http import make_fetch, tls_context

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0  # the injected "now" of each test's first resolution
TTL = 60.0
MAX_STALE = 600.0
FRESHNESS = Freshness(ttl=TTL, max_stale=MAX_STALE)
TIMEOUT = 10.0  # generous: only reached if something is broken, never waited for otherwise
MAX_BYTES = 65536


# --------------------------------------------------------------------------- PKI


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# ------------------------------------------------------------------------ servers


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(obj: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(obj).encode(), {"Content-Type": "application/did+json"})


class _Handler(BaseHTTPRequestHandler):
    server: Site

    def handle(self) -> None:
        # A plain-HTTP site hangs up on a TLS ClientHello (record type 0x16) instead
        # of waiting for a request line that never comes.
        if not self.server.tls and self.connection.recv(1, socket.MSG_PEEK) == b"\x16":
            with self.server.lock:
                self.server.tls_hellos += 1
            return
        super().handle()

    def do_GET(self) -> None:
        site = self.server
        with site.lock:
            site.requests.append(self.path)
            site.accept_headers.append(self.headers.get("Accept", ""))
            reply = site.routes.get(self.path, Reply(404, b"no such file\n"))
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Site(ThreadingHTTPServer):
    """A web server on 127.0.0.1:<free port> serving ``routes`` (path -> Reply)."""

    daemon_threads = False  # server_close() joins the request threads

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.tls = tls is not None
        self.lock = threading.Lock()
        self.routes: dict[str, Reply] = {}
        self.requests: list[str] = []
        self.accept_headers: list[str] = []
        self.tls_hellos = 0
        self._stopped = False
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def seen(self) -> list[str]:
        with self.lock:
            return list(self.requests)

    def stop(self) -> None:
        """Really shut down: stop serving, close the listening socket, join threads."""
        if not self._stopped:
            self._stopped = True
            self.shutdown()
            self.server_close()
            self._thread.join()


@pytest.fixture
def start_site() -> Iterator[Callable[..., Site]]:
    sites: list[Site] = []

    def start(tls: ssl.SSLContext | None = None) -> Site:
        site = Site(tls)
        sites.append(site)
        return site

    yield start
    for site in sites:
        site.stop()


@pytest.fixture
def https_site(start_site: Callable[..., Site], pki: Pki) -> Site:
    return start_site(server_context(pki.server_cert, pki.server_key))


@pytest.fixture
def rogue_https_site(start_site: Callable[..., Site], pki: Pki) -> Site:
    return start_site(server_context(pki.rogue_cert, pki.rogue_key))


@pytest.fixture
def http_site(start_site: Callable[..., Site]) -> Site:
    return start_site(None)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "didgw.db"
    db = connect(path)
    try:
        migrate(db, now=0)
    finally:
        db.close()
    return path


@pytest.fixture
def open_db() -> Iterator[Callable[[Path], Database]]:
    opened: list[Database] = []

    def open_(path: Path) -> Database:
        db = connect(path)
        opened.append(db)
        return db

    yield open_
    for db in opened:
        db.close()


# ---------------------------------------------------------------- DID documents


def web_did(site: Site, *path: str) -> str:
    return ":".join([f"did:web:localhost%3A{site.port}", *path])


def did_document(did: str, key: Ed25519PrivateKey, encoding: str = "Multikey") -> dict[str, Any]:
    """A DID document whose ``#key-1`` is ``key``, for authentication and assertions."""
    kid = f"{did}#key-1"
    pub = public_bytes(key)
    if encoding == "Multikey":
        method: dict[str, Any] = {
            "id": kid,
            "type": "Multikey",
            "controller": did,
            "publicKeyMultibase": ed25519_multikey(pub),
        }
    elif encoding == "JsonWebKey2020":
        x = base64.urlsafe_b64encode(pub).rstrip(b"=").decode()
        method = {
            "id": kid,
            "type": "JsonWebKey2020",
            "controller": did,
            "publicKeyJwk": {"kty": "OKP", "crv": "Ed25519", "x": x},
        }
    else:
        raise AssertionError(encoding)
    return {
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/multikey/v1"
            if encoding == "Multikey"
            else "https://w3id.org/security/suites/jws-2020/v1",
        ],
        "id": did,
        "verificationMethod": [method],
        "authentication": [kid],
        "assertionMethod": [kid],
    }


def publish(site: Site, did: str, document: dict[str, Any]) -> str:
    """Serve ``document`` where did:web says it lives; return that URL path."""
    url = document_url(did, allow_http_localhost=not site.tls)
    path = "/" + url.split("/", 3)[3]
    site.routes[path] = json_reply(document)
    return path


def resolver(
    *,
    cache: ResolutionCache | None = None,
    ca_file: Path | None = None,
    max_bytes: int = MAX_BYTES,
    **kwargs: Any,
) -> DidResolver:
    return DidResolver(
        fetch=make_fetch(
            timeout=TIMEOUT, max_bytes=max_bytes, ca_file=str(ca_file) if ca_file else ""
        ),
        cache=cache if cache is not None else MemoryCache(),
        freshness=FRESHNESS,
        **kwargs,
    )


def failure(resolve: Callable[[], object]) -> tuple[type[ResolutionError], str]:
    """The type and message of the ResolutionError ``resolve()`` raises.

    Only these are kept, not the exception, so no test depends on when an error
    object (and anything it references) is collected.
    """
    try:
        resolve()
    except ResolutionError as exc:
        return type(exc), str(exc)
    raise AssertionError("no ResolutionError was raised")


# ------------------------------------------------------------ 1. did:web over TLS


def test_https_bare_domain_is_fetched_from_well_known(https_site: Site, pki: Pki) -> None:
    did = web_did(https_site)
    document = did_document(did, generate_key())
    assert publish(https_site, did, document) == "/.well-known/did.json"

    resolution = resolver(ca_file=pki.ca_file).resolve(did, now=T0)

    assert resolution.document == document
    assert resolution.source == f"https://localhost:{https_site.port}/.well-known/did.json"
    assert resolution.from_cache is False
    assert resolution.stale is False
    assert resolution.retrieved_at == T0
    assert https_site.seen() == ["/.well-known/did.json"]
    assert "application/did+json" in https_site.accept_headers[0]


@pytest.mark.parametrize("encoding", ["Multikey", "JsonWebKey2020"])
def test_https_path_did_verifies_a_jws(https_site: Site, pki: Pki, encoding: str) -> None:
    did = web_did(https_site, "users", "alice")
    key = generate_key()
    assert publish(https_site, did, did_document(did, key, encoding)) == "/users/alice/did.json"
    res = resolver(ca_file=pki.ca_file)
    token = sign_jws(b'{"temp": 21.5}', Signer(key, kid=f"{did}#key-1"))

    verified = verify_jws(token, resolver=res, relationship="assertionMethod", now=T0)

    assert verified.payload == b'{"temp": 21.5}'
    assert verified.header["kid"] == f"{did}#key-1"
    assert verified.signer.did == did
    assert verified.signer.resolution.source == (
        f"https://localhost:{https_site.port}/users/alice/did.json"
    )
    assert verified.signer.resolution.from_cache is False
    assert https_site.seen() == ["/users/alice/did.json"]

    # The same key is not authorised for key agreement ...
    with pytest.raises(SignatureError, match="not authorised for keyAgreement"):
        verify_jws(token, resolver=res, relationship="keyAgreement", now=T0 + 1)
    # ... and a different key claiming the same kid does not verify.
    forged = sign_jws(b'{"temp": 99}', Signer(generate_key(), kid=f"{did}#key-1"))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_jws(forged, resolver=res, relationship="assertionMethod", now=T0 + 2)
    # The last two checks were answered from the cache.
    assert https_site.seen() == ["/users/alice/did.json"]


# ------------------------------------------------------- 2. untrusted certificates


@pytest.mark.parametrize("trust", ["system store only", "test CA only"])
def test_certificate_from_untrusted_ca_is_refused(
    https_site: Site, rogue_https_site: Site, pki: Pki, trust: str
) -> None:
    # Either the gateway trusts only the system store (our test CA is not in it),
    # or it trusts our test CA but the server shows a certificate from another CA.
    site, ca_file = (
        (https_site, None) if trust == "system store only" else (rogue_https_site, pki.ca_file)
    )
    did = web_did(site)
    publish(site, did, did_document(did, generate_key()))
    cache = MemoryCache()

    with pytest.raises(ResolutionError, match="certificate") as info:
        resolver(cache=cache, ca_file=ca_file).resolve(did, now=T0)

    assert f"https://localhost:{site.port}/.well-known/did.json" in str(info.value)
    assert cache.get(did) is None
    assert site.seen() == []  # the handshake failed: no request was made


def test_untrusted_certificate_is_not_treated_as_an_outage(
    https_site: Site, pki: Pki, open_db: Callable[[Path], Database], db_path: Path
) -> None:
    did = web_did(https_site)
    publish(https_site, did, did_document(did, generate_key()))
    cache = SqliteResolutionCache(open_db(db_path))
    resolver(cache=cache, ca_file=pki.ca_file).resolve(did, now=T0)  # cached, trusted

    # Same cache, but the certificate is not trusted any more (ca_file removed):
    # that is a refusal, not a network outage, so no stale copy.
    with pytest.raises(ResolutionError, match="TLS certificate not trusted") as info:
        resolver(cache=cache).resolve(did, now=T0 + TTL + 1)
    assert not isinstance(info.value, Unreachable)


# ------------------------------------------------------------- 3. plain HTTP


def test_plain_http_localhost_when_allowed(http_site: Site) -> None:
    did = web_did(http_site, "devices", "meter-7")
    document = did_document(did, generate_key())
    publish(http_site, did, document)

    resolution = resolver(allow_http_localhost=True).resolve(did, now=T0)

    assert resolution.document == document
    assert resolution.source == f"http://localhost:{http_site.port}/devices/meter-7/did.json"
    assert http_site.seen() == ["/devices/meter-7/did.json"]


def test_plain_http_localhost_refused_by_default(http_site: Site) -> None:
    did = web_did(http_site)
    publish(http_site, did, did_document(did, generate_key()))
    url = f"https://localhost:{http_site.port}/.well-known/did.json"
    assert document_url(did) == url
    cache = MemoryCache()

    with pytest.raises(Unreachable, match="failing closed") as info:
        resolver(cache=cache, allow_http_localhost=False).resolve(did, now=T0)

    assert url in str(info.value)
    assert cache.get(did) is None
    assert http_site.tls_hellos == 1  # the gateway spoke TLS to it ...
    assert http_site.seen() == []  # ... so the plain-HTTP server never saw a request
    # Plain HTTP is for loopback only, whatever the flag says.
    assert document_url("did:web:example.com", allow_http_localhost=True).startswith("https://")
    with pytest.raises(ResolutionError, match="only https"):
        make_fetch(timeout=TIMEOUT, max_bytes=MAX_BYTES)("http://example.com/.well-known/did.json")


# ----------------------------------------------------------- 4. the cache policy


def test_sqlite_cache_fresh_refetch_stale_restart_and_fail_closed(
    https_site: Site, pki: Pki, db_path: Path, open_db: Callable[[Path], Database]
) -> None:
    did = web_did(https_site, "devices", "pump-1")
    url = f"https://localhost:{https_site.port}/devices/pump-1/did.json"
    first_key, second_key = generate_key(), generate_key()
    v1, v2 = did_document(did, first_key), did_document(did, second_key)
    path = publish(https_site, did, v1)
    first_db = open_db(db_path)
    res = resolver(cache=SqliteResolutionCache(first_db), ca_file=pki.ca_file)

    # First resolution fetches.
    r = res.resolve(did, now=T0)
    assert (r.document, r.from_cache, r.source) == (v1, False, url)
    assert https_site.seen() == [path]

    # Within the ttl: from the cache, the server is not asked.
    publish(https_site, did, v2)  # the controller rotates the key
    r = res.resolve(did, now=T0 + TTL - 1)
    assert (r.document, r.from_cache, r.stale, r.retrieved_at) == (v1, True, False, T0)
    assert https_site.seen() == [path]

    # Past the ttl: fetched again, and the new document replaces the old one.
    t1 = T0 + TTL
    r = res.resolve(did, now=t1)
    assert (r.document, r.from_cache, r.stale, r.retrieved_at) == (v2, False, False, t1)
    assert https_site.seen() == [path, path]

    # The site goes away for real.
    https_site.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", https_site.port), timeout=TIMEOUT).close()

    # Past the ttl, within max_stale: the cached copy, marked stale.
    r = res.resolve(did, now=t1 + TTL + 1)
    assert (r.document, r.from_cache, r.stale, r.retrieved_at, r.source) == (
        v2,
        True,
        True,
        t1,
        url,
    )

    # The gateway restarts during the outage (its database connection closed, a
    # new connection and a new resolver over the same file): the copy survived.
    first_db.close()
    restarted = resolver(cache=SqliteResolutionCache(open_db(db_path)), ca_file=pki.ca_file)
    r = restarted.resolve(did, now=t1 + TTL + 2)
    assert (r.document, r.from_cache, r.stale, r.retrieved_at, r.source) == (
        v2,
        True,
        True,
        t1,
        url,
    )
    r = restarted.resolve(did, now=t1 + MAX_STALE - 1)
    assert (r.document, r.from_cache, r.stale) == (v2, True, True)
    token = sign_jws(b"reading", Signer(second_key, kid=f"{did}#key-1"))
    verified = verify_jws(token, resolver=restarted, relationship="assertionMethod", now=t1 + 300)
    assert verified.signer.resolution.stale is True

    # Beyond max_stale: fail closed.
    with pytest.raises(Unreachable, match="failing closed") as info:
        restarted.resolve(did, now=t1 + MAX_STALE + 1)
    assert f"cached copy is {MAX_STALE + 1:.0f} s old" in str(info.value)
    with pytest.raises(SignatureError, match="failing closed"):
        verify_jws(
            token, resolver=restarted, relationship="assertionMethod", now=t1 + 2 * MAX_STALE
        )


# ------------------------------------------------------------ 5. a definitive "no"


@pytest.mark.parametrize("status", [404, 410])
def test_not_found_drops_the_cached_document(
    https_site: Site, pki: Pki, db_path: Path, open_db: Callable[[Path], Database], status: int
) -> None:
    did = web_did(https_site, "users", "bob")
    path = publish(https_site, did, did_document(did, generate_key()))
    cache = SqliteResolutionCache(open_db(db_path))
    res = resolver(cache=cache, ca_file=pki.ca_file)
    res.resolve(did, now=T0)
    assert cache.get(did) is not None

    https_site.routes[path] = Reply(status, b"gone\n")
    with pytest.raises(NotFound, match=str(status)):
        res.resolve(did, now=T0 + TTL + 1)
    assert cache.get(did) is None
    assert SqliteResolutionCache(open_db(db_path)).get(did) is None  # gone from the file

    # With the server down there is nothing left to fall back on.
    https_site.stop()
    with pytest.raises(Unreachable, match="nothing cached"):
        res.resolve(did, now=T0 + TTL + 2)
    assert https_site.seen() == [path, path]


# ------------------------------------------------------- 6. bad answers refused


def test_document_naming_another_did_is_refused(https_site: Site, pki: Pki) -> None:
    did = web_did(https_site, "users", "alice")
    impostor = did_document(web_did(https_site, "users", "mallory"), generate_key())
    publish(https_site, did, impostor)
    cache = MemoryCache()

    with pytest.raises(ResolutionError, match="names itself") as info:
        resolver(cache=cache, ca_file=pki.ca_file).resolve(did, now=T0)

    assert "users:mallory" in str(info.value)
    assert not isinstance(info.value, Unreachable | NotFound)
    assert cache.get(did) is None


@pytest.mark.parametrize("body", [b"<html>hello</html>", b"\xff\xfe not utf-8", b"[1, 2]"])
def test_document_that_is_not_a_json_object_is_refused(
    https_site: Site, pki: Pki, body: bytes
) -> None:
    did = web_did(https_site)
    https_site.routes["/.well-known/did.json"] = Reply(200, body)
    cache = MemoryCache()

    with pytest.raises(ResolutionError, match=r"is not (JSON|a JSON object)"):
        resolver(cache=cache, ca_file=pki.ca_file).resolve(did, now=T0)
    assert cache.get(did) is None


def _padded(document: dict[str, Any], size: int) -> bytes:
    """``document`` as JSON of exactly ``size`` bytes (padded in an extension property)."""
    base = json.dumps({**document, "padding": ""}).encode()
    body = json.dumps({**document, "padding": "x" * (size - len(base))}).encode()
    assert len(body) == size
    return body


def test_document_larger_than_max_bytes_is_refused(https_site: Site, pki: Pki) -> None:
    limit = 2048
    small, big = web_did(https_site, "small"), web_did(https_site, "big")
    https_site.routes["/small/did.json"] = Reply(
        200, _padded(did_document(small, generate_key()), limit)
    )
    https_site.routes["/big/did.json"] = Reply(
        200, _padded(did_document(big, generate_key()), limit + 1)
    )
    cache = MemoryCache()
    res = resolver(cache=cache, ca_file=pki.ca_file, max_bytes=limit)

    assert res.resolve(small, now=T0).document["id"] == small  # exactly the limit: fine
    with pytest.raises(ResolutionError, match=f"larger than {limit} bytes"):
        res.resolve(big, now=T0)
    assert cache.get(big) is None


def test_redirect_is_not_followed(https_site: Site, pki: Pki) -> None:
    did = web_did(https_site, "users", "alice")
    https_site.routes["/users/alice/did.json"] = Reply(
        302, b"", {"Location": "/elsewhere/did.json"}
    )
    https_site.routes["/elsewhere/did.json"] = json_reply(did_document(did, generate_key()))
    cache = MemoryCache()

    kind, message = failure(lambda: resolver(cache=cache, ca_file=pki.ca_file).resolve(did, now=T0))

    assert kind is ResolutionError  # a refusal: neither "offline" nor "no such DID"
    assert "answered 302 Found" in message
    assert https_site.seen() == ["/users/alice/did.json"]  # never went to /elsewhere
    assert cache.get(did) is None


def _open_sockets() -> set[str]:
    """This process's open sockets, as ``socket:[inode]`` (Linux: /proc/self/fd)."""
    sockets = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # the directory handle listdir itself used
            continue
        if target.startswith("socket:"):
            sockets.add(target)
    return sockets


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_error_answer_does_not_hold_the_connection_open(
    start_site: Callable[..., Site],
) -> None:
    fetch = make_fetch(timeout=TIMEOUT, max_bytes=MAX_BYTES)
    warm = start_site(None)  # the first request of a process may open lasting fds
    warm.routes["/ok"] = Reply(200, b"{}")
    fetch(f"http://127.0.0.1:{warm.port}/ok")
    warm.stop()
    before = _open_sockets()
    site = start_site(None)
    site.routes["/gone/did.json"] = Reply(404, b"gone\n")

    with pytest.raises(NotFound) as info:  # the error is kept, as a caller or log might
        fetch(f"http://127.0.0.1:{site.port}/gone/did.json")
    site.stop()  # every server-side socket is closed now
    held = _open_sockets() - before

    with warnings.catch_warnings():  # release it here, not in some later test's GC
        warnings.simplefilter("ignore", ResourceWarning)
        del info
        gc.collect()
    assert held == set(), "a socket is still open after the 404 was handled"


def test_the_trust_store_is_loaded_for_https_only_once_and_a_bad_one_fails_closed(
    start_site: Callable[..., Site], https_site: Site, pki: Pki, tmp_path: Path
) -> None:
    """No fetcher loads a trust store until it fetches over HTTPS; then every fetcher of
    the process shares one per ca_file. A ca_file that cannot be loaded refuses each HTTPS
    fetch, saying which file and why, and plain HTTP to loopback is unaffected."""
    https_site.routes["/did.json"] = Reply(200, b"{}")
    first = make_fetch(timeout=TIMEOUT, max_bytes=MAX_BYTES, ca_file=str(pki.ca_file))
    second = make_fetch(timeout=TIMEOUT, max_bytes=MAX_BYTES, ca_file=str(pki.ca_file))
    assert first(f"https://localhost:{https_site.port}/did.json") == b"{}"
    assert second(f"https://localhost:{https_site.port}/did.json") == b"{}"
    assert tls_context(str(pki.ca_file)) is tls_context(str(pki.ca_file))

    garbage = tmp_path / "not-a-ca.pem"
    garbage.write_text(
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    )
    fetch = make_fetch(timeout=TIMEOUT, max_bytes=MAX_BYTES, ca_file=str(garbage))  # lazily
    kind, message = failure(lambda: fetch(f"https://localhost:{https_site.port}/did.json"))
    assert kind is ResolutionError  # a refusal, not an outage: no cached copy is served
    assert f"[resolver] ca_file {garbage}: cannot load it" in message
    assert len(https_site.seen()) == 2  # the refused fetch asked for nothing
    plain = start_site(None)
    plain.routes["/did.json"] = Reply(200, b"[]")
    assert fetch(f"http://127.0.0.1:{plain.port}/did.json") == b"[]"


def test_a_ca_file_that_does_not_load_is_refused_with_the_configuration(
    pki: Pki, tmp_path: Path
) -> None:
    """The configuration loads ``[resolver] ca_file`` alone when it is read (at start and at
    each SIGHUP), so a file that is not PEM certificates stops ``didgw run`` with its name
    before anything runs, rather than refusing every did:web fetch later."""
    assert parse_config({"resolver": {"ca_file": str(pki.ca_file)}}, source="t").resolver.ca_file
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"\[resolver\] ca_file: not a PEM file of CA certif"):
        parse_config({"resolver": {"ca_file": str(garbage)}}, source="t")


def test_an_answer_dripped_a_byte_at_a_time_is_cut_off_at_the_deadline(pki: Pki) -> None:
    """The timeout bounds the whole fetch, not each read: every byte of this answer comes
    within a quarter of a second, the whole of it would take about half a minute."""
    tarpit = Tarpit(pki, json.dumps({"id": "did:web:localhost"}).encode(), interval=0.25)
    fetch = make_fetch(timeout=1.0, max_bytes=MAX_BYTES, ca_file=str(pki.ca_file))
    try:
        kind, message = failure(lambda: fetch(f"https://localhost:{tarpit.port}/did.json"))
    finally:
        tarpit.stop()
    assert kind is Unreachable  # an outage (the cache may serve), not a refusal
    assert "no complete answer within 1 s" in message
    assert tarpit.connections == 1


@pytest.mark.parametrize("status", [500, 503])
def test_server_error_is_unreachable_and_falls_back_to_the_cache(
    https_site: Site, pki: Pki, status: int
) -> None:
    did = web_did(https_site)
    document = did_document(did, generate_key())
    cache = MemoryCache()
    res = resolver(cache=cache, ca_file=pki.ca_file)

    # Nothing cached yet: a server error fails closed.
    https_site.routes["/.well-known/did.json"] = Reply(status, b"oops\n")
    with pytest.raises(Unreachable, match=f"answered {status}.*nothing cached.*failing closed"):
        res.resolve(did, now=T0)

    # Once a copy is cached, a server error past the ttl serves it, stale.
    publish(https_site, did, document)
    assert res.resolve(did, now=T0 + 1).from_cache is False
    https_site.routes["/.well-known/did.json"] = Reply(status, b"oops\n")
    r = res.resolve(did, now=T0 + 1 + TTL)
    assert (r.document, r.from_cache, r.stale, r.retrieved_at) == (document, True, True, T0 + 1)
    assert len(https_site.seen()) == 3


# ------------------------------------------------------- 7. universal resolver


def resolution_result(
    document: dict[str, Any] | None,
    *,
    error: str | None = None,
    deactivated: bool | None = None,
) -> dict[str, Any]:
    resolution_metadata: dict[str, Any] = {"contentType": "application/did+ld+json"}
    if error:
        resolution_metadata["error"] = error
    document_metadata: dict[str, Any] = {}
    if deactivated is not None:
        document_metadata["deactivated"] = deactivated
    return {
        "@context": "https://w3id.org/did-resolution/v1",
        "didDocument": document,
        "didResolutionMetadata": resolution_metadata,
        "didDocumentMetadata": document_metadata,
    }


EXAMPLE_DID = "did:example:123"
EXAMPLE_PATH = "/1.0/identifiers/did:example:123"


def test_universal_resolver_resolves_other_methods(http_site: Site) -> None:
    key = generate_key()
    document = did_document(EXAMPLE_DID, key)
    http_site.routes[EXAMPLE_PATH] = json_reply(resolution_result(document))
    base = f"http://127.0.0.1:{http_site.port}"
    res = resolver(universal_resolver=base)

    resolution = res.resolve(EXAMPLE_DID, now=T0)

    assert resolution.document == document
    assert resolution.source == base + EXAMPLE_PATH
    assert resolution.from_cache is False
    assert http_site.seen() == [EXAMPLE_PATH]
    token = sign_jws(b"hello", Signer(key, kid=f"{EXAMPLE_DID}#key-1"))
    verified = verify_jws(token, resolver=res, relationship="authentication", now=T0 + 1)
    assert verified.payload == b"hello"
    assert http_site.seen() == [EXAMPLE_PATH]  # the JWS check used the cached document


def test_universal_resolver_bare_document_answer(http_site: Site) -> None:
    document = did_document(EXAMPLE_DID, generate_key())
    http_site.routes[EXAMPLE_PATH] = json_reply(document)  # content negotiation: just the doc

    resolution = resolver(universal_resolver=f"http://127.0.0.1:{http_site.port}/").resolve(
        EXAMPLE_DID, now=T0
    )

    assert resolution.document == document
    assert http_site.seen() == [EXAMPLE_PATH]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (resolution_result(None, error="notFound"), "could not resolve did:example:123: notFound"),
        (resolution_result({"id": EXAMPLE_DID}, deactivated=True), "is deactivated"),
    ],
    ids=["notFound", "deactivated"],
)
def test_universal_resolver_definitive_no(
    http_site: Site, answer: dict[str, Any], message: str
) -> None:
    document = did_document(EXAMPLE_DID, generate_key())
    http_site.routes[EXAMPLE_PATH] = json_reply(resolution_result(document))
    cache = MemoryCache()
    res = resolver(cache=cache, universal_resolver=f"http://127.0.0.1:{http_site.port}")
    res.resolve(EXAMPLE_DID, now=T0)
    assert cache.get(EXAMPLE_DID) is not None

    http_site.routes[EXAMPLE_PATH] = json_reply(answer)
    with pytest.raises(NotFound, match=message):
        res.resolve(EXAMPLE_DID, now=T0 + TTL)

    assert cache.get(EXAMPLE_DID) is None  # a definitive "no" drops the cached copy
    assert http_site.seen() == [EXAMPLE_PATH, EXAMPLE_PATH]


def test_universal_resolver_document_for_another_did_is_refused(http_site: Site) -> None:
    other = did_document("did:example:456", generate_key())
    http_site.routes[EXAMPLE_PATH] = json_reply(resolution_result(other))

    with pytest.raises(ResolutionError, match="names itself 'did:example:456'"):
        resolver(universal_resolver=f"http://127.0.0.1:{http_site.port}").resolve(
            EXAMPLE_DID, now=T0
        )


def test_other_methods_unsupported_without_universal_resolver(http_site: Site, pki: Pki) -> None:
    res = resolver(ca_file=pki.ca_file)
    with pytest.raises(ResolutionError, match="method did:example is not supported") as info:
        res.resolve(EXAMPLE_DID, now=T0)
    assert not isinstance(info.value, Unreachable | NotFound)

    no_web = resolver(did_web=False)
    with pytest.raises(ResolutionError, match=r"did:web is disabled in \[resolver\]"):
        no_web.resolve(web_did(http_site), now=T0)
    assert http_site.seen() == []
    assert http_site.tls_hellos == 0  # refused before any network traffic


# ------------------------------------------------------------ 8. build_resolver


def test_build_resolver_wires_the_resolver_section(
    https_site: Site,
    http_site: Site,
    pki: Pki,
    db_path: Path,
    open_db: Callable[[Path], Database],
) -> None:
    web = web_did(https_site, "gateways", "hall-b")
    web_doc = did_document(web, generate_key(), "JsonWebKey2020")
    publish(https_site, web, web_doc)
    example_key = generate_key()
    http_site.routes[EXAMPLE_PATH] = json_reply(
        resolution_result(did_document(EXAMPLE_DID, example_key))
    )
    config = Config(
        resolver=ResolverSection(
            universal_resolver=f"http://127.0.0.1:{http_site.port}",
            timeout=TIMEOUT,
            max_document_bytes=4096,
            cache_ttl=TTL,
            cache_max_stale=MAX_STALE,
            ca_file=str(pki.ca_file),
            allow_http_localhost=False,
        )
    )
    res = build_resolver(config, SqliteResolutionCache(open_db(db_path)))

    # ca_file: the test CA is trusted.
    r = res.resolve(web, now=T0)
    assert (r.document, r.source, r.from_cache) == (
        web_doc,
        f"https://localhost:{https_site.port}/gateways/hall-b/did.json",
        False,
    )
    # cache_ttl and the SQLite cache.
    assert res.resolve(web, now=T0 + TTL - 1).from_cache is True
    assert len(https_site.seen()) == 1
    # universal_resolver.
    token = sign_jws(b"payload", Signer(example_key, kid=f"{EXAMPLE_DID}#key-1"))
    verified = verify_jws(token, resolver=res, relationship="assertionMethod", now=T0)
    assert verified.signer.resolution.source == f"http://127.0.0.1:{http_site.port}{EXAMPLE_PATH}"
    # cache_max_stale.
    https_site.stop()
    assert res.resolve(web, now=T0 + MAX_STALE - 1).stale is True
    with pytest.raises(Unreachable, match="limit 600 s"):
        res.resolve(web, now=T0 + MAX_STALE + 1)
    # max_document_bytes.
    http_site.routes[EXAMPLE_PATH] = Reply(200, _padded(resolution_result(None), 4097))
    with pytest.raises(ResolutionError, match="larger than 4096 bytes"):
        res.resolve(EXAMPLE_DID, now=T0 + TTL)

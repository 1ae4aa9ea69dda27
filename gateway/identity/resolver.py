"""DID resolution with a freshness policy that fails closed.

``did:key`` is computed locally. ``did:web`` and, through a DIF Universal
Resolver, any other method are fetched; a fetched document is cached. The policy
(:class:`Freshness`):

* younger than ``ttl``: served from the cache without asking;
* older: fetched again; if the source is *unreachable*, the cached copy is still
  served while it is younger than ``max_stale`` (marked ``stale``), so a device
  keeps working through a network outage;
* past ``max_stale``, or when the source answers that the DID does not exist or
  is deactivated: resolution fails. A definitive "no" also drops the cache.

Fetching is injected (a :data:`Fetch` callable), so this module does no I/O.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import ResolutionError
from gateway.identity import did_web
from gateway.identity.did_key import resolve_did_key
from gateway.identity.document import check_did_syntax


class Unreachable(ResolutionError):
    """The source could not be asked (network down, timeout, 5xx): cache may be used."""

    code = "unreachable"


class NotFound(ResolutionError):
    """The source answered: no such DID (404/410, or deactivated). Fail closed."""

    code = "not_found"


#: Fetch a URL and return the body; raise :class:`Unreachable` or :class:`NotFound`.
Fetch = Callable[[str], bytes]


@dataclass(frozen=True)
class Resolution:
    """A resolved DID document and where it came from."""

    did: str
    document: dict[str, Any]
    source: str  # "did:key", a URL
    retrieved_at: float  # when the document was obtained from its source (unix time)
    from_cache: bool = False
    stale: bool = False  # served past its ttl because the source was unreachable

    def metadata(self) -> dict[str, Any]:
        """DID resolution metadata, as ``didgw did resolve --json`` prints it."""
        return {
            "contentType": "application/did+json",
            "source": self.source,
            "retrieved": self.retrieved_at,
            "fromCache": self.from_cache,
            "stale": self.stale,
        }


class Resolver(Protocol):
    """Anything that turns a DID into a :class:`Resolution` at time ``now``."""

    def resolve(self, did: str, *, now: float) -> Resolution: ...


class ResolutionCache(Protocol):
    """Where fetched documents are kept between resolutions (SQLite in the gateway)."""

    def get(self, did: str) -> tuple[dict[str, Any], str, float] | None: ...
    def put(self, did: str, document: dict[str, Any], source: str, retrieved_at: float) -> None: ...
    def drop(self, did: str) -> None: ...


class MemoryCache:
    """A :class:`ResolutionCache` in a dict, for commands that run without a gateway state."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[dict[str, Any], str, float]] = {}

    def get(self, did: str) -> tuple[dict[str, Any], str, float] | None:
        return self._items.get(did)

    def put(self, did: str, document: dict[str, Any], source: str, retrieved_at: float) -> None:
        self._items[did] = (document, source, retrieved_at)

    def drop(self, did: str) -> None:
        self._items.pop(did, None)


@dataclass(frozen=True)
class Freshness:
    """How long a fetched document is trusted: see the module docstring."""

    ttl: float = 3600.0
    max_stale: float = 86400.0


def universal_resolver_url(base: str, did: str) -> str:
    """``GET {base}/1.0/identifiers/{did}``: the DIF Universal Resolver HTTP API."""
    return f"{base.rstrip('/')}/1.0/identifiers/{urllib.parse.quote(did, safe=':')}"


def parse_universal_result(did: str, body: bytes) -> dict[str, Any]:
    """Take the DID document out of a universal resolver answer.

    The resolver answers with a DID resolution result (``didDocument`` plus
    metadata) or, depending on content negotiation, the bare document.
    """
    answer = did_web.json_object(body, f"universal resolver answer for {did}")
    if "didDocument" not in answer and "didResolutionMetadata" not in answer:
        return did_web.check_document(did, answer)  # a bare document
    resolution_meta = answer.get("didResolutionMetadata")
    document_meta = answer.get("didDocumentMetadata")
    if isinstance(resolution_meta, dict) and resolution_meta.get("error"):
        raise NotFound(f"universal resolver could not resolve {did}: {resolution_meta['error']}")
    if isinstance(document_meta, dict) and document_meta.get("deactivated") is True:
        raise NotFound(f"{did} is deactivated")
    return did_web.check_document(did, answer.get("didDocument"))


class DidResolver:
    """The gateway's resolver: did:key locally, did:web and the rest fetched and cached."""

    def __init__(
        self,
        *,
        fetch: Fetch | None,
        cache: ResolutionCache,
        freshness: Freshness,
        did_web: bool = True,
        universal_resolver: str = "",
        allow_http_localhost: bool = False,
    ) -> None:
        self._fetch = fetch
        self._cache = cache
        self._freshness = freshness
        self._did_web = did_web
        self._universal = universal_resolver
        self._allow_http_localhost = allow_http_localhost

    def resolve(self, did: str, *, now: float) -> Resolution:
        method = check_did_syntax(did)
        if method == "key":
            return Resolution(did, resolve_did_key(did), "did:key", now)
        url, parse = self._route(did, method)
        cached = self._cache.get(did)
        if cached is not None and now - cached[2] < self._freshness.ttl:
            return Resolution(did, cached[0], cached[1], cached[2], from_cache=True)
        try:
            document = parse(did, self._fetch_url(url))
        except NotFound:
            self._cache.drop(did)
            raise
        except Unreachable as exc:
            if cached is not None and now - cached[2] < self._freshness.max_stale:
                return Resolution(did, cached[0], cached[1], cached[2], from_cache=True, stale=True)
            age = (
                "nothing cached"
                if cached is None
                else f"cached copy is {now - cached[2]:.0f} s old"
            )
            raise Unreachable(
                f"cannot resolve {did}: {exc} ({age}; "
                f"limit {self._freshness.max_stale:.0f} s) — failing closed"
            ) from None
        self._cache.put(did, document, url, now)
        return Resolution(did, document, url, now)

    def _route(self, did: str, method: str) -> tuple[str, Callable[[str, bytes], dict[str, Any]]]:
        if method == "web" and self._did_web:
            url = did_web.document_url(did, allow_http_localhost=self._allow_http_localhost)
            return url, did_web.parse_document
        if self._universal:
            return universal_resolver_url(self._universal, did), parse_universal_result
        hint = "" if method != "web" else " (did:web is disabled in [resolver])"
        raise ResolutionError(
            f"cannot resolve {did}: method did:{method} is not supported here{hint}; "
            "didgw resolves did:key, did:web, and other methods through "
            "resolver.universal_resolver when one is configured"
        )

    def _fetch_url(self, url: str) -> bytes:
        if self._fetch is None:
            raise Unreachable("network resolution is not available in this process")
        return self._fetch(url)


def offline_resolver() -> DidResolver:
    """A resolver for did:key only: no network, nothing kept (tests, offline tools)."""
    return DidResolver(fetch=None, cache=MemoryCache(), freshness=Freshness(), did_web=False)

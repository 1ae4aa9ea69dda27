"""HTTP(S) GET for DID resolution (did:web documents, universal resolver answers).

Standard library only (``urllib``): one GET with a timeout and a size cap is all
resolution needs. It maps failures onto the resolver's two outcomes: the source
said no (:class:`NotFound`) or could not be asked (:class:`Unreachable`).
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.parse
import urllib.request

from gateway.errors import ResolutionError
from gateway.identity.did_web import LOCAL_HOSTS
from gateway.identity.resolver import Fetch, NotFound, Unreachable

ACCEPT = (
    "application/did+json, application/did+ld+json, application/ld+json;"
    'profile="https://w3id.org/did-resolution";q=0.9, application/json;q=0.8'
)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are refused: a did:web document must be at its own URL."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def make_fetch(*, timeout: float, max_bytes: int, ca_file: str = "") -> Fetch:
    """A :data:`Fetch` that does HTTPS (HTTP only to a loopback host) with limits."""
    context = ssl.create_default_context(cafile=ca_file or None)
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context), _NoRedirect()
    )

    def fetch(url: str) -> bytes:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" and not (parts.scheme == "http" and _host(parts) in LOCAL_HOSTS):
            raise ResolutionError(f"refusing {url}: only https (or http to loopback) is allowed")
        request = urllib.request.Request(url, headers={"Accept": ACCEPT})  # noqa: S310
        try:
            with opener.open(request, timeout=timeout) as response:
                body: bytes = response.read(max_bytes + 1)
        except urllib.error.HTTPError as exc:
            exc.close()  # the error holds the response: release the connection now
            if exc.code in (404, 410):
                raise NotFound(f"{url} answered {exc.code} {exc.reason}") from None
            if exc.code >= 500 or exc.code == 429:
                raise Unreachable(f"{url} answered {exc.code} {exc.reason}") from None
            raise ResolutionError(f"{url} answered {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            # A certificate that does not verify is a refusal, not an outage: serving
            # a cached copy would hide an impersonation attempt.
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                reason = exc.reason.verify_message
                raise ResolutionError(f"{url}: TLS certificate not trusted: {reason}") from None
            raise Unreachable(f"{url} is unreachable: {exc.reason}") from None
        except OSError as exc:  # TimeoutError and resets while reading the body
            raise Unreachable(f"{url} is unreachable: {exc}") from None
        if len(body) > max_bytes:
            raise ResolutionError(f"{url}: document larger than {max_bytes} bytes")
        return body

    return fetch


def _host(parts: urllib.parse.SplitResult) -> str:
    host = parts.hostname or ""
    return f"[{host}]" if ":" in host else host

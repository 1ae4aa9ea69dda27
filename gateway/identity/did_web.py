"""``did:web``: where a DID's document lives, and whether what came back is that document.

Sans-IO: :func:`document_url` says what to fetch, :func:`parse_document` checks the
bytes that came back. Fetching is the caller's (see ``transports/http.py``).
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from gateway.errors import DidError, ResolutionError

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


def document_url(did: str, *, allow_http_localhost: bool = False) -> str:
    """The HTTPS URL of a did:web document (did:web spec, "Read (Resolve)").

    ``did:web:example.com`` → ``https://example.com/.well-known/did.json``;
    ``did:web:example.com:user:alice`` → ``https://example.com/user/alice/did.json``;
    a port is percent-encoded: ``did:web:localhost%3A8443``. Plain HTTP is used
    only for a loopback host and only when ``allow_http_localhost`` (tests, demos).
    """
    prefix = "did:web:"
    if not did.startswith(prefix) or len(did) == len(prefix):
        raise DidError(f"{did!r} is not a did:web")
    parts = did[len(prefix) :].split(":")
    if any(not p for p in parts):
        raise DidError(f"{did!r}: empty path segment")
    host = urllib.parse.unquote(parts[0])
    hostname = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    if "/" in host or "@" in host or any(c.isspace() for c in host):
        raise DidError(f"{did!r}: {host!r} is not a host name")
    for segment in parts[1:]:
        if segment in {".", ".."} or "/" in urllib.parse.unquote(segment):
            raise DidError(f"{did!r}: path segment {segment!r} is not allowed")
    path = "/".join(parts[1:]) + "/did.json" if len(parts) > 1 else ".well-known/did.json"
    scheme = "http" if allow_http_localhost and hostname in LOCAL_HOSTS else "https"
    return f"{scheme}://{host}/{path}"


def json_object(body: bytes, what: str) -> dict[str, Any]:
    """Parse an answer that must be a JSON object; ``what`` names it in the error."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResolutionError(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ResolutionError(f"{what} is not a JSON object")
    return value


def parse_document(did: str, body: bytes) -> dict[str, Any]:
    """Parse a fetched DID document and check that it is the document of ``did``."""
    return check_document(did, json_object(body, f"document for {did}"))


def check_document(did: str, document: Any) -> dict[str, Any]:
    """``document`` if it is a JSON object naming itself ``did``; refuse anything else."""
    if not isinstance(document, dict):
        raise ResolutionError(f"document for {did} is not a JSON object")
    if document.get("id") != did:
        raise ResolutionError(
            f"document fetched for {did} names itself {document.get('id')!r}; refusing it"
        )
    return document

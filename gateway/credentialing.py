"""Wiring for credentials: the gateway's issuer and status lists, built from its config.

The core (``gateway/credentials/``) takes a database, a resolver, time and randomness;
this module hands it the gateway's own (and the network fetch for other issuers' status
lists), for the CLI and for ``didgw run``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.config import Config
from gateway.credentials.issuer import CredentialIssuer
from gateway.credentials.status_source import StatusLists
from gateway.errors import CredentialError
from gateway.identity.resolver import Freshness, Resolver
from gateway.service import Gateway

MAX_FILE_BYTES = 64 * 1024


def issuer_for(gateway: Gateway) -> CredentialIssuer:
    c = gateway.config.credentials
    return CredentialIssuer(
        gateway.db,
        gateway_did=gateway.did,
        list_url=c.status_list_url,
        validity_seconds=c.validity_days * 86400,
        status_valid_seconds=c.status_valid_seconds,
    )


def status_lists_for(gateway: Gateway, issuer: CredentialIssuer) -> StatusLists:
    """Our own list from the database; others' fetched, under the resolver's freshness."""
    return status_lists(gateway.config, gateway.resolver, issuer)


def status_lists(config: Config, resolver: Resolver, issuer: CredentialIssuer) -> StatusLists:
    """:func:`status_lists_for` with a resolver of the caller's (one per thread)."""
    from gateway.transports.http import make_fetch

    r = config.resolver
    return StatusLists(
        resolver=resolver,
        freshness=Freshness(ttl=r.cache_ttl, max_stale=r.cache_max_stale),
        local=issuer.local_list,
        fetch=make_fetch(timeout=r.timeout, max_bytes=1 << 20, ca_file=r.ca_file),
    )


def read_credential_file(path: Path) -> tuple[str, Any]:
    """("vc", the JSON) or ("sd-jwt", the text) from a file; refuse anything else."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CredentialError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise CredentialError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CredentialError(f"{path} is not UTF-8 text") from None
    if text.startswith("{"):
        try:
            return "vc", json.loads(text)
        except ValueError as exc:
            raise CredentialError(f"{path} is not valid JSON: {exc}") from None
    if "~" in text:
        return "sd-jwt", text
    raise CredentialError(f"{path} holds neither a JSON credential nor an SD-JWT")

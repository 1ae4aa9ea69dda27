"""Where status lists come from, and how long a copy is trusted (fail closed when stale).

The gateway's own list is read from its database (always current). A list of another
issuer is fetched by URL (the injected ``fetch`` of DID resolution) and kept with the
time it was obtained, under the same :class:`~gateway.identity.resolver.Freshness` as
DID documents: younger than ``ttl`` it is used as is; older it is fetched again; if the
source is unreachable the copy is still used until ``max_stale``, then every check that
needs it fails closed. A list is also refused past its own ``validUntil``, and one whose
proofs name a key of anyone but its issuer is refused before that key is resolved.

A list is fetched from the URL a credential names, so only for credentials whose issuer
the caller already trusts (``verify_presentation(trusted_issuers=…)``): the issuer signed
that URL, and the list must be signed by the issuer too.

Suspension is the gateway's own and is not published (docs/formats.md): it is answered
for the gateway's own credentials only, from its database (``local_suspended``); another
issuer's credential is never taken as suspended here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gateway.credentials import status_list
from gateway.credentials.data_integrity import parse_datetime, verify_proofs
from gateway.errors import CredentialError, DidgwError
from gateway.identity.resolver import Fetch, Freshness, Resolver, Unreachable

#: The gateway's own lists: URL → its bitstring, read from the database (None: not ours).
LocalLists = Callable[[str, str], bytes | None]
#: ``(url, issuer, index)`` → whether the gateway's own credential is suspended (None: not ours).
LocalSuspension = Callable[[str, str, int], bool | None]


class StatusLists:
    """Answers "is this credential revoked?" for a ``BitstringStatusListEntry``."""

    def __init__(
        self,
        *,
        resolver: Resolver,
        freshness: Freshness,
        local: LocalLists | None = None,
        local_suspended: LocalSuspension | None = None,
        fetch: Fetch | None = None,
    ) -> None:
        self._resolver = resolver
        self._freshness = freshness
        self._local = local
        self._local_suspended = local_suspended
        self._fetch = fetch
        self._cache: dict[str, tuple[bytes, float, str]] = {}  # url → bits, retrieved, issuer

    def revoked(self, entry: Any, *, issuer: str, now: float) -> bool:
        """True when the entry's bit is set; raises when the list cannot be trusted now."""
        if not isinstance(entry, dict):
            raise CredentialError("credentialStatus must be an object")
        url, index = status_list.entry_index(entry)
        return status_list.bit(self._bits(url, issuer, now), index)

    def suspended(self, entry: Any, *, issuer: str) -> bool:
        """True when the entry names one of the gateway's own credentials and it is
        suspended now (read from the database at every call)."""
        if not isinstance(entry, dict):
            raise CredentialError("credentialStatus must be an object")
        url, index = status_list.entry_index(entry)
        if self._local_suspended is None:
            return False
        return bool(self._local_suspended(url, issuer, index))

    def _bits(self, url: str, issuer: str, now: float) -> bytes:
        if self._local is not None:
            mine = self._local(url, issuer)
            if mine is not None:
                return mine
        cached = self._cache.get(url)
        if cached is not None and cached[2] == issuer and now - cached[1] < self._freshness.ttl:
            return cached[0]
        try:
            bits = self._fetch_list(url, issuer, now)
        except Unreachable as exc:
            if cached is not None and cached[2] == issuer:
                age = now - cached[1]
                if age < self._freshness.max_stale:
                    return cached[0]
                raise CredentialError(
                    f"status list {url} unreachable ({exc}) and the copy is {age:.0f} s old "
                    f"(limit {self._freshness.max_stale:.0f} s) — failing closed"
                ) from None
            raise CredentialError(
                f"status list {url} unreachable: {exc} — failing closed"
            ) from None
        self._cache[url] = (bits, now, issuer)
        return bits

    def _fetch_list(self, url: str, issuer: str, now: float) -> bytes:
        if self._fetch is None or not url.startswith(("https://", "http://")):
            raise Unreachable(f"no way to fetch {url} from here")
        try:
            credential = json.loads(self._fetch(url))
        except Unreachable:
            raise
        except (DidgwError, ValueError) as exc:
            raise CredentialError(f"status list {url}: {exc}") from None
        return checked_list(credential, url=url, issuer=issuer, resolver=self._resolver, now=now)


def checked_list(
    credential: Any, *, url: str, issuer: str, resolver: Resolver, now: float
) -> bytes:
    """Verify a status list credential (signature by its issuer, validity) and return its bits."""
    if not isinstance(credential, dict):
        raise CredentialError("the status list is not a JSON object")
    proof = credential.get("proof")
    for item in proof if isinstance(proof, list) else [proof]:
        method = item.get("verificationMethod") if isinstance(item, dict) else None
        if isinstance(method, str) and method.partition("#")[0] != issuer:
            # before resolving it: a list must not send the gateway to another host
            raise CredentialError("the status list is signed by someone other than its issuer")
    proofs = verify_proofs(credential, resolver=resolver, now=now)
    if any(p.controller != issuer for p in proofs):
        raise CredentialError("the status list is signed by someone other than its issuer")
    if "validUntil" in credential and parse_datetime(credential["validUntil"], "validUntil") <= now:
        raise CredentialError(f"the status list {url} is past its validUntil — failing closed")
    return status_list.list_bits(credential, issuer=issuer, list_url=url)

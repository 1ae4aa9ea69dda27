"""Who is who: keys, DIDs, DID documents, resolution and the signing recipes.

The public surface is re-exported here; callers use these names, not the
modules behind them. The bottom of the core: it imports only ``errors``; network fetching
comes in as a function (``transports/http.py`` makes it).
"""

from gateway.identity.did_key import DidKey, did_from_public_key, parse_did_key, resolve_did_key
from gateway.identity.resolver import DidResolver, Freshness, Resolution, Resolver, offline_resolver
from gateway.identity.signing import (
    Signer,
    VerifiedJws,
    VerifiedKey,
    resolve_key,
    sign_jws,
    verify_detached,
    verify_jws,
)

__all__ = [
    "DidKey",
    "DidResolver",
    "Freshness",
    "Resolution",
    "Resolver",
    "Signer",
    "VerifiedJws",
    "VerifiedKey",
    "did_from_public_key",
    "offline_resolver",
    "parse_did_key",
    "resolve_did_key",
    "resolve_key",
    "sign_jws",
    "verify_detached",
    "verify_jws",
]

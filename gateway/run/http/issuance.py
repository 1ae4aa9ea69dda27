"""OpenID4VCI 1.0 (pre-authorized code flow) over HTTP: thin handlers over
:mod:`gateway.credentials.oid4vci`.

Every endpoint here is reached without a session, so the edge's per-source rate limit
applies to all of them; the only state a stranger can make is a nonce, and the nonce
pool is bounded (a full pool answers 503, it forgets nothing). Errors are JSON
``{"error", "error_description"}`` with the status the specification names.
"""

from __future__ import annotations

import functools
import json
import secrets
from typing import Any

from gateway.credentials import oid4vci
from gateway.identity.signing import Signer
from gateway.run.http.server import HttpEdge
from gateway.service import build_issuer
from gateway.transports import web

MAX_FORM_FIELD_CHARS = 1024


def _json(body: Any, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        text=json.dumps(body), status=status, content_type="application/json", headers=headers
    )


def _error(exc: oid4vci.Oid4vciError) -> web.Response:
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = f'Bearer error="{exc.error}"'
    if exc.status == 503:
        headers["Retry-After"] = "60"
    return _json(exc.to_json(), exc.status, **headers)


def add_routes(edge: HttpEdge) -> None:
    """The well-known metadata, the offers, and the token, nonce and credential endpoints."""
    base = edge.base_url
    signer: list[Signer] = []

    def gateway_signer() -> Signer:  # read once, on first issuance (desk thread)
        if not signer:
            signer.append(edge.gateway.signer(edge.env))
        return signer[0]

    desk = oid4vci.Issuance(
        edge.db,
        build_issuer(edge.config, edge.db, edge.gateway.did),
        gateway_signer,
        base_url=base,
        random_bytes=secrets.token_bytes,
    )
    issuer_json = oid4vci.issuer_metadata(base)
    server_json = oid4vci.authorization_server_metadata(base)

    async def issuer_metadata(request: web.Request) -> web.Response:
        return _json(issuer_json)

    async def server_metadata(request: web.Request) -> web.Response:
        return _json(server_json)

    async def offer(request: web.Request) -> web.Response:
        work = functools.partial(desk.offer, request.match_info["id"], now=edge.clock())
        try:
            return _json(await edge.desk(work))
        except oid4vci.Oid4vciError as exc:
            return _error(exc)

    async def token(request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return _error(
                oid4vci.Oid4vciError(
                    "invalid_request", "the token request is a form (x-www-form-urlencoded)"
                )
            )
        form = await request.post()
        fields = {
            k: v for k, v in form.items() if isinstance(v, str) and len(v) <= MAX_FORM_FIELD_CHARS
        }
        try:
            answer = await edge.desk(functools.partial(desk.token, fields, now=edge.clock()))
        except oid4vci.Oid4vciError as exc:
            return _error(exc)
        return _json(answer, Pragma="no-cache")

    async def nonce(request: web.Request) -> web.Response:
        try:
            return _json(await edge.desk(functools.partial(desk.nonce, now=edge.clock())))
        except oid4vci.Oid4vciError as exc:
            return _error(exc)

    async def credential(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        scheme, _, bearer = auth.partition(" ")
        if scheme.lower() != "bearer" or not bearer.strip():
            return _error(
                oid4vci.Oid4vciError(
                    "invalid_token", "the credential request needs its Bearer access token", 401
                )
            )
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError, RecursionError):  # Recursion: deep nesting
            return _error(
                oid4vci.Oid4vciError("invalid_credential_request", "the body is not JSON")
            )
        work = functools.partial(desk.credential, bearer.strip(), body, now=edge.clock())
        try:
            return _json(await edge.desk(work))
        except oid4vci.Oid4vciError as exc:
            return _error(exc)

    edge.add(
        [
            web.get("/.well-known/openid-credential-issuer", issuer_metadata),
            web.get("/.well-known/oauth-authorization-server", server_metadata),
            web.get(oid4vci.OFFERS_PATH + "{id}", offer),
            web.post(oid4vci.TOKEN_PATH, token),
            web.post(oid4vci.NONCE_PATH, nonce),
            web.post(oid4vci.CREDENTIAL_PATH, credential),
        ]
    )

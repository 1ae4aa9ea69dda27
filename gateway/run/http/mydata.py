"""A person's own data and the proofs of her readings: ``/my-data`` and ``/proof``.

* ``GET /my-data``: what the gateway holds about her DID (counts), a download of all of it,
  and "ask for erasure" (``POST /my-data/erasure``) with the state of her latest request.
  ``GET /my-data/download``: all of it as a JSON file (``gateway.auth.personal_data``).
* ``GET /proof``: how to check a receipt without the gateway. ``GET /proof/receipt/{seq}``:
  the receipt (``gateway.anchor.receipt``) of a reading of one of her households' meters,
  an order, trade or statement of one of her households (or an entry of her own) as a
  file, or a page saying it is not anchored yet.
* JSON: ``GET /api/my-data``, ``POST /api/my-data/erasure``, ``GET /api/receipts/{seq}``.

Only a signed-in person has "my" data: an API token is refused (403), nobody 401. An entry
that is neither hers nor her meters' is answered as if it did not exist (404), so entry
numbers reveal nothing. The erasure request is idempotent (one pending entry per person);
the operator carries it out with ``didgw chain erase --actor DID``.
"""

from __future__ import annotations

import json
from typing import Any

from sqlite_utils import Database

from gateway.anchor.queue import AnchorQueue
from gateway.anchor.receipt import receipt_for
from gateway.auth import personal_data
from gateway.chain.store import ChainError, ChainStore
from gateway.energy.history import household_meters
from gateway.market.household_view import concerns
from gateway.run.http.api import error_response
from gateway.run.http.pages import render, words
from gateway.run.http.server import HttpEdge, Principal
from gateway.transports import web

MAX_SEQ = 2**62


class MyDataDesk:
    """The database side (desk thread only)."""

    def __init__(self, db: Database, gateway: str) -> None:
        self.db, self.gateway = db, gateway
        self.chain = ChainStore(db)

    def everything(self, did: str, now_ms: int) -> dict[str, Any]:
        self.chain.resync()  # the operator's commands append from another process
        return personal_data.everything_about(self.chain, self.db, did, now_ms=now_ms)

    def ask(self, did: str, now_ms: int) -> tuple[dict[str, Any], bool]:
        """Her request as JSON, and whether it was recorded now (not pending already)."""
        self.chain.resync()
        size = self.chain.size
        state = personal_data.ask_for_erasure(self.chain, self.db, did, now_ms=now_ms)
        return state.to_json(), state.request >= size

    def receipt(self, did: str, households: list[str], seq: int) -> dict[str, Any] | None:
        """The receipt of entry ``seq``; None when it is not hers to see (or not there).
        Raises :class:`ChainError` when it is not anchored yet."""
        self.chain.resync()
        if not 0 <= seq < self.chain.size:
            return None
        actor = self.chain.get(seq).actor
        mine = {did, *households} | {m for h in households for m in household_meters(self.db, h)}
        if actor not in mine and not concerns(self.db.conn, households, seq):
            return None
        row = self.db.conn.execute("SELECT value FROM meta WHERE key = 'ledger_binding'")
        binding = row.fetchone()
        return receipt_for(
            self.chain,
            AnchorQueue(self.db),
            gateway=self.gateway,
            binding=None if binding is None else str(binding[0]),
            seq=seq,
        )


def _person(request: web.Request) -> Principal | None:
    principal = HttpEdge.principal(request)
    return principal if principal is not None and principal.session is not None else None


def _api_refusal(request: web.Request) -> web.Response | None:
    principal = HttpEdge.principal(request)
    if principal is None:
        return error_response(
            401,
            "unauthenticated",
            "sign in: only a signed-in person has data of her own here",
            **{"WWW-Authenticate": 'Bearer realm="didgw"'},
        )
    if principal.session is None:
        return error_response(
            403, "forbidden", "an API token has no personal data; sign in as the person"
        )
    return None


def _seq(request: web.Request) -> int | None:
    text = request.match_info["seq"]
    if not text.isdigit() or len(text) > 19 or int(text) >= MAX_SEQ:
        return None
    return int(text)


class MyDataDoor:
    def __init__(self, edge: HttpEdge) -> None:
        self.edge = edge
        self.desk = MyDataDesk(edge.db, edge.gateway.did)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/my-data", self.page),
            web.get("/my-data/download", self.download),
            web.post("/my-data/erasure", self.erasure_form),
            web.get("/proof", self.proof),
            web.get("/proof/receipt/{seq}", self.receipt_page),
            web.get("/api/my-data", self.api_mine),
            web.post("/api/my-data/erasure", self.api_erasure),
            web.get("/api/receipts/{seq}", self.api_receipt),
        ]

    async def _everything(self, did: str) -> dict[str, Any]:
        return await self.edge.desk(self.desk.everything, did, self.edge.now_ms())

    # -- pages

    async def page(self, request: web.Request) -> web.StreamResponse:
        person = _person(request)
        if person is None:
            raise web.HTTPSeeOther("/login")
        data = await self._everything(person.name)
        kinds: dict[str, list[int]] = {}  # kind: [entries, of which erased]
        for e in data["record"]:
            counts = kinds.setdefault(e["kind"], [0, 0])
            counts[0] += 1
            counts[1] += e.get("payload") is None
        return render(
            request,
            "my_data.html",
            title="My data",
            did=person.name,
            kinds=sorted(kinds.items()),
            sessions=len(data["sessions"]),
            passkeys=len(data["passkeys"]),
            credentials=len(data["credentials"]),
            erasure=data["erasure"],
        )

    async def download(self, request: web.Request) -> web.StreamResponse:
        person = _person(request)
        if person is None:
            raise web.HTTPUnauthorized(text=words(request)("sign in first") + "\n")
        data = await self._everything(person.name)
        return web.Response(
            text=json.dumps(data, indent=2) + "\n",
            content_type="application/json",
            headers={"Content-Disposition": 'attachment; filename="my-data.json"'},
        )

    async def erasure_form(self, request: web.Request) -> web.StreamResponse:
        person = _person(request)
        if person is None:
            raise web.HTTPSeeOther("/login")
        await self.edge.desk(self.desk.ask, person.name, self.edge.now_ms())
        raise web.HTTPSeeOther("/my-data")

    async def proof(self, request: web.Request) -> web.StreamResponse:
        return render(request, "proof.html", title="Checking a receipt")

    async def _receipt(self, request: web.Request) -> tuple[dict[str, Any] | None, str | None, int]:
        """(receipt, why there is none, HTTP status)."""
        seq = _seq(request)
        person = _person(request)
        if seq is None or person is None:
            return None, None, 404
        households = sorted(person.permissions.households)
        try:
            receipt = await self.edge.desk(self.desk.receipt, person.name, households, seq)
        except ChainError as exc:
            return None, str(exc), 409
        return receipt, None, 200 if receipt is not None else 404

    async def receipt_page(self, request: web.Request) -> web.StreamResponse:
        if _person(request) is None:
            raise web.HTTPSeeOther("/login")
        receipt, why, status = await self._receipt(request)
        if receipt is not None:
            return _receipt_file(receipt)
        return render(
            request,
            "proof_pending.html",
            title="Receipt",
            status=status,
            seq=request.match_info["seq"][:20],
            anchored_later=why is not None,
        )

    # -- JSON

    async def api_mine(self, request: web.Request) -> web.Response:
        refused = _api_refusal(request)
        if refused is not None:
            return refused
        return web.json_response(await self._everything(HttpEdge.principal(request).name))  # type: ignore[union-attr]

    async def api_erasure(self, request: web.Request) -> web.Response:
        refused = _api_refusal(request)
        if refused is not None:
            return refused
        did = HttpEdge.principal(request).name  # type: ignore[union-attr]
        state, new = await self.edge.desk(self.desk.ask, did, self.edge.now_ms())
        return web.json_response(state, status=201 if new else 200)

    async def api_receipt(self, request: web.Request) -> web.Response:
        refused = _api_refusal(request)
        if refused is not None:
            return refused
        receipt, why, _ = await self._receipt(request)
        if receipt is not None:
            return _receipt_file(receipt)
        if why is not None:
            return error_response(409, "not_anchored", why)
        return error_response(404, "not_found", "no entry of yours or your meters by that number")


def _receipt_file(receipt: dict[str, Any]) -> web.Response:
    seq = receipt["entry"]["seq"]
    return web.Response(
        text=json.dumps(receipt, indent=2) + "\n",
        content_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="receipt-{seq}.json"'},
    )


def add_routes(edge: HttpEdge) -> None:
    edge.add(MyDataDoor(edge).routes())

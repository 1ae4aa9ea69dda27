"""The facility manager's People, Record and Health pages.

Same shape as the devices' console (:mod:`gateway.run.http.console`): server-rendered,
without script, reached only by a signed-in facility manager (anyone else gets the 403 page
that says why), data from the JSON API's desk (:class:`~gateway.run.http.api_desk.ApiDesk`),
every change a confirmation page whose form posts with the session's anti-CSRF token.

* People: a credential offer (OpenID4VCI, as ``didgw cred offer`` makes it: the QR code
  drawn by the browser, the PIN shown once) of the kinds in :data:`OFFERABLE`; the
  credentials this gateway issued (kind, subject, state, dates; never their
  claims), and suspend, resume or revoke one. The change goes through the issuer, which
  puts it on the record with who made it and why.
* Record: the entries newest first, by kind, a page each with its inclusion proof (a
  download) against the latest checkpoint; the anchors' state and lag.
* Health: what ``didgw status`` shows, and the running gateway's counts of readings
  accepted and refused and of device authentications granted and refused (with their
  rates per second), live: ``/console/health/live`` streams them (server-sent events,
  ``event: counts``, about once a second; :mod:`gateway.run.http.sse`), at most
  :data:`STREAMS_PER_SESSION` per session and :data:`MAX_STREAMS` in all, and
  ``static/health.js`` keeps the page's numbers current. Without script the page shows
  them as they were when it was loaded.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from gateway.credentials import oid4vci
from gateway.credentials.kinds import KINDS
from gateway.credentials.offers import CredentialOffers, NewOffer
from gateway.errors import DidgwError
from gateway.run.http.api import MAX_KIND, MAX_TEXT
from gateway.run.http.api_desk import ApiDesk, iso
from gateway.run.http.console import _manager, _short
from gateway.run.http.pages import render
from gateway.run.http.server import HttpEdge, Principal
from gateway.run.http.sse import Stream, StreamBook
from gateway.transports import web

PAGE_ENTRIES = 50
RECENT_ANCHORS = 10  # the anchors the Record page lists
CREDENTIAL_ACTIONS = ("suspend", "resume", "revoke")
#: What a facility manager may offer from her console. A facility-manager (or vouch)
#: credential stays with the operator (``didgw cred offer``): a stolen console session
#: must not mint more managers.
OFFERABLE = ("household", "device-owner")
#: The offer's lifetimes she chooses from, in seconds.
OFFER_LIFETIMES = {"10m": 600, "1h": 3600, "1d": 86400}
MAX_CLAIM_LINES = 8
MAX_CLAIMS_CHARS = 2048
#: Live health views: a manager may keep two open (two tabs), at most this many in all.
STREAMS_PER_SESSION = 2
MAX_STREAMS = 32
LIVE_EVERY_SECONDS = 1.0


class RecordDesk(ApiDesk):
    """The API's desk, plus the people (on the desk thread only)."""

    def people(self) -> list[dict[str, Any]]:
        """The issued credentials, newest first, without anything they claim."""
        records = sorted(self.issuer.records(), key=lambda r: r.issued_ms, reverse=True)
        return [
            {
                "id": r.id,
                "kind": r.type,
                "subject": r.subject,
                "state": r.state,
                "issued": _short(iso(r.issued_ms / 1000)),
                "expires": _short(iso(r.expires_ms / 1000)),
                "changed": _short(iso(max(r.revoked_ms or 0, r.suspended_ms or 0) / 1000))
                if (r.revoked_ms or r.suspended_ms)
                else None,
            }
            for r in records
        ]


def claims_from(text: str) -> dict[str, str]:
    """``key=value`` lines (blank lines skipped) as claims; a clear error otherwise."""
    if len(text) > MAX_CLAIMS_CHARS:
        raise ValueError(f"the claims take at most {MAX_CLAIMS_CHARS} characters")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > MAX_CLAIM_LINES:
        raise ValueError(f"at most {MAX_CLAIM_LINES} claims")
    claims: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"a claim is key=value, got {line[:40]!r}")
        if key in claims:
            raise ValueError(f"the claim {key} is given twice")
        claims[key] = value
    return claims


class ConsoleAdmin:
    """The People, Record and Health handlers."""

    def __init__(self, edge: HttpEdge) -> None:
        self.edge = edge
        self.desk = RecordDesk(edge.config, edge.db, edge.gateway.did)
        self.streams = StreamBook(
            edge, total=MAX_STREAMS, per_session=STREAMS_PER_SESSION, replace=False,
            tick=self._tick, name="health",
        )  # fmt: skip
        self._last: tuple[float, dict[str, Any]] | None = None  # the last counts pushed

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/console/people", self.people),
            web.post("/console/people/offer", self.offer),
            web.get("/console/people/{id}/{action}", self.confirm),
            web.post("/console/people/{id}/{action}", self.change),
            web.get("/console/record", self.record),
            web.get("/console/record/{seq}", self.entry),
            web.get("/console/record/{seq}/proof.json", self.proof),
            web.get("/console/anchors/{size}/checkpoint.txt", self.checkpoint),
            web.get("/console/anchors/{size}/consistency.json", self.consistency),
            web.get("/console/health", self.health),
            web.get("/console/health/live", self.live),
        ]

    # -- people

    async def people(self, request: web.Request) -> web.Response:
        if not isinstance(found := _manager(request), Principal):
            return found
        return await self._people(request)

    async def _people(
        self, request: web.Request, form: dict[str, str] | None = None, problem: str | None = None
    ) -> web.Response:
        rows = await self.edge.desk(self.desk.people)
        done = request.query.get("done")
        return render(
            request, "console_people.html", status=400 if problem else 200, title="People",
            rows=rows, done=done if done in CREDENTIAL_ACTIONS else None,
            kinds=[KINDS[k] for k in OFFERABLE], lifetimes=list(OFFER_LIFETIMES),
            form=form or {"kind": OFFERABLE[0], "claims": "", "expires": "1h"}, problem=problem,
        )  # fmt: skip

    async def offer(self, request: web.Request) -> web.Response:
        """A new single-use offer: its QR code and link, and its PIN, shown this once."""
        if not isinstance(found := _manager(request), Principal):
            return found
        posted = await request.post()
        form = {k: str(posted.get(k, "")) for k in ("kind", "claims", "expires")}
        if form["kind"] not in OFFERABLE or form["expires"] not in OFFER_LIFETIMES:
            return await self._people(request, form, "a kind and a lifetime from the lists")
        try:
            claims = claims_from(form["claims"])
            made: NewOffer = await self.edge.desk(
                self._create_offer, form["kind"], claims, OFFER_LIFETIMES[form["expires"]]
            )
        except (ValueError, DidgwError) as exc:
            return await self._people(request, form, str(exc))
        uri = oid4vci.offer_uri(self.edge.base_url, made.offer_id)
        answer = render(
            request, "console_offer.html", title="Credential offer", kind=made.kind, uri=uri,
            pin=made.pin, expires=_short(iso(made.expires_ms / 1000)),
        )  # fmt: skip
        answer.headers["Cache-Control"] = "no-store"
        return answer

    def _create_offer(self, kind: str, claims: dict[str, str], seconds: int) -> NewOffer:
        return CredentialOffers(self.edge.db).create(
            kind, claims, now_ms=self.edge.now_ms(), expires_seconds=seconds,
            random_bytes=secrets.token_bytes,
        )  # fmt: skip

    async def confirm(self, request: web.Request) -> web.Response:
        return await self._confirmation(request, "")

    async def _confirmation(
        self, request: web.Request, reason: str, problem: str | None = None, status: int = 200
    ) -> web.Response:
        if not isinstance(found := _manager(request), Principal):
            return found
        cred_id, action = request.match_info["id"], request.match_info["action"]
        if action not in CREDENTIAL_ACTIONS:
            raise web.HTTPNotFound()
        rows = await self.edge.desk(self.desk.people)
        shown = next((r for r in rows if r["id"] == cred_id), None)
        if shown is None:
            return render(request, "console_missing.html", status=404, title="No such device")
        return render(
            request, "console_person_confirm.html", status=status, title="Confirm",
            credential=shown, action=action, reason=reason, problem=problem,
        )  # fmt: skip

    async def change(self, request: web.Request) -> web.Response:
        if not isinstance(principal := _manager(request), Principal):
            return principal
        action = request.match_info["action"]
        if action not in CREDENTIAL_ACTIONS:
            raise web.HTTPNotFound()
        posted = await request.post()
        reason = str(posted.get("reason", "")).strip()
        if not reason or len(reason) > MAX_TEXT:
            return await self._confirmation(request, reason, "missing", 400)
        cred_id = request.match_info["id"]
        try:
            await self.edge.desk(
                self.desk.change_credential, action, cred_id, principal.name, reason
            )
        except DidgwError as exc:
            return await self._confirmation(request, reason, str(exc), 409)
        raise web.HTTPSeeOther(f"/console/people?done={action}")

    # -- the record

    async def record(self, request: web.Request) -> web.Response:
        if not isinstance(found := _manager(request), Principal):
            return found
        kind = request.query.get("kind", "")
        before_text = request.query.get("before", "")
        problem = None
        if len(kind) > MAX_KIND or not (kind.replace("-", "").isalnum() or kind == ""):
            problem = "kind"
        before = None
        if before_text:
            if not before_text.isdigit() or len(before_text) > 18:
                problem = "before"
            else:
                before = int(before_text)
        if problem is not None:
            return render(
                request, "console_record.html", status=400, title="Record", problem=problem,
                entries=[], kinds=[], kind=kind, next_page=None, anchors=None, recent=[],
                newest=None,
            )  # fmt: skip
        entries, kinds = await self.edge.desk(self.desk.newest, kind, before, PAGE_ENTRIES)
        anchors = await self.edge.desk(self.desk.anchor_status)
        recent = await self.edge.desk(self.desk.anchors, RECENT_ANCHORS)
        next_page = None
        if len(entries) == PAGE_ENTRIES and entries[-1]["seq"] > 0:
            extra = f"&kind={kind}" if kind else ""
            next_page = f"/console/record?before={entries[-1]['seq']}{extra}"
        return render(
            request, "console_record.html", title="Record", problem=None,
            entries=[{**e, "when": _short(e["time"])} for e in entries], kinds=kinds,
            kind=kind, next_page=next_page, anchors=anchors,
            recent=[{**a, "when": _short(a["confirmed"] or a["created"])} for a in recent],
            newest=await self.edge.desk(self.desk.confirmed_size),
        )  # fmt: skip

    async def _entry(self, request: web.Request) -> tuple[dict[str, Any], dict[str, Any]] | None:
        text = request.match_info["seq"]
        if not text.isdigit() or len(text) > 18:
            return None
        try:
            entry = await self.edge.desk(self.desk.entry, int(text))
            proof = await self.edge.desk(self.desk.inclusion, int(text), None)
        except (DidgwError, LookupError, ValueError):
            return None
        return entry, proof

    async def entry(self, request: web.Request) -> web.Response:
        if not isinstance(found := _manager(request), Principal):
            return found
        shown = await self._entry(request)
        if shown is None:
            return render(request, "console_no_entry.html", status=404, title="No such entry")
        entry, proof = shown
        return render(
            request, "console_entry.html", title="Record entry",
            entry={**entry, "when": _short(entry["time"])}, proof=proof,
        )  # fmt: skip

    async def proof(self, request: web.Request) -> web.Response:
        if not isinstance(found := _manager(request), Principal):
            return found
        shown = await self._entry(request)
        if shown is None:
            return web.json_response({"error": "not_found", "detail": "no such entry"}, status=404)
        entry, proof = shown
        return web.json_response(
            {"entry": entry, "inclusion": proof},
            headers={
                "Content-Disposition": f'attachment; filename="didgw-entry-{entry["seq"]}.json"'
            },
        )

    # -- the anchors' checkpoints and consistency proofs, to download

    async def _anchor(self, request: web.Request) -> dict[str, Any] | None:
        text = request.match_info["size"]
        if not text.isdigit() or len(text) > 18:
            return None
        found: dict[str, Any] | None = await self.edge.desk(self.desk.anchor_of_size, int(text))
        return found

    async def checkpoint(self, request: web.Request) -> web.StreamResponse:
        """The anchor's signed checkpoint, as ``didgw chain verify --checkpoint`` takes it."""
        if not isinstance(found := _manager(request), Principal):
            return found
        anchor = await self._anchor(request)
        if anchor is None:
            return web.json_response({"error": "not_found", "detail": "no such anchor"}, status=404)
        return web.Response(
            text=anchor["checkpoint"],
            content_type="text/plain",
            charset="utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="checkpoint-{anchor["size"]}.txt"'
            },
        )

    async def consistency(self, request: web.Request) -> web.StreamResponse:
        """The proof that the record at the anchor's size is a prefix of the record at the
        newest confirmed anchor (RFC 9162, the same JSON as ``/api/chain/consistency``)."""
        if not isinstance(found := _manager(request), Principal):
            return found
        anchor = await self._anchor(request)
        newest = await self.edge.desk(self.desk.confirmed_size)
        if anchor is None or newest is None or not 0 < anchor["size"] <= newest:
            return web.json_response({"error": "not_found", "detail": "no such anchor"}, status=404)
        proof = await self.edge.desk(self.desk.consistency, anchor["size"], newest)
        name = f"consistency-{anchor['size']}-{newest}.json"
        return web.json_response(
            proof, headers={"Content-Disposition": f'attachment; filename="{name}"'}
        )

    # -- health

    async def health(self, request: web.Request) -> web.Response:
        if not isinstance(found := _manager(request), Principal):
            return found
        status = await self.edge.desk(self.desk.status)
        anchors = await self.edge.desk(self.desk.anchor_status)
        return render(
            request, "console_health.html", title="Health", health=status, anchors=anchors,
            live=self.counts(None),
        )  # fmt: skip

    def counts(self, since: tuple[float, dict[str, Any]] | None) -> dict[str, Any]:
        """The live counts now (``null`` members when this process does not know them),
        with rates per second since the counts ``since`` (when given)."""
        now = time.monotonic()
        known = self.edge.live_counts() if self.edge.live_counts is not None else None
        shown: dict[str, Any] = {"at": self.edge.now_ms(), "known": known is not None}
        if known is not None:
            shown.update(known)
        else:
            shown.update({"readings": None, "authentications": None})
        shown["rates"] = None
        if known is not None and since is not None and since[1].get("known"):
            seconds = max(now - since[0], 1e-3)
            was = since[1]
            shown["rates"] = {
                f"{area}_{what}": round((known[area][what] - was[area][what]) / seconds, 1)
                for area, whats in (("readings", ("accepted", "refused")),
                                    ("authentications", ("granted", "refused")))
                for what in whats
            }  # fmt: skip
        return shown

    async def live(self, request: web.Request) -> web.StreamResponse:
        """The counts as server-sent events, about once a second, while the session lives."""
        principal = HttpEdge.principal(request)
        if principal is None or principal.session is None:
            raise web.HTTPUnauthorized(text="sign in as a facility manager first\n")
        if not principal.permissions.may_manage_devices():
            raise web.HTTPForbidden(text="the live counts are for facility managers\n")
        me = self.streams.open(request, principal.session.csrf, "counts")
        recent = self._last
        if recent is not None and time.monotonic() - recent[0] > 2 * LIVE_EVERY_SECONDS:
            recent = None
        return await self.streams.serve(request, me, self.counts(recent), "counts")

    async def _tick(self, streams: list[Stream]) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < LIVE_EVERY_SECONDS:
            return
        counts = self.counts(self._last)
        self._last = (now, counts)
        for s in streams:
            s.push(counts)


def add_routes(edge: HttpEdge) -> None:
    """The People, Record and Health pages."""
    edge.add(ConsoleAdmin(edge).routes())

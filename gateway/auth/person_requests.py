"""What a person asks on ``<prefix>/p/<did>/req``, whether she may, and how it is recorded.

Sans-IO: bytes in, a :class:`PersonRequest` or a :class:`RequestRefused` out; a session's
:class:`~gateway.credentials.permissions.Permissions` in, a decision out; the chain
entries of an action built here so their shape is tested without a broker.

A request is authenticated by the broker: only the person's own account may publish on
her request topic (and only after a presentation). It is JSON, at most 8 KiB::

    {"id": "r1", "action": "register", "did": "<device DID>", "name": "…", "kind": "sensor"}
    {"id": "r2", "action": "suspend", "did": "<device DID>", "reason": "…"}
    {"id": "r3", "action": "revoke", "did": "<device DID>", "reason": "…"}
    {"id": "r4", "action": "order", "order": "<compact JWS by the person's key>"}

Recorded: each action that is carried out appends an entry of kind ``person-action``
(actor: the person) naming the action, its target, the SHA-256 digests of the
presentations that allowed it and the entry holding what they disclosed. The disclosed
claims (personal data) are in that separate ``disclosure`` entry, written once per
session, which ``didgw chain erase`` can erase without touching the actions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.auth.strict import AuthRefused, check_did, json_object
from gateway.chain.store import NewEntry
from gateway.credentials.permissions import Permissions

MAX_REQUEST_BYTES = 8192
ACTIONS = ("register", "suspend", "revoke", "order")
DEVICE_ACTIONS = ("register", "suspend", "revoke")
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MEMBERS: dict[str, frozenset[str]] = {
    "register": frozenset({"id", "action", "did", "name", "kind"}),
    "suspend": frozenset({"id", "action", "did", "reason"}),
    "revoke": frozenset({"id", "action", "did", "reason"}),
    "order": frozenset({"id", "action", "order"}),
}
ACTION_KIND = "person-action"
DISCLOSURE_KIND = "disclosure"
SESSION_KIND = "person-session"


class RequestRefused(Exception):
    """A request not carried out: ``reason`` goes in the response, ``detail`` to the log."""

    def __init__(self, reason: str, detail: str = "", request_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.request_id = reason, detail, request_id


@dataclass(frozen=True)
class PersonRequest:
    id: str
    action: str
    fields: Mapping[str, Any]

    @property
    def target(self) -> str:
        return str(self.fields.get("did", ""))


def parse_request(data: bytes) -> PersonRequest:
    """Parse strictly; a request whose ``id`` can be read is refused under that id."""
    try:
        obj = json_object(data, "request", max_bytes=MAX_REQUEST_BYTES)
    except AuthRefused as exc:
        raise RequestRefused("malformed", exc.detail) from None
    rid = obj.get("id")
    if not isinstance(rid, str) or not _ID.fullmatch(rid):
        raise RequestRefused("malformed", "id must be 1 to 64 characters [A-Za-z0-9_-]")
    action = obj.get("action")
    if action not in ACTIONS:
        raise RequestRefused("unknown_action", f"action {action!r}", rid)
    if set(obj) != _MEMBERS[action]:
        raise RequestRefused("malformed", f"{action} has exactly {sorted(_MEMBERS[action])}", rid)
    for name, value in obj.items():
        limit = 4096 if name == "order" else 512
        if not isinstance(value, str) or not value or len(value) > limit:
            raise RequestRefused("malformed", f"{name} must be a non-empty string", rid)
    if "did" in obj:
        try:
            check_did(obj["did"], "device did")
        except AuthRefused as exc:
            raise RequestRefused("malformed", exc.detail, rid) from None
    return PersonRequest(rid, action, {k: v for k, v in obj.items() if k not in ("id", "action")})


def allowed(permissions: Permissions, request: PersonRequest) -> None:
    """Raise :class:`RequestRefused` unless the session may make this request at all.

    Orders are checked against the household they name later, with the order
    (``Permissions.may_trade_for`` through the market's checks)."""
    if request.action in DEVICE_ACTIONS:
        decision = permissions.may_manage_devices()
        if not decision:
            raise RequestRefused(decision.reason, request.action, request.id)
    elif request.action == "order" and not permissions.households:
        raise RequestRefused("not_member", "the credentials name no household", request.id)


def response(request_id: str | None, status: str, **extra: Any) -> bytes:
    """The JSON answer on ``<prefix>/p/<did>/res``."""
    body = {"id": request_id, "status": status, **extra}
    return json.dumps(body, separators=(",", ":")).encode()


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def disclosure_entry(person: str, digests: list[str], disclosed: Mapping[str, Any]) -> NewEntry:
    """The erasable entry holding what the presentations disclosed (personal data)."""
    body = {"presentations": digests, "claims": disclosed}
    return NewEntry(DISCLOSURE_KIND, person, _canonical(body))


def session_entry(person: str, digests: list[str], disclosure: int, expires_ms: int) -> NewEntry:
    """The session itself: digests only, and where the disclosed data is."""
    body = {"presentations": digests, "disclosure": disclosure, "expires": expires_ms}
    return NewEntry(SESSION_KIND, person, _canonical(body))


def action_entry(
    person: str,
    request: PersonRequest,
    *,
    digests: list[str],
    disclosure: int | None,
    **details: Any,
) -> NewEntry:
    """One action carried out, with the digests of the presentations that allowed it."""
    body = {
        "action": request.action,
        "request": request.id,
        "presentations": digests,
        "disclosure": disclosure,
        **({"device": request.target} if request.target else {}),
        **details,
    }
    return NewEntry(ACTION_KIND, person, _canonical(body))

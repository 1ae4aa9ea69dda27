"""What anchoring has done so far, as JSON: ``didgw anchor status|list`` and the JSON API
(``/api/anchors/status``) show the same, built here once. Sans-IO: the time comes in."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from gateway.anchor.queue import Anchor, AnchorQueue
from gateway.chain.store import ChainStore
from gateway.config import AnchorSection


def iso(ts: float | None) -> str | None:
    """A Unix time in seconds as ISO 8601 UTC (``2026-12-05T10:00:00Z``), or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def anchor_json(a: Anchor) -> dict[str, Any]:
    return {
        "size": a.size,
        "state": a.state,
        "created": iso(a.created_ms / 1000),
        "covered_by": a.covered_by,
        "nonce": a.nonce,
        "tx_hash": None if a.tx_hash is None else "0x" + a.tx_hash.hex(),
        "sends": a.sends,
        "block_number": a.block_number,
        "confirmed": iso(None if a.confirmed_ms is None else a.confirmed_ms / 1000),
    }


def binding_address(binding: str | None) -> str | None:
    """The ledger address named by the gateway's signed ledger binding (its payload's
    ``address``), or None when there is no binding yet."""
    if binding is None:
        return None
    part = binding.split(".")[1]
    body = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return str(body["address"])


def anchor_status(
    queue: AnchorQueue,
    chain: ChainStore,
    settings: AnchorSection,
    *,
    size: int,
    binding: str | None,
    now: float,
) -> dict[str, Any]:
    """Anchoring as the record stands (``size`` entries): what is anchored, what waits,
    what is in flight."""
    last = queue.last_confirmed()
    anchored = 0 if last is None else last.size
    oldest = chain.get(anchored).ts / 1000 if size > anchored else None
    health = queue.meta().get("health")
    flight = queue.in_flight()
    in_flight = None
    if flight is not None and flight.sent_ms is not None:
        ago = round(now - flight.sent_ms / 1000, 1)
        in_flight = {**anchor_json(flight), "last_sent_seconds_ago": ago}
    return {
        "enabled": settings.enabled,
        "rpc_url": settings.rpc_url,
        "chain_id": settings.chain_id,
        "address": binding_address(binding),
        "record_size": size,
        "anchored_size": anchored,
        "unanchored_entries": size - anchored,
        "lag_seconds": None if oldest is None else round(now - oldest, 1),
        "last_anchor": None if last is None else anchor_json(last),
        "in_flight": in_flight,
        "queue": queue.counts(),
        "loop_health": None
        if health is None
        else {"value": health[0], "since": iso(health[1] / 1000)},
    }

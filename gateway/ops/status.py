"""``didgw status``: the health summary for a person, from the metrics endpoint and the database.

The running gateway's live figures are read from its own metrics endpoint
(loopback HTTP, the Prometheus text format), so the command needs nothing from
the gateway process beyond what monitoring already sees; the stored figures
come from the database, so the command also works while the gateway is down.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field

from gateway.ops.health import StoredHealth


@dataclass
class LiveHealth:
    readings: dict[str, float] = field(default_factory=dict)  # outcome -> count, all transports
    authentications: dict[str, float] = field(default_factory=dict)
    connections: dict[str, bool] = field(default_factory=dict)
    storage_full: bool = False


def live_health(host: str, port: int, *, timeout: float = 2.0) -> LiveHealth | None:
    """The running gateway's figures, or None when nothing answers."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return None
    live = LiveHealth()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "didgw_readings_total":
                key = labels["outcome"]
                live.readings[key] = live.readings.get(key, 0) + sample.value
            elif sample.name == "didgw_authentications_total":
                key = labels["result"]
                live.authentications[key] = live.authentications.get(key, 0) + sample.value
            elif sample.name == "didgw_connection_up":
                live.connections[labels["peer"]] = sample.value == 1
            elif sample.name == "didgw_storage_full":
                live.storage_full = sample.value == 1
    return live


def render_status(
    stored: StoredHealth, live: LiveHealth | None, *, anchoring: bool
) -> tuple[str, bool]:
    """The summary text, and whether everything is healthy."""
    lines = []
    healthy = live is not None
    if live is None:
        lines.append("gateway:        not running (its metrics endpoint does not answer)")
    else:
        accepted = int(live.readings.get("accepted", 0) + live.readings.get("duplicate", 0))
        refusals = {
            k: int(v) for k, v in live.readings.items() if k not in ("accepted", "duplicate")
        }
        refused = ", ".join(f"{k} {v}" for k, v in sorted(refusals.items()) if v) or "none"
        lines.append("gateway:        running")
        lines.append(f"readings:       {accepted} accepted since start; refused: {refused}")
        grants = int(live.authentications.get("grant", 0))
        lines.append(f"authentications: {grants} granted since start")
        for peer, up in sorted(live.connections.items()):
            lines.append(f"{peer + ':':<16}{'up' if up else 'DOWN'}")
            healthy = healthy and up
        if live.storage_full:
            lines.append("storage:        FULL: new readings are refused")
            healthy = False
    devices = ", ".join(f"{n} {status}" for status, n in sorted(stored.devices.items())) or "none"
    lines.append(f"record:         {stored.chain_entries} entries")
    lines.append(f"devices:        {devices}")
    if stored.market_intervals_cleared:
        lines.append(f"market:         {stored.market_intervals_cleared} intervals cleared")
    if anchoring:
        if stored.anchored_entries is None:
            lines.append(f"anchors:        none confirmed yet; {stored.anchor_queue} waiting")
        else:
            behind = stored.chain_entries - stored.anchored_entries
            age = "" if stored.anchor_age_s is None else f", {stored.anchor_age_s:.0f} s ago"
            lines.append(
                f"anchors:        {stored.anchored_entries} entries anchored{age}; "
                f"{behind} entries behind; {stored.anchor_queue} waiting"
            )
        if stored.ledger and stored.ledger != "ok":
            lines.append(f"ledger:         {stored.ledger}")
            healthy = False
    return "\n".join(lines), healthy

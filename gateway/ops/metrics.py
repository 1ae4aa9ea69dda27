"""Prometheus metrics of the running gateway (prometheus-client), served on loopback.

Everything is collected when scraped, from :class:`gateway.ops.health.Health`
(live counts kept by the parts that own them) and the database
(:func:`gateway.ops.health.stored_health`, on a read-only connection opened for the
scrape): nothing is counted twice, and nothing on the reading path waits for
the exporter.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from gateway.db import open_read_only
from gateway.ops.health import Health, stored_health

log = logging.getLogger(__name__)


class GatewayCollector(Collector):
    """Turns the health sources and the stored figures into metric families."""

    def __init__(self, health: Health, db_path: Path) -> None:
        self._health = health
        self._db_path = db_path

    def collect(self) -> Iterator[Metric]:
        readings = CounterMetricFamily(
            "didgw_readings",
            "Readings by transport and outcome (accepted, duplicate, or the refusal reason).",
            labels=["transport", "outcome"],
        )
        for transport, counts in self._health.readings:
            for outcome, n in sorted(counts().items()):
                readings.add_metric([transport, outcome], n)
        yield readings
        auths = CounterMetricFamily(
            "didgw_authentications",
            "Authentication steps by transport and result (challenge, grant, refusal reason).",
            labels=["transport", "result"],
        )
        for transport, counts in self._health.authentications:
            for result, n in sorted(counts().items()):
                auths.add_metric([transport, result], n)
        yield auths
        up = GaugeMetricFamily(
            "didgw_connection_up", "1 when the connection to the peer is up.", labels=["peer"]
        )
        for peer, is_up in sorted(self._health.connections.items()):
            up.add_metric([peer], 1.0 if is_up() else 0.0)
        yield up
        for name, value in sorted(self._health.gauges.items()):
            yield GaugeMetricFamily(f"didgw_{name}", name.replace("_", " "), value=value())
        yield from self._stored()

    def _stored(self) -> Iterator[Metric]:
        try:
            conn = open_read_only(self._db_path)
        except Exception as exc:  # a scrape must not fail because of one figure
            log.warning("metrics: cannot read the database: %s", exc)
            return
        try:
            stored = stored_health(conn)
        finally:
            conn.close()
        yield GaugeMetricFamily(
            "didgw_chain_entries", "Entries on the record.", value=stored.chain_entries
        )
        devices = GaugeMetricFamily(
            "didgw_devices", "Registered devices by status.", labels=["status"]
        )
        for status, n in sorted(stored.devices.items()):
            devices.add_metric([status], n)
        yield devices
        yield GaugeMetricFamily(
            "didgw_market_intervals_cleared",
            "Market intervals cleared so far.",
            value=stored.market_intervals_cleared,
        )
        yield GaugeMetricFamily(
            "didgw_anchor_queue_depth",
            "Checkpoints waiting to be anchored (queued or sent, not yet confirmed).",
            value=stored.anchor_queue,
        )
        if stored.anchored_entries is not None:
            yield GaugeMetricFamily(
                "didgw_anchor_lag_entries",
                "Entries on the record not yet covered by a confirmed anchor.",
                value=stored.chain_entries - stored.anchored_entries,
            )
        if stored.anchor_age_s is not None:
            yield GaugeMetricFamily(
                "didgw_anchor_age_seconds",
                "Seconds since the newest anchor was confirmed.",
                value=stored.anchor_age_s,
            )


def serve(health: Health, db_path: Path, host: str, port: int) -> Any:
    """Start the exporter on its own thread; returns the server (``shutdown()`` stops it)."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(health, db_path))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server

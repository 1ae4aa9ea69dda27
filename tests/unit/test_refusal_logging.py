"""Pieces of the MQTT device service that need no broker."""

from __future__ import annotations

from gateway.run.mqtt_devices import _LogBudget


def test_refusal_logging_is_rate_limited() -> None:
    budget = _LogBudget(burst=3, period_ms=1000)
    assert [budget.take(t) for t in range(0, 10)] == [True] * 3 + [False] * 7
    assert budget.suppressed == 7
    assert budget.take(1000) is True and budget.suppressed == 0  # a new window

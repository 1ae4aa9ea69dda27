"""The log budget of authentication refusals: a flood of refusals is a few lines."""

from __future__ import annotations

import logging

import pytest

from gateway.ops.logs import LogBudget


def test_refusal_logging_is_rate_limited_and_the_rest_counted_by_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    budget = LogBudget("refusals", burst=3, period_ms=1000)
    reasons = ["malformed"] * 5 + ["rate_limited"] * 5
    assert [budget.take(t, r) for t, r in enumerate(reasons)] == [True] * 3 + [False] * 7
    assert budget.suppressed == 7
    with caplog.at_level(logging.INFO):
        budget.flush(999)  # the period is not over yet
        assert not caplog.records
        assert budget.take(1000, "malformed") is True and budget.suppressed == 0  # a new period
    [line] = [r.getMessage() for r in caplog.records]
    assert line == "7 more refusals not logged in 1 s: rate_limited 5, malformed 2"


def test_a_flood_that_stopped_is_counted_when_its_period_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    budget = LogBudget("refusals", burst=1, period_ms=1000)
    assert budget.take(0, "bad_nonce") and not budget.take(1, "bad_nonce")
    with caplog.at_level(logging.INFO):
        budget.flush(1000)
        budget.flush(5000)  # nothing more to say
    assert [r.getMessage() for r in caplog.records] == [
        "1 more refusals not logged in 1 s: bad_nonce 1"
    ]

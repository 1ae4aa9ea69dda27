"""What a day of anchors costs: the count by the cadence rules, the gas, the ether."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.anchor.estimate import GAS_PER_ANCHOR, anchors_per_day, day_of_anchors

DIDGW = str(Path(sys.executable).with_name("didgw"))


def test_the_rule_that_fires_first_sets_the_count_and_no_more_than_one_per_entry() -> None:
    assert anchors_per_day(60, 10_000, 86_400) == 1440  # time first: a reading a second
    assert anchors_per_day(3600, 10_000, 86_400) == 24
    assert anchors_per_day(3600, 1000, 864_000) == 864  # the count first: 10 entries a second
    assert anchors_per_day(60, 10_000, 100) == 100  # quiet: nothing new, nothing sent
    assert anchors_per_day(60, 10_000, 0) == 0
    with pytest.raises(ValueError):
        anchors_per_day(0, 10_000, 1)


def test_gas_and_ether_of_a_day() -> None:
    assert GAS_PER_ANCHOR == 25_400  # 110 non-zero bytes at the EIP-7623 floor
    day = day_of_anchors(3600, 10_000, 86_400, fee_gwei=2.0)
    assert day.anchors == 24 and day.gas == 24 * 25_400
    assert day.ether == pytest.approx(24 * 25_400 * 2 / 1e9)
    assert day_of_anchors(3600, 10_000, 86_400, fee_gwei=0).ether == 0  # a free consortium chain
    with pytest.raises(ValueError):
        day_of_anchors(3600, 10_000, 86_400, fee_gwei=-1)


def test_the_command_prices_the_configured_cadence(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("[anchor]\nevery_seconds = 600.0\n")
    shown = subprocess.run(
        [DIDGW, "anchor", "estimate", "--config", str(config), "--fee-gwei", "0.5", "--json"],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    answer = json.loads(shown.stdout)
    assert answer["anchors_per_day"] == 144 and answer["gas_per_day"] == 144 * 25_400
    assert answer["per_fee"] == [{"fee_gwei": 0.5, "ether_per_day": 144 * 25_400 * 0.5 / 1e9}]

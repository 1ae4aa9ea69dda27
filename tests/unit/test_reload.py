"""SIGHUP's decision: which changed settings are applied at once, which wait for a restart.

(What applying does to a running gateway is tested end to end in
tests/integration/test_service.py and test_coap_devices.py.)
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from gateway.config import SECTIONS, Config, load_config
from gateway.run.runner import LIVE, apply_reload


def test_every_live_setting_is_a_setting() -> None:
    keys = {f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    assert keys >= LIVE


def test_a_changed_live_setting_retimes_the_running_parts_and_others_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "g.toml"
    path.write_text("[mqtt]\nclock_skew_seconds = 60\n")  # the old place: still read
    running = load_config(path)
    retimed: list[Config] = []
    caplog.set_level(logging.INFO)

    path.write_text("[devices]\nclock_skew_seconds = 60\n")  # moved, same value: no change
    running = apply_reload(running, retimed.append)
    assert retimed == [] and "reload: configuration unchanged" in caplog.messages

    path.write_text("[devices]\nclock_skew_seconds = 300\n[mqtt]\nverify_workers = 1\n")
    running = apply_reload(running, retimed.append)
    assert [c.devices.clock_skew_seconds for c in retimed] == [300]
    assert running is retimed[0]
    assert "reload: devices.clock_skew_seconds changed; applied" in caplog.messages
    assert (
        "reload: mqtt.verify_workers changed; takes effect at the next restart" in caplog.messages
    )

    path.write_text("[devices]\nclock_skew_seconds = 300\n[mqtt]\nverify_workers = 2\n")
    apply_reload(running, retimed.append)
    assert len(retimed) == 1  # nothing live changed: nothing retimed


def test_an_invalid_file_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text("[devices]\nclock_skew_seconds = 60\n")
    running = load_config(path)
    path.write_text("[devices]\nclock_skew_seconds = 0\n")
    retimed: list[Config] = []
    assert apply_reload(running, retimed.append) is running
    assert retimed == []

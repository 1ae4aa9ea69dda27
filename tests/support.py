"""Helpers shared by the test suites (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

VECTORS = Path(__file__).parent / "vectors"
ROOT = Path(__file__).resolve().parents[1]

#: ``didgw(*args, env=…, cwd=…)`` runs the installed command (see integration/conftest.py).
Run = Callable[..., subprocess.CompletedProcess[str]]


def load_vectors(relative: str) -> Any:
    """A JSON file of standard test vectors under tests/vectors/."""
    return json.loads((VECTORS / relative).read_text())


def load_device_module() -> ModuleType:
    """firmware-sim/device.py as a module (its directory name is not importable)."""
    name = "didgw_firmware_sim_device"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "firmware-sim" / "device.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module

"""Helpers shared by the test suites (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).parent / "vectors"
ROOT = Path(__file__).resolve().parents[1]

#: ``didgw(*args, env=…, cwd=…)`` runs the installed command (see integration/conftest.py).
Run = Callable[..., subprocess.CompletedProcess[str]]


def load_vectors(relative: str) -> Any:
    """A JSON file of standard test vectors under tests/vectors/."""
    return json.loads((VECTORS / relative).read_text())

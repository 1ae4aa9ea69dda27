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


class WebResolver:
    """A resolver for tests: did:key offline, one did:web document, or the network down."""

    def __init__(self, document: dict[str, Any]) -> None:
        from gateway.identity import offline_resolver

        self.document = document
        self.down = False
        self._offline = offline_resolver()

    def resolve(self, did: str, *, now: float) -> Any:
        from gateway.identity.resolver import Resolution, Unreachable

        if did.startswith("did:key:"):
            return self._offline.resolve(did, now=now)
        if self.down:
            raise Unreachable(f"cannot fetch {did}: network is unreachable")
        return Resolution(did, self.document, f"https://{did[8:]}/.well-known/did.json", now)


def load_vectors(relative: str) -> Any:
    """A JSON file of standard test vectors under tests/vectors/."""
    return json.loads((VECTORS / relative).read_text())

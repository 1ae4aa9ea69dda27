"""The independent wallet of the interop tests (tests/interop/oid4vc-js: the OpenWallet
Foundation's oid4vc-ts, sd-jwt-js and dcql, on node): its key, receiving a credential by
OpenID4VCI (``receive.mjs``), answering a sign-in by OpenID4VP (``present.mjs``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from support import ROOT

WALLET = ROOT / "tests" / "interop" / "oid4vc-js"


def node(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("node")
    assert binary, "node is not installed: run scripts/setup.sh --dev"
    assert (WALLET / "node_modules").is_dir(), "run scripts/setup.sh --dev (npm ci)"
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=120, check=False, cwd=WALLET
    )


def new_wallet(tmp_path: Path, name: str = "wallet") -> tuple[Path, str]:
    """A new holder key (a private JWK file) and its did:key."""
    key = tmp_path / f"{name}.jwk"
    made = node("keys.mjs", "new", str(key))
    assert made.returncode == 0, made.stderr
    return key, made.stdout.strip()


def receive(
    key: Path, made: dict[str, str], out: Path, *, pin: str | None = None, binding: str = "did"
) -> tuple[int, dict[str, Any]]:
    """Receive the credential of offer ``made`` (``didgw cred offer --json``) into ``out``:
    (exit status, the wallet's JSON summary)."""
    ran = node(
        "receive.mjs", "--key", str(key), "--offer", made["uri"], "--pin", pin or made["pin"],
        "--out", str(out), "--binding", binding, "--allow-http",
    )  # fmt: skip
    assert ran.stdout.strip(), ran.stderr
    return ran.returncode, json.loads(ran.stdout.strip().splitlines()[-1])


def present(
    key: Path, credentials: list[Path], link: str, *, curve: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Answer the sign-in request of ``link`` (openid4vp://…) with these credential files
    (an encrypted answer to the key on ``curve``, else to the one the library picks).
    Exit 0 or 1 with a JSON line ({"status", "body", "disclosed", "response_mode",
    "encryption"}) when the gateway was answered; 2 when the wallet had nothing to answer
    with (the reason on stderr)."""
    files = [a for path in credentials for a in ("--credential", str(path))]
    chosen = ["--curve", curve] if curve else []
    return node("present.mjs", "--key", str(key), *files, "--request", link, *chosen)


def presented(
    key: Path, credentials: list[Path], link: str, *, curve: str | None = None
) -> dict[str, Any]:
    """:func:`present`, when the wallet must have answered: its JSON summary."""
    ran = present(key, credentials, link, curve=curve)
    assert ran.returncode in (0, 1), ran.stderr
    summary: dict[str, Any] = json.loads(ran.stdout)
    return summary

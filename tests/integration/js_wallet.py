"""The independent wallet of the interop tests (tests/interop/oid4vc-js: the OpenWallet
Foundation's oid4vc-ts, sd-jwt-js and dcql, on node): its key, receiving a credential by
OpenID4VCI (``receive.mjs``), answering a sign-in by OpenID4VP (``present.mjs``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from support import ROOT

WALLET = ROOT / "tests" / "interop" / "oid4vc-js"
#: The claims of one credential of each kind, for offers to the wallet.
SOMEONE = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
CLAIMS = {
    "household": {"household": SOMEONE, "role": "seller", "name": "Alice"},
    "facility-manager": {"site": "Block C", "name": "Bob"},
    "device-owner": {"device": SOMEONE},
    "vouch": {"device": SOMEONE, "kind": "meter"},
}


def node(*args: str, ca: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a script of the wallet; ``ca``: a certificate authority it trusts besides the
    system's (the gateway's own, for HTTPS)."""
    binary = shutil.which("node")
    assert binary, "node is not installed: run scripts/setup.sh --dev"
    assert (WALLET / "node_modules").is_dir(), "run scripts/setup.sh --dev (npm ci)"
    env = {**os.environ, **({"NODE_EXTRA_CA_CERTS": str(ca)} if ca is not None else {})}
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=120, check=False, cwd=WALLET,
        env=env,
    )  # fmt: skip


def new_wallet(tmp_path: Path, name: str = "wallet") -> tuple[Path, str]:
    """A new holder key (a private JWK file) and its did:key."""
    key = tmp_path / f"{name}.jwk"
    made = node("keys.mjs", "new", str(key))
    assert made.returncode == 0, made.stderr
    return key, made.stdout.strip()


def receive(
    key: Path,
    made: dict[str, str],
    out: Path,
    *,
    pin: str | None = None,
    binding: str = "did",
    ca: Path | None = None,
) -> tuple[int, dict[str, Any]]:
    """Receive the credential of offer ``made`` (``didgw cred offer --json``) into ``out``:
    (exit status, the wallet's JSON summary). Over HTTPS with ``ca``, else plain HTTP on
    loopback (``--allow-http``)."""
    ran = node(
        "receive.mjs", "--key", str(key), "--offer", made["uri"], "--pin", pin or made["pin"],
        "--out", str(out), "--binding", binding, *([] if ca else ["--allow-http"]), ca=ca,
    )  # fmt: skip
    assert ran.stdout.strip(), ran.stderr
    return ran.returncode, json.loads(ran.stdout.strip().splitlines()[-1])


def present(
    key: Path,
    credentials: list[Path],
    link: str,
    *,
    curve: str | None = None,
    ca: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Answer the sign-in request of ``link`` (openid4vp://…) with these credential files
    (an encrypted answer to the key on ``curve``, else to the one the library picks; over
    HTTPS, trusting ``ca``). Exit 0 or 1 with a JSON line ({"status", "body", "disclosed",
    "response_mode", "encryption"}) when the gateway was answered; 2 when the wallet had
    nothing to answer with (the reason on stderr)."""
    files = [a for path in credentials for a in ("--credential", str(path))]
    chosen = ["--curve", curve] if curve else []
    return node("present.mjs", "--key", str(key), *files, "--request", link, *chosen, ca=ca)


def presented(
    key: Path, credentials: list[Path], link: str, *, curve: str | None = None
) -> dict[str, Any]:
    """:func:`present`, when the wallet must have answered: its JSON summary."""
    ran = present(key, credentials, link, curve=curve)
    assert ran.returncode in (0, 1), ran.stderr
    summary: dict[str, Any] = json.loads(ran.stdout)
    return summary

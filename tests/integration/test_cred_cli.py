"""didgw cred end to end: issue, present a subset, verify, revoke; refusals change nothing."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from support import Run

HOUSEHOLD = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"


def test_issue_present_verify_revoke(didgw: Run, tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    assert didgw("init", *state).returncode == 0
    holder = didgw("did", "new", "-o", "alice.pem").stdout.strip()
    issued = didgw(
        "cred",
        "issue",
        "household",
        *state,
        "--subject",
        holder,
        "--format",
        "sd-jwt",
        "--claim",
        f"household={HOUSEHOLD}",
        "--claim",
        "role=seller",
        "--claim",
        "name=Alice",
        "-o",
        "alice.sdjwt",
    )
    assert issued.returncode == 0, issued.stderr
    assert stat.S_IMODE((tmp_path / "alice.sdjwt").stat().st_mode) == 0o600
    again = didgw(
        "cred", "issue", "facility-manager", *state, "--subject", holder, "-o", "alice.sdjwt"
    )
    assert again.returncode == 1 and "not overwritten" in again.stderr

    shown = didgw(
        "cred",
        "present",
        "alice.sdjwt",
        "--disclose",
        "role",
        "--disclose",
        "household",
        "--nonce",
        "n-42",
        "--aud",
        "gw",
        "--key",
        "alice.pem",
        "-o",
        "p.txt",
    )
    assert shown.returncode == 0, shown.stderr
    ok = didgw("cred", "verify", "p.txt", *state, "--nonce", "n-42", "--aud", "gw")
    assert ok.returncode == 0, ok.stderr
    assert "Alice" not in ok.stdout and "seller" in ok.stdout
    wrong = didgw("cred", "verify", "p.txt", *state, "--nonce", "n-43", "--aud", "gw")
    assert wrong.returncode == 1 and "another nonce" in wrong.stderr

    listed = json.loads(didgw("cred", "list", *state, "--json").stdout)
    assert [c["type"] for c in listed] == ["household"] and not listed[0]["revoked"]
    revoked = didgw("cred", "revoke", listed[0]["id"], *state, "--reason", "moved out")
    assert revoked.returncode == 0, revoked.stderr
    after = didgw("cred", "verify", "p.txt", *state, "--nonce", "n-42", "--aud", "gw")
    assert after.returncode == 1 and "revoked" in after.stderr


def test_vc_verify_reports_reasons_and_refusals_change_nothing(didgw: Run, tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    assert didgw("init", *state).returncode == 0
    subject = didgw("did", "new", "-o", "bob.pem").stdout.strip()
    assert (
        didgw(
            "cred", "issue", "facility-manager", *state, "--subject", subject, "-o", "bob.json"
        ).returncode
        == 0
    )
    assert didgw("cred", "verify", "bob.json", *state).returncode == 0
    vc = json.loads((tmp_path / "bob.json").read_text())
    vc["credentialSubject"]["site"] = "everywhere"
    (tmp_path / "forged.json").write_text(json.dumps(vc))
    forged = didgw("cred", "verify", "forged.json", *state)
    assert forged.returncode == 1 and "does not verify" in forged.stderr
    (tmp_path / "junk.json").write_text("{not json")
    junk = didgw("cred", "verify", "junk.json", *state)
    assert junk.returncode == 1 and "not valid JSON" in junk.stderr
    for bad in (
        [
            "household",
            "--subject",
            subject,
            "--claim",
            "role=landlord",
            "--claim",
            f"household={HOUSEHOLD}",
        ],
        ["household", "--subject", subject, "--claim", "role"],
        ["pilot", "--subject", subject],
        ["facility-manager", "--subject", "did:web:example.com", "--format", "sd-jwt"],
    ):
        refused = didgw("cred", "issue", *bad, *state)
        assert refused.returncode == 1 and refused.stderr.startswith("didgw: error:"), (
            refused.stderr
        )
    assert len(json.loads(didgw("cred", "list", *state, "--json").stdout)) == 1
    missing = didgw("cred", "revoke", "urn:uuid:nope", *state, "--reason", "x")
    assert missing.returncode == 1 and "no credential" in missing.stderr

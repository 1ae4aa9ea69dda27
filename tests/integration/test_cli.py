"""The ``didgw`` command as a person uses it: real processes, real files, exit codes, messages."""

from __future__ import annotations

import json
import sqlite3
import stat
from contextlib import closing
from pathlib import Path

import pytest
from support import ROOT, Run

pytestmark = pytest.mark.integration


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def dump(db: Path) -> list[str]:
    with closing(sqlite3.connect(db)) as conn:
        return list(conn.iterdump())


def test_init_creates_private_state_and_is_idempotent(didgw: Run, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = didgw("init", "--state-dir", str(state))
    assert first.returncode == 0, first.stderr
    did = first.stdout.split("Gateway DID: ")[1].strip()
    assert did.startswith("did:key:z6Mk")
    key = state / "keys" / "gateway.pem"
    assert (mode(state), mode(state / "keys"), mode(key)) == (0o700, 0o700, 0o600)
    assert b"BEGIN PRIVATE KEY" in key.read_bytes()
    assert (state / "didgw.db").exists()
    assert "0001_gateway_meta" in first.stdout

    pem = key.read_bytes()
    second = didgw("init", "--state-dir", str(state))
    assert second.returncode == 0
    assert "existing key kept, not overwritten" in second.stdout
    assert f"Gateway DID: {did}" in second.stdout
    assert key.read_bytes() == pem


def test_state_dir_from_environment_and_default(didgw: Run, tmp_path: Path) -> None:
    assert didgw("init", env={"DIDGW_STATE_DIR": str(tmp_path / "env-state")}).returncode == 0
    assert (tmp_path / "env-state" / "keys" / "gateway.pem").exists()
    assert didgw("init").returncode == 0
    assert (tmp_path / "home" / ".local" / "state" / "didgw" / "didgw.db").exists()


def test_encrypted_gateway_key(didgw: Run, tmp_path: Path) -> None:
    state = tmp_path / "s"
    env = {"DIDGW_STATE_DIR": str(state), "DIDGW_KEY_PASSPHRASE": "hunter2-but-longer"}
    result = didgw("init", env=env)
    assert result.returncode == 0 and "encrypted" in result.stdout
    assert b"ENCRYPTED PRIVATE KEY" in (state / "keys" / "gateway.pem").read_bytes()
    assert "hunter2" not in result.stdout + result.stderr
    again = didgw("init", env={"DIDGW_STATE_DIR": str(state)})
    assert again.returncode == 1
    assert "is encrypted; give its passphrase" in again.stderr
    wrong = didgw("init", env={**env, "DIDGW_KEY_PASSPHRASE": "nope"})
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr


def test_invalid_config_stops_before_any_state_is_touched(didgw: Run, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[resolver]\ntimeout = -3\n")
    state = tmp_path / "never"
    for args in (["init"], ["device", "list"], ["did", "new", "-o", str(tmp_path / "k.pem")]):
        result = didgw(*args, "--config", str(config), "--state-dir", str(state))
        assert result.returncode == 1
        assert f"{config}: [resolver] timeout: must be greater than 0" in result.stderr
        assert "Traceback" not in result.stderr
    assert not state.exists()
    assert not (tmp_path / "k.pem").exists()
    missing = didgw("init", "--config", str(tmp_path / "nope.toml"), "--state-dir", str(state))
    assert missing.returncode == 1 and "config file not found" in missing.stderr
    assert not state.exists()


def test_commands_refuse_an_uninitialised_state_dir(didgw: Run, tmp_path: Path) -> None:
    state = tmp_path / "empty"
    result = didgw("device", "list", "--state-dir", str(state))
    assert result.returncode == 1
    assert f"no gateway in {state}; run: didgw init" in result.stderr
    assert not state.exists()


def test_did_new_writes_a_0600_key_and_never_overwrites(didgw: Run, tmp_path: Path) -> None:
    result = didgw("did", "new", "--json", "-o", "dev.pem")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["did"].startswith("did:key:z6Mk") and info["kid"].startswith(info["did"] + "#z6Mk")
    assert mode(tmp_path / "dev.pem") == 0o600
    before = (tmp_path / "dev.pem").read_bytes()
    again = didgw("did", "new", "-o", "dev.pem")
    assert again.returncode == 1 and "not overwriting a key" in again.stderr
    assert (tmp_path / "dev.pem").read_bytes() == before
    plain = didgw("did", "new")
    assert plain.returncode == 0
    did = plain.stdout.strip()
    assert (tmp_path / f"{did.removeprefix('did:key:')}.pem").exists()


def test_did_resolve(didgw: Run) -> None:
    did = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    result = didgw("did", "resolve", did)
    assert result.returncode == 0
    document = json.loads(result.stdout)
    assert document["id"] == did
    assert document["verificationMethod"][0]["type"] == "Multikey"
    full = json.loads(didgw("did", "resolve", "--json", did).stdout)
    assert full["didDocument"] == document
    assert full["didResolutionMetadata"]["fromCache"] is False
    for bad, message in (
        ("did:key:zDnaerDaTF5BXEavCrfRZEk316dpbLsfPDZ3WJ5hRTPFU2169", "p256-pub"),
        ("did:key:z6MkBAD0", "not valid base58btc"),
        ("not-a-did", "not a DID"),
        ("did:example:123", "did:example is not supported"),
    ):
        refused = didgw("did", "resolve", bad)
        assert refused.returncode == 1, bad
        assert message in refused.stderr and refused.stdout == ""


def test_device_lifecycle_and_errors(didgw: Run, tmp_path: Path) -> None:
    env = {"DIDGW_STATE_DIR": str(tmp_path / "s")}
    assert didgw("init", env=env).returncode == 0
    sensor = didgw("did", "new", "-o", "a.pem").stdout.strip()
    spare = didgw("did", "new", "-o", "b.pem").stdout.strip()
    owner = didgw("did", "new", "-o", "o.pem").stdout.strip()

    ok = didgw(
        "device",
        "register",
        sensor,
        "--name",
        "cellar temperature",
        "--kind",
        "sensor",
        "--owner",
        owner,
        "--topic",
        "site/cellar/#",
        "--capability",
        "reading",
        "--meta",
        "vendor=acme",
        "--by",
        "fm:alice",
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    listing = json.loads(didgw("device", "list", "--json", env=env).stdout)
    assert [(d["did"], d["status"], d["owner"], d["metadata"]) for d in listing] == [
        (sensor, "active", owner, {"vendor": "acme"})
    ]
    assert (
        didgw(
            "device", "suspend", sensor, "--reason", "battery swap", "--by", "fm:bob", env=env
        ).returncode
        == 0
    )
    shown = json.loads(didgw("device", "show", sensor, "--json", env=env).stdout)
    assert shown["status"] == "suspended"
    assert [(h["action"], h["actor"], h["reason"]) for h in shown["history"]] == [
        ("register", "fm:alice", "registered"),
        ("suspend", "fm:bob", "battery swap"),
    ]
    assert didgw("device", "resume", sensor, "--reason", "done", env=env).returncode == 0
    rotated = didgw("device", "rotate", sensor, spare, "--reason", "key rotation", env=env)
    assert rotated.returncode == 0 and "replaced by" in rotated.stdout
    text = didgw("device", "show", spare, env=env).stdout
    assert "replaces: " + sensor in text and "cellar temperature" in text
    human = didgw("device", "list", env=env).stdout
    assert "revoked" in human and "active" in human

    before = dump(tmp_path / "s" / "didgw.db")
    for args, message in (
        (["device", "register", spare, "--name", "x", "--kind", "sensor"], "already registered"),
        (
            ["device", "register", "did:key:z6MkBAD0", "--name", "x", "--kind", "sensor"],
            "not valid base58btc",
        ),
        (
            ["device", "register", "did:key:nope", "--name", "x", "--kind", "sensor"],
            "prefix 'n' is not supported",
        ),
        (
            ["device", "register", "did:example:1", "--name", "x", "--kind", "sensor"],
            "not supported",
        ),
        (["device", "register", owner, "--name", "x", "--kind", "toaster"], "unknown device kind"),
        (
            ["device", "register", owner, "--name", "x", "--kind", "sensor", "--meta", "novalue"],
            "KEY=VALUE",
        ),
        (["device", "show", owner], "no device"),
        (["device", "suspend", sensor, "--reason", "x"], "revoked, which is permanent"),
        (["device", "revoke", "did:key:", "--reason", "x"], "not a DID"),
    ):
        result = didgw(*args, env=env)
        assert result.returncode == 1, args
        assert message in result.stderr, (args, result.stderr)
        assert result.stderr.startswith("didgw: error: ")
    assert dump(tmp_path / "s" / "didgw.db") == before
    usage = didgw("device", "suspend", spare, env=env)
    assert usage.returncode == 2 and "--reason" in usage.stderr


def test_config_example_and_check(didgw: Run, tmp_path: Path) -> None:
    example = didgw("config", "example").stdout
    assert example == (ROOT / "configs" / "gateway.toml").read_text()
    path = tmp_path / "g.toml"
    path.write_text(example)
    check = didgw("config", "check", "--config", str(path))
    assert check.returncode == 0 and f"ok: {path}" in check.stdout


def test_a_key_in_its_old_section_works_and_the_warning_names_its_new_place(
    didgw: Run, tmp_path: Path
) -> None:
    path = tmp_path / "old.toml"
    path.write_text("[mqtt]\nclock_skew_seconds = 60\n")
    check = didgw("config", "check", "--config", str(path))
    assert check.returncode == 0 and f"ok: {path}" in check.stdout
    assert check.stderr == (
        f"{path}: [mqtt] clock_skew_seconds is deprecated: use [devices] clock_skew_seconds\n"
    )
    path.write_text("[devices]\nclock_skew_seconds = 60\n")
    assert didgw("config", "check", "--config", str(path)).stderr == ""


def test_config_check_warns_about_servers_off_loopback(didgw: Run, tmp_path: Path) -> None:
    """Valid, so still "ok" (exit 0), but each exposure is a WARNING line naming the key
    and why, on stderr."""
    path = tmp_path / "exposed.toml"
    path.write_text('[metrics]\nhost = "0.0.0.0"\n[coap]\nenabled = true\nhost = "::"\n')
    check = didgw("config", "check", "--config", str(path))
    assert check.returncode == 0
    assert f"ok: {path}, with 2 exposure warning(s) below" in check.stdout
    lines = check.stderr.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("WARNING: [coap] host: CoAP is served on every interface")
    assert "readings travel unencrypted" in lines[0]
    assert lines[1].startswith("WARNING: [metrics] host: the metrics are served on every")
    assert "without authentication" in lines[1]
    path.write_text('[metrics]\nhost = "127.0.0.1"\n[coap]\nenabled = true\nhost = "::1"\n')
    check = didgw("config", "check", "--config", str(path))
    assert check.stderr == "" and check.stdout.startswith(f"ok: {path}\n")

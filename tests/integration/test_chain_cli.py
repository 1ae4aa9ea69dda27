"""``didgw chain …`` as an operator and a third party use it: real processes, real files."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import Run

from gateway.chain.store import ChainStore, NewEntry
from gateway.chain.verify import verify_consistency, verify_inclusion
from gateway.db import connect
from gateway.identity import offline_resolver, verify_jws

pytestmark = pytest.mark.integration

DEVICE = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"


@pytest.fixture
def state(didgw: Run, tmp_path: Path) -> Path:
    state = tmp_path / "state"
    assert didgw("init", "--state-dir", str(state)).returncode == 0
    store = ChainStore(connect(state / "didgw.db"))
    items = [NewEntry("reading", DEVICE, b'{"kWh": %d}' % i) for i in range(100)]
    store.append_batch(items, now_ms=1_700_000_000_000)
    store.close()
    return state


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_note_is_signed_by_the_gateway(didgw: Run, state: Path) -> None:
    out = ok(
        didgw("chain", "note", "meter 4711 replaced", "--by", "fm:alice", "--state-dir", str(state))
    )
    assert "recorded note as entry 100" in out
    shown = json.loads(ok(didgw("chain", "show", "100", "--state-dir", str(state))))
    assert shown["kind"] == "note" and not shown["erased"]
    token = shown["payload"]
    verified = verify_jws(
        token, resolver=offline_resolver(), relationship="assertionMethod", now=time.time()
    )
    assert verified.signer.did == shown["actor"]  # the gateway's DID
    body = json.loads(verified.payload)
    assert (body["note"], body["by"]) == ("meter 4711 replaced", "fm:alice")
    note_file = state.parent / "note.txt"
    note_file.write_text("filter cleaned\n")
    assert "entry 101" in ok(
        didgw("chain", "note", "--file", str(note_file), "--state-dir", str(state))
    )
    empty = didgw("chain", "note", "--state-dir", str(state))
    assert empty.returncode == 1 and "give the note" in empty.stderr


def test_proofs_printed_by_the_cli_verify_with_the_standalone_verifier(
    didgw: Run, state: Path
) -> None:
    proof = json.loads(ok(didgw("chain", "proof", "42", "--size", "77", "--state-dir", str(state))))
    assert (proof["leaf_index"], proof["tree_size"]) == (42, 77)
    verify_inclusion(
        bytes.fromhex(proof["leaf_hash"]),
        42,
        77,
        [bytes.fromhex(h) for h in proof["path"]],
        bytes.fromhex(proof["root"]),
    )
    whole = json.loads(ok(didgw("chain", "proof", "0", "--state-dir", str(state))))
    assert whole["tree_size"] == 100
    consistency = json.loads(
        ok(didgw("chain", "consistency", "77", "100", "--state-dir", str(state)))
    )
    assert consistency["first_root"] == proof["root"]
    verify_consistency(
        77,
        100,
        [bytes.fromhex(h) for h in consistency["path"]],
        bytes.fromhex(consistency["first_root"]),
        bytes.fromhex(consistency["second_root"]),
    )
    for args, message in (
        (["chain", "proof", "100"], "not in a tree of size 100"),
        (["chain", "proof", "5", "--size", "101"], "tree size 101"),
        (["chain", "consistency", "0", "10"], "first size"),
        (["chain", "show", "100"], "no entry 100"),
    ):
        refused = didgw(*args, "--state-dir", str(state))
        assert refused.returncode == 1 and message in refused.stderr, (args, refused.stderr)


def test_export_and_checkpoint_verify_offline_without_the_database(
    didgw: Run, state: Path, tmp_path: Path
) -> None:
    checkpoint = ok(didgw("chain", "checkpoint", "--state-dir", str(state)))
    lines = checkpoint.splitlines()
    assert lines[0].startswith("did:key:z6Mk") and lines[1] == "100"
    assert len(base64.b64decode(lines[2])) == 32 and lines[3].startswith("time ")
    assert lines[4] == "" and lines[5].startswith(f"\u2014 {lines[0]} ")
    ok(didgw("chain", "note", "after the checkpoint", "--state-dir", str(state)))
    ok(didgw("chain", "erase", "7", "--reason", "household moved", "--state-dir", str(state)))

    third_party = tmp_path / "third-party"
    third_party.mkdir()
    (third_party / "checkpoint.txt").write_text(checkpoint)
    ok(didgw("chain", "export", "-o", str(third_party / "record.jsonl"), "--state-dir", str(state)))
    export = (third_party / "record.jsonl").read_text().splitlines()
    assert len(export) == 102
    first = json.loads(export[0])
    assert {"seq", "leaf_hash", "prev_hash", "hash"} <= set(first) and first["seq"] == 0
    assert json.loads(export[7])["payload"] is None  # erased, still verifiable
    result = didgw(
        "chain",
        "verify",
        "--export",
        "record.jsonl",
        "--checkpoint",
        "checkpoint.txt",
        cwd=third_party,
        env={"DIDGW_STATE_DIR": str(tmp_path / "nowhere")},
    )
    assert "ok: 102 entries; the first 100 match the checkpoint" in ok(result)
    assert not (tmp_path / "nowhere").exists()

    forged = export[:]
    record = json.loads(forged[50])
    record["payload"] = base64.b64encode(b'{"kWh": 9999}').decode()
    forged[50] = json.dumps(record)
    (third_party / "forged.jsonl").write_text("\n".join(forged) + "\n")
    refused = didgw(
        "chain",
        "verify",
        "--export",
        "forged.jsonl",
        "--checkpoint",
        "checkpoint.txt",
        cwd=third_party,
    )
    assert refused.returncode == 1 and "seq 50: commitment mismatch" in refused.stderr
    (third_party / "bad.txt").write_text(checkpoint.replace("\n100\n", "\n101\n"))
    refused = didgw(
        "chain", "verify", "--export", "record.jsonl", "--checkpoint", "bad.txt", cwd=third_party
    )
    assert refused.returncode == 1 and "does not verify" in refused.stderr


def test_verify_names_the_first_bad_seq_of_a_tampered_database(didgw: Run, state: Path) -> None:
    out = ok(didgw("chain", "verify", "--state-dir", str(state)))
    assert out.startswith("ok: 100 entries, root ")
    copy = state.parent / "copy.db"
    conn = sqlite3.connect(state / "didgw.db")
    conn.execute(f"VACUUM INTO '{copy}'")
    conn.close()
    conn = sqlite3.connect(copy)
    conn.execute("DROP TRIGGER chain_entries_no_rewrite")
    conn.execute("UPDATE chain_entries SET ts = ts + 1 WHERE seq = 63")
    conn.commit()
    conn.close()
    refused = didgw("chain", "verify", "--db", str(copy))
    assert refused.returncode == 1
    assert "seq 63: hash mismatch" in refused.stderr
    missing = didgw("chain", "verify", "--db", str(state.parent / "none.db"))
    assert missing.returncode == 1 and "no database" in missing.stderr


def test_erase_reports_erased_not_missing(didgw: Run, state: Path) -> None:
    out = ok(
        didgw(
            "chain",
            "erase",
            "3",
            "--reason",
            "GDPR request 17",
            "--by",
            "fm:bob",
            "--state-dir",
            str(state),
        )
    )
    assert "erasure recorded as entry 100" in out
    shown = json.loads(ok(didgw("chain", "show", "3", "--state-dir", str(state))))
    assert shown["erased"] is True and shown["payload"] is None and shown["erased_by"] == 100
    erasure = json.loads(ok(didgw("chain", "show", "100", "--state-dir", str(state))))
    assert json.loads(erasure["payload"]) == {
        "erased": 3,
        "reason": "GDPR request 17",
        "by": "fm:bob",
    }
    assert "1 payloads erased" in ok(didgw("chain", "verify", "--state-dir", str(state)))
    again = didgw("chain", "erase", "3", "--reason", "x", "--state-dir", str(state))
    assert again.returncode == 1 and "already erased" in again.stderr


def test_cli_writes_are_serialised_with_a_running_appender(didgw: Run, state: Path) -> None:
    appender = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("crash_appender.py")),
            str(state / "didgw.db"),
            "x",
        ],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        time.sleep(0.3)
        for i in range(3):
            ok(
                didgw(
                    "chain", "note", f"note {i} while the gateway writes", "--state-dir", str(state)
                )
            )
    finally:
        appender.send_signal(signal.SIGKILL)
        appender.wait()
    assert "ok: " in ok(didgw("chain", "verify", "--state-dir", str(state)))
    conn = sqlite3.connect(state / "didgw.db")
    notes = conn.execute("SELECT count(*) FROM chain_entries WHERE kind = 'note'").fetchone()[0]
    conn.close()
    assert notes == 3

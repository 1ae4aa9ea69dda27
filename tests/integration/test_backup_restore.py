"""``didgw backup`` and ``didgw restore`` with real processes: a backup taken while the record
is being written holds everything committed before it began and verifies; a restore
brings back a gateway that ``chain verify`` and ``status`` accept; tampered archives,
existing states and running gateways are refused with nothing written; the daily timer's
units pass ``systemd-analyze verify``; ``didgw --version`` is pyproject's version."""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import stat
import subprocess
import tarfile
import threading
import time
import tomllib
from pathlib import Path

import pytest
from broker import Mosquitto, free_port
from gateway_process import GatewayProcess, gateway_did, make_device, records, register, seqs_of
from support import ROOT, Run, wait_until

from gateway.chain.store import ChainStore
from gateway.db import connect

pytestmark = pytest.mark.integration

DIDGW = ROOT / ".venv" / "bin" / "didgw"


def _init(didgw: Run, state: Path, notes: int = 3) -> None:
    assert didgw("init", "--state-dir", str(state)).returncode == 0
    for i in range(notes):
        result = didgw("chain", "note", f"note {i}", "--state-dir", str(state))
        assert result.returncode == 0, result.stderr


def _hashes(db: Path) -> list[bytes]:
    store = ChainStore(connect(db))
    try:
        return [e.hash for e in store.entries()]
    finally:
        store.close()


def _tree(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its content (to show nothing changed)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "didgw.lock"
    }


def _rewrite(
    archive: Path, out: Path, change: dict[str, bytes], extra: list[tarfile.TarInfo]
) -> None:
    """A copy of ``archive`` with some members' bytes replaced and members added."""
    with tarfile.open(archive) as source, tarfile.open(out, "w") as target:
        for member in source:
            data = source.extractfile(member).read()  # type: ignore[union-attr]
            data = change.get(member.name, data)
            member.size = len(data)
            target.addfile(member, io.BytesIO(data))
        for member in extra:
            target.addfile(member, io.BytesIO(b"x" * member.size) if member.isreg() else None)


# -- backup while the record is written ------------------------------------------------------


def test_a_backup_while_another_connection_writes_holds_what_was_committed_before(
    didgw: Run, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    _init(didgw, state)
    store = ChainStore(connect(state / "didgw.db"))
    did = store.entries().__next__().actor
    stop = threading.Event()
    written = [0]

    def write() -> None:
        while not stop.is_set():
            store.append("note", did, b"written during the backup %d" % written[0],
                         now_ms=int(time.time() * 1000))  # fmt: skip
            written[0] += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_until(lambda: written[0] >= 200, "the writer to get going")
        before = len(_hashes(state / "didgw.db"))  # committed before the backup began
        result = didgw("backup", str(tmp_path / "b.tar"), "--state-dir", str(state))
        during = written[0]
    finally:
        stop.set()
        writer.join()
        store.close()
    assert result.returncode == 0, result.stderr
    assert during > before, "the writer did not write while the backup ran"
    entries = int(result.stdout.split("record: ")[1].split(" entries")[0])
    assert entries >= before

    restored = tmp_path / "restored"
    result = didgw("restore", str(tmp_path / "b.tar"), "--state-dir", str(restored))
    assert result.returncode == 0, result.stderr
    assert _hashes(restored / "didgw.db") == _hashes(state / "didgw.db")[:entries]
    assert didgw("chain", "verify", "--state-dir", str(restored)).returncode == 0


def test_a_backup_while_didgw_run_records_readings_restores_every_acknowledged_one(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    gw = gateway_did(didgw, gateway.state)
    device = make_device(tmp_path, mosquitto, "meter", gw)
    register(didgw, gateway.state, device.did, "meter")
    gateway.start()
    stop = threading.Event()

    def send() -> None:
        i = 0
        while not stop.is_set():
            device.publish_reading("energy", {"import_kwh": {"value": i, "unit": "kWh"}})
            i += 1
            time.sleep(0.01)

    sender = threading.Thread(target=send)
    try:
        device.start(timeout=15)
        sender.start()
        wait_until(lambda: len(device.acks) >= 30, "30 readings acknowledged", timeout=30)
        acked = {a["seq"] for a in list(device.acks) if a["status"] == "accepted"}
        result = didgw("backup", str(tmp_path / "live.tar"), "--state-dir", str(gateway.state))
        assert result.returncode == 0, result.stderr
        acked_after = len(device.acks)
        # The running gateway's state is refused, even with --force.
        refused = didgw(
            "restore", str(tmp_path / "live.tar"), "--state-dir", str(gateway.state), "--force"
        )
        assert refused.returncode == 1
        assert "in use by another didgw" in refused.stderr and "stop it first" in refused.stderr
        assert not list(gateway.state.glob("replaced-*"))
    finally:
        stop.set()
        if sender.is_alive():
            sender.join()
        device.stop()
        assert gateway.stop() == 0, gateway.output
    assert acked_after > len(acked), "no reading was acknowledged while the backup ran"

    restored = tmp_path / "restored"
    result = didgw("restore", str(tmp_path / "live.tar"), "--state-dir", str(restored))
    assert result.returncode == 0, result.stderr
    assert acked <= set(seqs_of(records(restored)))
    verify = didgw("chain", "verify", "--state-dir", str(restored))
    assert verify.returncode == 0, verify.stderr


# -- restore ----------------------------------------------------------------------------


def test_restore_onto_an_empty_state_gives_a_gateway_that_verifies_and_reports(
    didgw: Run, tmp_path: Path
) -> None:
    state, restored = tmp_path / "state", tmp_path / "restored"
    _init(didgw, state)
    config = tmp_path / "gateway.toml"
    config.write_text(f"[metrics]\nport = {free_port()}\n")
    archive = tmp_path / "b.tar"
    # umask 0: the archive is 0600 because it is created so, not because of the umask.
    made = subprocess.run(
        [str(DIDGW), "backup", str(archive), "--state-dir", str(state), "--config", str(config)],
        capture_output=True, text=True, preexec_fn=lambda: os.umask(0), check=False,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert "record: 3 entries, verified" in made.stdout
    assert "PRIVATE" not in made.stdout and "BEGIN" not in made.stdout  # nothing secret
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left

    result = didgw(
        "restore", str(archive), "--state-dir", str(restored), "--config", str(config),
        "--write-config", str(tmp_path / "restored.toml"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "3 entries, verified" in result.stdout
    assert (tmp_path / "restored.toml").read_bytes() == config.read_bytes()
    assert stat.S_IMODE((tmp_path / "restored.toml").stat().st_mode) == 0o600
    verify = didgw("chain", "verify", "--state-dir", str(restored))
    assert verify.returncode == 0 and "ok: 3 entries" in verify.stdout
    status = didgw("status", "--state-dir", str(restored), "--config", str(config))
    assert "record:" in status.stdout and "3 entries" in status.stdout, status.stdout
    assert gateway_did(didgw, restored) == gateway_did(didgw, state)  # the same keys

    assert stat.S_IMODE(restored.stat().st_mode) == 0o700
    assert stat.S_IMODE((restored / "keys").stat().st_mode) == 0o700
    keys = sorted((restored / "keys").iterdir())
    assert {k.name for k in keys} >= {"gateway.pem", "ledger.pem", "broker-token.key", "tls-ca.pem"}
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    assert stat.S_IMODE((restored / "didgw.db").stat().st_mode) == 0o600
    assert (restored / "tls" / "ca.crt").read_bytes() == (state / "tls" / "ca.crt").read_bytes()


def test_restore_refuses_an_existing_gateway_unless_forced_then_moves_it_aside(
    didgw: Run, tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _init(didgw, first, notes=1)
    _init(didgw, second, notes=2)
    assert didgw("backup", str(tmp_path / "b.tar"), "--state-dir", str(first)).returncode == 0
    before = _tree(second)

    refused = didgw("restore", str(tmp_path / "b.tar"), "--state-dir", str(second))
    assert refused.returncode == 1
    assert "already holds a gateway" in refused.stderr and "--force" in refused.stderr
    assert _tree(second) == before

    forced = didgw("restore", str(tmp_path / "b.tar"), "--state-dir", str(second), "--force")
    assert forced.returncode == 0, forced.stderr
    (aside,) = second.glob("replaced-*")
    assert str(aside) in forced.stdout
    assert stat.S_IMODE(aside.stat().st_mode) == 0o700
    assert _tree(aside) == before  # the old gateway, whole
    assert gateway_did(didgw, second) == gateway_did(didgw, first)
    verify = didgw("chain", "verify", "--state-dir", str(second))
    assert "ok: 1 entries" in verify.stdout
    # The next backup leaves the replaced state out.
    assert didgw("backup", str(tmp_path / "c.tar"), "--state-dir", str(second)).returncode == 0
    with tarfile.open(tmp_path / "c.tar") as tar:
        assert not [n for n in tar.getnames() if "replaced-" in n]


@pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: restores as root into another account's state"
)
def test_root_restoring_a_services_state_gives_it_the_services_account(
    didgw: Run, tmp_path: Path
) -> None:
    state, service = tmp_path / "state", tmp_path / "service"
    _init(didgw, state, notes=1)
    assert didgw("backup", str(tmp_path / "b.tar"), "--state-dir", str(state)).returncode == 0
    service.mkdir(mode=0o700)
    os.chown(service, 65534, 65534)  # nobody, as systemd's StateDirectory= gives didgw
    (service / "old").write_text("the state before")
    result = didgw("restore", str(tmp_path / "b.tar"), "--state-dir", str(service), "--force")
    assert result.returncode == 0, result.stderr
    owners = {p.relative_to(service): p.lstat().st_uid for p in service.rglob("*")}
    assert set(owners.values()) == {65534}, owners
    assert Path("didgw.lock") in owners and Path("keys/gateway.pem") in owners


@pytest.mark.parametrize(
    "tamper", ["one byte of the database", "a ../ member", "a link", "no manifest"]
)
def test_a_tampered_archive_is_refused_and_nothing_is_written(
    didgw: Run, tmp_path: Path, tamper: str
) -> None:
    state = tmp_path / "state"
    _init(didgw, state)
    good = tmp_path / "good.tar"
    assert didgw("backup", str(good), "--state-dir", str(state)).returncode == 0
    bad = tmp_path / "bad.tar"
    with tarfile.open(good) as tar:
        db = tar.extractfile("state/didgw.db").read()  # type: ignore[union-attr]
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())  # type: ignore[union-attr]
    if tamper == "one byte of the database":
        changed = bytearray(db)
        changed[len(changed) // 2] ^= 0x01
        _rewrite(good, bad, {"state/didgw.db": bytes(changed)}, [])
        expected = "does not match its SHA-256"
    elif tamper == "a ../ member":
        escape = tarfile.TarInfo("state/../../escaped")
        escape.size = 4
        manifest["members"][escape.name] = {"sha256": "0" * 64, "size": 4, "mode": 0o600}
        _rewrite(good, bad, {"MANIFEST.json": json.dumps(manifest).encode()}, [escape])
        expected = "refused: a path that leaves the archive"
    elif tamper == "a link":
        link = tarfile.TarInfo("state/keys/evil.pem")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        manifest["members"][link.name] = {"sha256": "0" * 64, "size": 0, "mode": 0o600}
        _rewrite(good, bad, {"MANIFEST.json": json.dumps(manifest).encode()}, [link])
        expected = "refused: a link"
    else:
        with tarfile.open(bad, "w") as tar:
            info = tarfile.TarInfo("state/didgw.db")
            info.size = len(db)
            tar.addfile(info, io.BytesIO(db))
        expected = "does not begin with MANIFEST.json"

    restored = tmp_path / "restored"
    result = didgw("restore", str(bad), "--state-dir", str(restored))
    assert result.returncode == 1
    assert expected in result.stderr, result.stderr
    assert not restored.exists()
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    # Onto an existing (empty) state: it stays empty.
    restored.mkdir(mode=0o700)
    again = didgw("restore", str(bad), "--state-dir", str(restored), "--force")
    assert again.returncode == 1
    assert [p.name for p in restored.iterdir()] in ([], ["didgw.lock"])
    # The good archive restores (the check can pass).
    assert didgw("restore", str(good), "--state-dir", str(restored)).returncode == 0


def test_a_file_that_is_not_a_backup_is_refused(didgw: Run, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar archive at all" * 100)
    result = didgw("restore", str(junk), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 1 and "is not a didgw backup" in result.stderr
    assert not (tmp_path / "state").exists()


# -- refusals of the backup --------------------------------------------------------------


def test_backup_refuses_an_existing_file_unless_forced(didgw: Run, tmp_path: Path) -> None:
    state = tmp_path / "state"
    _init(didgw, state)
    target = tmp_path / "b.tar"
    target.write_bytes(b"precious")
    result = didgw("backup", str(target), "--state-dir", str(state))
    assert result.returncode == 1
    assert "already exists; not overwriting it (use --force)" in result.stderr
    assert target.read_bytes() == b"precious"
    forced = didgw("backup", str(target), "--state-dir", str(state), "--force")
    assert forced.returncode == 0, forced.stderr
    assert tarfile.is_tarfile(target) and stat.S_IMODE(target.stat().st_mode) == 0o600
    inside = didgw("backup", str(state / "b.tar"), "--state-dir", str(state))
    assert inside.returncode == 1 and "inside the state directory" in inside.stderr
    nowhere = didgw("backup", str(tmp_path / "no" / "b.tar"), "--state-dir", str(state))
    assert nowhere.returncode == 1 and "is not a directory" in nowhere.stderr


def test_a_full_disk_leaves_no_partial_backup(didgw: Run, tmp_path: Path) -> None:
    """The file size limit makes writes fail past 64 KiB, as a full disk does (EFBIG where
    the disk says ENOSPC: the same failed write)."""
    state = tmp_path / "state"
    _init(didgw, state)
    out = tmp_path / "out"
    out.mkdir()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    result = subprocess.run(
        [str(DIDGW), "backup", str(out / "b.tar"), "--state-dir", str(state)],
        capture_output=True, text=True, preexec_fn=limit, check=False,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 1
    assert "cannot" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert list(out.iterdir()) == []


def test_backup_dir_keeps_the_newest_and_nothing_else_is_touched(
    didgw: Run, tmp_path: Path
) -> None:
    state, backups = tmp_path / "state", tmp_path / "backups"
    _init(didgw, state, notes=0)
    backups.mkdir()
    old = [backups / f"didgw-2026010{i}T000000Z.tar" for i in range(1, 4)]
    for path in old:
        path.write_bytes(b"old")
    (backups / "mine.tar").write_bytes(b"not the timer's")
    result = didgw("backup", "--dir", str(backups), "--keep", "2", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    kept = sorted(p.name for p in backups.iterdir())
    assert kept[0] == old[2].name and len(kept) == 3 and "mine.tar" in kept
    bad = didgw("backup", "--dir", str(backups), "--keep", "0", "--state-dir", str(state))
    assert bad.returncode == 1 and len(list(backups.iterdir())) == 3


# -- the timer and the version --------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_the_backup_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    for name in ("didgw-backup.service", "didgw-backup.timer"):
        text = (ROOT / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/opt/didgw/.venv/bin/didgw", str(DIDGW)))
    service = (tmp_path / "didgw-backup.service").read_text()
    assert "--state-dir /var/lib/didgw" in service and "User=didgw" in service
    result = subprocess.run(
        ["systemd-analyze", "verify", "didgw-backup.service", "didgw-backup.timer"],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr
    timer = (tmp_path / "didgw-backup.timer").read_text()
    assert "OnCalendar=daily" in timer and "WantedBy=timers.target" in timer
    (tmp_path / "didgw-backup.timer").write_text(timer.replace("OnCalendar=", "OnCalender="))
    broken = subprocess.run(
        ["systemd-analyze", "verify", "didgw-backup.service", "didgw-backup.timer"],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert "OnCalender" in broken.stderr  # the check can fail


def test_version_is_pyprojects(didgw: Run) -> None:
    with (ROOT / "pyproject.toml").open("rb") as file:
        version = tomllib.load(file)["project"]["version"]
    result = didgw("--version")
    assert result.returncode == 0
    assert result.stdout == f"didgw {version}\n"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{version}]" in changelog

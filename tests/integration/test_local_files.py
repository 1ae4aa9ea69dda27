"""What another account on the gateway's machine could read or make the gateway write: secret
files readable by others, the database's mode, an export through a symbolic link, and the
secrets inherited by the gateway's child processes. Real files and real processes (the real
``didgw`` command, a real mosquitto, ``didgw run`` with its reading workers)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Mosquitto
from gateway_process import GatewayProcess, gateway_did, make_device, records, register
from support import Run, wait_until

from gateway.db import connect

pytestmark = pytest.mark.integration

PASSPHRASE = "passphrase-of-the-gateway-key-4711"


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The umask of a login shell (022), whatever the test runner's: modes are what is tested."""
    before = os.umask(0o022)
    yield
    os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def secret_file(path: Path, content: str, file_mode: int) -> Path:
    path.write_text(content + "\n")
    path.chmod(file_mode)
    return path


# -- secret files named by the configuration ----------------------------------------------


@pytest.mark.parametrize(
    ("section", "key"), [("mqtt", "password_file"), ("keys", "passphrase_file")]
)
@pytest.mark.parametrize("file_mode", [0o644, 0o640, 0o604], ids=["0644", "0640", "0604"])
def test_a_secret_file_readable_by_others_is_refused_like_a_key(
    didgw: Run, tmp_path: Path, section: str, key: str, file_mode: int
) -> None:
    secret = secret_file(tmp_path / "secret", "s3cret-value", file_mode)
    config = tmp_path / "gateway.toml"
    config.write_text(f'[{section}]\n{key} = "{secret}"\n')
    state = tmp_path / "state"
    for args in (["config", "check"], ["init"]):
        result = didgw(*args, "--config", str(config), "--state-dir", str(state))
        assert result.returncode == 1, f"didgw {' '.join(args)} accepted a {file_mode:04o} file"
        assert f"[{section}] {key}: {secret} is accessible by group or others" in result.stderr
        assert f"(mode {file_mode:04o}); run: chmod 600 {secret}" in result.stderr
        assert "s3cret-value" not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr
    assert not state.exists()
    secret.chmod(0o600)
    assert didgw("config", "check", "--config", str(config)).returncode == 0


def test_a_passphrase_file_given_on_the_command_line_is_checked_too(
    didgw: Run, tmp_path: Path
) -> None:
    secret = secret_file(tmp_path / "pass", PASSPHRASE, 0o644)
    result = didgw("did", "new", "-o", "dev.pem", "--passphrase-file", str(secret))
    assert result.returncode == 1
    assert f"{secret} is accessible by group or others (mode 0644)" in result.stderr
    assert not (tmp_path / "dev.pem").exists()


def test_a_secret_file_through_a_symbolic_link_is_checked_at_its_target(
    didgw: Run, tmp_path: Path
) -> None:
    """Secrets are often links (a Kubernetes secret, a file under /etc/credstore): the link's
    own mode (0777) means nothing, the target's does."""
    target = secret_file(tmp_path / "real-pass", PASSPHRASE, 0o600)
    link = tmp_path / "pass"
    link.symlink_to(target)
    config = tmp_path / "gateway.toml"
    config.write_text(f'[keys]\npassphrase_file = "{link}"\n')
    assert didgw("config", "check", "--config", str(config)).returncode == 0
    target.chmod(0o644)
    result = didgw("config", "check", "--config", str(config))
    assert result.returncode == 1 and "(mode 0644)" in result.stderr


# -- the database --------------------------------------------------------------------------


def database_files(state: Path) -> list[Path]:
    return sorted(p for p in state.iterdir() if p.name.startswith("didgw.db"))


def test_the_database_and_its_journal_are_created_0600_under_umask_022(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path
) -> None:
    gw = gateway_did(didgw, gateway.state)
    device = make_device(tmp_path, mosquitto, "meter", gw)
    register(didgw, gateway.state, device.did, "meter")
    gateway.start()
    try:
        device.start(timeout=15)
        device.publish_reading("energy", {"import_kwh": {"value": 1, "unit": "kWh"}})
        assert device.wait_acked(timeout=20), device.stats
        names = {p.name for p in database_files(gateway.state)}
        assert {"didgw.db", "didgw.db-wal", "didgw.db-shm"} <= names, names
        modes = {p.name: f"{mode(p):04o}" for p in database_files(gateway.state)}
        assert set(modes.values()) == {"0600"}, modes
    finally:
        device.stop()
        assert gateway.stop() == 0, gateway.output


def test_existing_database_files_readable_by_others_are_made_0600_and_said_once(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess
) -> None:
    gateway_did(didgw, gateway.state)
    backup = gateway.state / "didgw.db.pre-0007_example"  # as an upgrade leaves it
    backup.write_bytes((gateway.state / "didgw.db").read_bytes())
    for path in database_files(gateway.state):
        path.chmod(0o644)
    gateway.start()
    try:
        modes = {p.name: f"{mode(p):04o}" for p in database_files(gateway.state)}
        assert set(modes.values()) == {"0600"}, modes
    finally:
        assert gateway.stop() == 0, gateway.output
    said = "were readable by group or others"
    told = [line for line in gateway.output.splitlines() if said in line]
    assert len(told) == 1, gateway.output
    assert "didgw.db" in told[0] and "didgw.db.pre-0007_example" in told[0]
    assert "now 0600" in told[0]
    gateway.start()
    assert gateway.stop() == 0
    assert said not in gateway.output


def count_in_another_process(path: Path) -> int:
    """Open, read and close the database in another process, as a CLI command does."""
    script = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
    script += "print(c.execute('SELECT count(*) FROM t').fetchone()[0]); c.close()"
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


def test_opening_the_database_keeps_the_locks_of_the_connections_already_open(
    tmp_path: Path,
) -> None:
    """Closing any descriptor of a file drops all of the process's POSIX locks on it, SQLite's
    too. Opening the file to fix its mode beside an open connection would let another
    process, closing its own, believe it was the last one: it would then delete the
    write-ahead log under the first connection, and what that one writes next is lost."""
    path = tmp_path / "g.db"
    first = connect(path)
    with first.conn:
        first.execute("CREATE TABLE t (n INTEGER)")
        first.execute("INSERT INTO t VALUES (1)")
    connect(path).close()  # another connection of this process (a recorder, a worker's)
    assert count_in_another_process(path) == 1
    with first.conn:
        first.execute("INSERT INTO t VALUES (2)")
    assert count_in_another_process(path) == 2
    first.close()


# -- files the commands write -----------------------------------------------------------------


def test_chain_export_writes_a_new_0600_file_and_never_follows_a_symbolic_link(
    didgw: Run, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    assert didgw("init", "--state-dir", str(state)).returncode == 0
    assert didgw("chain", "note", "a note", "--state-dir", str(state)).returncode == 0
    export = ["chain", "export", "--state-dir", str(state), "-o"]

    fresh = tmp_path / "record.jsonl"
    assert didgw(*export, str(fresh)).returncode == 0
    assert mode(fresh) == 0o600 and fresh.read_text().count("\n") == 1

    victim = tmp_path / "victim"
    victim.write_text("someone else's file\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(victim)
    refused = didgw(*export, str(link))
    assert refused.returncode == 1
    assert f"{link} already exists" in refused.stderr and "Traceback" not in refused.stderr
    assert victim.read_text() == "someone else's file\n"
    forced = didgw(*export, str(link), "--force")
    assert forced.returncode == 0, forced.stderr
    assert victim.read_text() == "someone else's file\n"  # the link was replaced, not followed
    assert not link.is_symlink() and mode(link) == 0o600

    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "would-be-created")
    assert didgw(*export, str(dangling)).returncode == 1
    assert not (tmp_path / "would-be-created").exists()

    existing = tmp_path / "existing.jsonl"
    existing.write_text("kept\n")
    again = didgw(*export, str(existing))
    assert again.returncode == 1 and "--force" in again.stderr
    assert existing.read_text() == "kept\n"
    assert didgw(*export, str(existing), "--force").returncode == 0
    assert existing.read_text() == fresh.read_text() and mode(existing) == 0o600


def test_a_refused_export_leaves_no_file(didgw: Run, tmp_path: Path) -> None:
    out = tmp_path / "record.jsonl"
    result = didgw("chain", "export", "--state-dir", str(tmp_path / "none"), "-o", str(out))
    assert result.returncode == 1 and "no gateway in" in result.stderr
    assert not out.exists()


# -- secrets and child processes ---------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (workers, multiprocessing's resource tracker, …)."""
    found: list[int] = []
    parents = {pid}
    while True:
        more = []
        for stat_file in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat_file.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            child = int(stat_file.parent.name)
            if int(fields[1]) in parents and child not in found:
                more.append(child)
        if not more:
            return found
        found += more
        parents = set(more)


def proc_text(pid: int, what: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{what}").read_bytes()
    except OSError:
        return b""  # the process has gone meanwhile: it cannot be holding anything


@pytest.mark.parametrize("source", ["environment", "files"])
def test_no_child_process_of_the_gateway_holds_its_secrets(
    didgw: Run, mosquitto: Mosquitto, gateway: GatewayProcess, tmp_path: Path, source: str
) -> None:
    """The broker password and the key passphrase, given in the environment or in files, are
    neither in the environment nor on the command line of any process the gateway starts; and
    its reading workers, which need the broker password, still take readings."""
    gateway.state = tmp_path / "encrypted-state"  # the fixture's key is not encrypted
    extra = "verify_workers = 2\n"
    if source == "environment":
        env = {"DIDGW_KEY_PASSPHRASE": PASSPHRASE}  # and GatewayProcess sets the password's
    else:
        password_file = secret_file(tmp_path / "mqtt-pass", mosquitto.gateway_password, 0o600)
        passphrase_file = secret_file(tmp_path / "key-pass", PASSPHRASE, 0o600)
        extra += f'password_file = "{password_file}"\n'
        extra += f'[keys]\npassphrase_file = "{passphrase_file}"\n'
        env = {"DIDGW_MQTT_PASSWORD": ""}  # not set: the file is used
    gateway.config.write_text(gateway.config.read_text() + extra)
    init = didgw(
        "init", "--state-dir", str(gateway.state), "--config", str(gateway.config), env=env
    )
    assert init.returncode == 0 and "encrypted" in init.stdout, init.stderr
    gw = init.stdout.split("Gateway DID: ")[1].strip()
    device = make_device(tmp_path, mosquitto, "meter", gw)
    register(didgw, gateway.state, device.did, "meter")
    gateway.start(env=env)
    assert gateway.process is not None
    secrets = {"broker password": mosquitto.gateway_password, "key passphrase": PASSPHRASE}
    try:
        device.start(timeout=15)
        for i in range(10):
            device.publish_reading("energy", {"import_kwh": {"value": i, "unit": "kWh"}})
        assert device.wait_acked(timeout=30), device.stats
        wait_until(lambda: len(descendants(gateway.process.pid)) >= 2, "two reading workers")
        children = descendants(gateway.process.pid)
        leaks = [
            f"the {name} in /proc/{pid}/{what}"
            for pid in children
            for what in ("environ", "cmdline")
            for name, secret in secrets.items()
            if secret.encode() in proc_text(pid, what)
        ]
        assert not leaks, f"{len(children)} child processes; found {leaks}"
    finally:
        device.stop()
        assert gateway.stop() == 0, gateway.output
    assert len(records(gateway.state)) == 10

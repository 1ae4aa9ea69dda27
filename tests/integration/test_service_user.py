"""Admin commands on a gateway whose state belongs to another user, as the installed
service's does (``didgw``, here ``nobody``): root's command runs as that user, so that what
it writes stays the service's; anyone else is told the exact command to run."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Run

from gateway.identity import keystore
from gateway.identity.signing import Signer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="owning a state as another user takes root"),
]

OWNER = pwd.getpwnam("nobody")
OTHER = pwd.getpwnam("daemon")
DIDGW = str(Path(sys.executable).with_name("didgw"))


def new_did() -> str:
    return Signer.for_did_key(keystore.generate_key()).did


@pytest.fixture
def service_state(didgw: Run) -> Iterator[Path]:
    """An initialised state with one device, then given to ``nobody`` (in a directory every
    user may pass through, as /var/lib is)."""
    base = Path(tempfile.mkdtemp(prefix="didgw-service-"))
    base.chmod(0o755)
    state = base / "state"
    try:
        on = ("--state-dir", str(state))
        assert didgw("init", *on).returncode == 0
        made = didgw("device", "register", new_did(), "--name", "meter 1", "--kind", "meter", *on)
        assert made.returncode == 0, made.stderr
        for path in [state, *state.rglob("*")]:
            os.lchown(path, OWNER.pw_uid, OWNER.pw_gid)
        yield state
    finally:
        shutil.rmtree(base)


def python_readable_by(user: pwd.struct_passwd) -> bool:
    """Whether ``user`` can run this Python (a pyenv under /root cannot be: its standard
    library is root's alone; an installed gateway uses Debian's python3)."""
    probe = subprocess.run(
        ["setpriv", "--reuid", str(user.pw_uid), "--regid", str(user.pw_gid), "--clear-groups",
         sys.executable, "-c", "import sqlite3, ssl, json"],
        capture_output=True, timeout=30, check=False, cwd="/",
    )  # fmt: skip
    return probe.returncode == 0


def test_root_runs_a_command_on_the_services_state_as_its_owner(
    didgw: Run, service_state: Path
) -> None:
    if not python_readable_by(OWNER):
        pytest.skip(f"{OWNER.pw_name} cannot run {sys.executable}")
    on = ("--state-dir", str(service_state))
    listed = didgw("device", "list", *on)
    assert listed.returncode == 0, listed.stderr
    assert "meter 1" in listed.stdout
    added = didgw("device", "register", new_did(), "--name", "meter 2", "--kind", "meter", *on)
    assert added.returncode == 0, added.stderr
    assert "meter 2" in didgw("device", "list", *on).stdout
    # everything there, the database's journal files included, is still the owner's
    owners = {p.lstat().st_uid for p in [service_state, *service_state.rglob("*")]}
    assert owners == {OWNER.pw_uid}


def test_another_user_is_told_the_command_to_run(service_state: Path) -> None:
    before = sorted((p, p.stat().st_mtime_ns) for p in service_state.rglob("*"))
    run = subprocess.run(
        ["setpriv", "--reuid", str(OTHER.pw_uid), "--regid", str(OTHER.pw_gid),
         "--clear-groups", DIDGW, "device", "list", "--state-dir", str(service_state)],
        capture_output=True, text=True, timeout=60, check=False, cwd="/",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/", "LANG": "C.UTF-8"},
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"belongs to {OWNER.pw_name}" in run.stderr
    assert f"sudo -u {OWNER.pw_name} {DIDGW} device list --state-dir {service_state}" in run.stderr
    assert sorted((p, p.stat().st_mtime_ns) for p in service_state.rglob("*")) == before

"""The Debian package (scripts/build-deb.sh): built once for amd64, looked at with dpkg-deb
and lintian, its code run from the package's own files, and installed, reinstalled (the
upgrade path), removed and purged for real in a throwaway root (an overlay over this
machine's / in a private mount and network namespace, so nothing reaches the real system
and nothing could be downloaded)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
EM_X86_64 = 62  # ELF e_machine

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb missing (dpkg-dev)"),
]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [ROOT / "scripts" / "build-deb.sh", "--no-lintian", "--out", str(out), "amd64"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return out / f"didgw_{VERSION}_amd64.deb"


@pytest.fixture(scope="module")
def tree(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's files (dpkg-deb -x) with its control files in DEBIAN/ (-e)."""
    root = tmp_path_factory.mktemp("tree")
    subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
    subprocess.run(["dpkg-deb", "-e", deb, root / "DEBIAN"], check=True)
    return root


def field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", deb, name], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_control_fields(deb: Path) -> None:
    assert field(deb, "Package") == "didgw"
    assert field(deb, "Version") == VERSION
    assert field(deb, "Architecture") == "amd64"
    depends = [d.strip() for d in field(deb, "Depends").split(",")]
    for needed in ("python3 (>= 3.11)", "python3 (<< 3.12)", "libsodium23", "libssl3"):
        assert needed in depends
    assert any(d.startswith("mosquitto") for d in depends)


def test_files_units_and_conffiles(tree: Path) -> None:
    for path in (
        "lib/systemd/system/didgw.service",
        "lib/systemd/system/didgw-tls-renew.service",
        "lib/systemd/system/didgw-tls-renew.timer",
        "lib/systemd/system/didgw-backup.service",
        "lib/systemd/system/didgw-backup.timer",
        "lib/systemd/system/mosquitto.service.d/didgw.conf",
        "usr/lib/sysusers.d/didgw.conf",
        "usr/lib/tmpfiles.d/didgw.conf",
        "usr/share/doc/didgw/copyright",
        "opt/didgw/.venv/lib/python3.11/site-packages/gateway/cli/__init__.py",
    ):
        assert (tree / path).is_file(), path
    assert os.readlink(tree / "usr/bin/didgw") == "/opt/didgw/.venv/bin/didgw"
    assert os.readlink(tree / "opt/didgw/.venv/bin/python3") == "/usr/bin/python3"
    unit = (tree / "lib/systemd/system/didgw.service").read_text()
    (start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    program = start.removeprefix("ExecStart=").split()[0]
    assert (tree / program.lstrip("/")).is_file(), start
    conffiles = (tree / "DEBIAN/conffiles").read_text().split()
    assert sorted(conffiles) == ["/etc/didgw/gateway.toml", "/etc/mosquitto/didgw.conf"]
    assert not list(tree.rglob("__pycache__")), "bytecode is compiled by postinst"


def test_configuration_files(tree: Path) -> None:
    config = tomllib.loads((tree / "etc/didgw/gateway.toml").read_text())
    assert config["mqtt"]["password_file"] == "/etc/didgw/broker.password"
    assert config["mqtt"]["token_dir"] == "/var/lib/didgw-broker"
    assert config["tls"]["broker_dir"] == "/etc/mosquitto/certs/didgw"
    lines = (tree / "etc/mosquitto/didgw.conf").read_text().splitlines()
    plugins = [line.split()[1] for line in lines if line.startswith("plugin ")]
    assert plugins == [
        "/usr/lib/x86_64-linux-gnu/didgw/didgw_auth.so",
        "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    ]
    assert (tree / plugins[0].lstrip("/")).is_file()
    assert not any("aarch64" in line for line in lines)


def elf_machine(path: Path) -> int | None:
    with path.open("rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def test_native_code_is_amd64(tree: Path) -> None:
    machines = {
        p.relative_to(tree): elf_machine(p)
        for p in tree.rglob("*")
        if p.is_file() and not p.is_symlink()
    }
    native = {p: m for p, m in machines.items() if m is not None}
    assert Path("usr/lib/x86_64-linux-gnu/didgw/didgw_auth.so") in native
    assert len(native) > 20  # the dependencies' extensions too
    assert {p: m for p, m in native.items() if m != EM_X86_64} == {}


def test_maintainer_scripts_are_posix_sh(tree: Path) -> None:
    for name in ("postinst", "prerm", "postrm"):
        script = tree / "DEBIAN" / name
        assert script.read_text().startswith("#!/bin/sh\n")
        assert "\nset -e\n" in script.read_text()
        checked = subprocess.run(["sh", "-n", script], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stderr


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian missing")
def test_lintian_clean(deb: Path) -> None:
    verdict = subprocess.run(
        ["lintian", "--fail-on", "error,warning", deb],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr


def test_packaged_code_runs_on_debians_python(tree: Path, tmp_path: Path) -> None:
    """The package's environment over /usr/bin/python3 (as installed, from the extracted
    files): its own dependencies, no network, a gateway made from nothing."""
    python = tree / "opt/didgw/.venv/bin/python3"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    where = subprocess.run(
        [python, "-c", "import nacl, cryptography, coincurve, aiohttp, gateway; "
         "print(gateway.__file__); print(nacl.__file__)"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert line.startswith(str(tree)), line
    init = subprocess.run(
        [python, "-m", "gateway", "init", "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    assert "Gateway DID: did:key:z6Mk" in init.stdout


# --- a real install, in a throwaway root ------------------------------------------------


class Throwaway:
    """This machine's / under an overlay whose writes go to ``upper``: each command runs
    chrooted into it, in a new mount namespace (the overlay vanishes with it) and a new
    network namespace (no network: nothing can be downloaded, no broker reached)."""

    def __init__(self, base: Path) -> None:
        self.upper, self.work, self.merged = base / "upper", base / "work", base / "merged"
        for d in (self.upper, self.work, self.merged):
            d.mkdir()

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        setup = (
            f"mount -t overlay overlay -o lowerdir=/,upperdir={self.upper},"
            f"workdir={self.work} {self.merged} && "
            f"mount -t proc proc {self.merged}/proc && "
            f"mount --rbind /dev {self.merged}/dev && "
            f'exec chroot {self.merged} /bin/sh -c "$0"'
        )
        return subprocess.run(
            ["unshare", "--mount", "--net", "sh", "-c", setup, command],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        )

    def ok(self, command: str) -> str:
        done = self.run(command)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
        return done.stdout


@pytest.fixture
def throwaway(tmp_path: Path) -> Iterator[Throwaway]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a throwaway root needs root and unshare (util-linux)")
    root = Throwaway(tmp_path)
    probe = root.run("true")
    if probe.returncode != 0:
        pytest.skip(f"no overlay root here: {probe.stderr.strip()}")
    yield root


def modes(root: Throwaway, *paths: str) -> dict[str, str]:
    out = root.ok("stat -c '%n %a %U %G' " + " ".join(paths))
    return {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines()}


def test_install_reinstall_remove_purge(deb: Path, throwaway: Throwaway) -> None:
    shutil.copy(deb, throwaway.upper / "didgw.deb")
    installed = throwaway.run("dpkg -i /didgw.deb")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # No systemd here and no network: the broker's last step is left, and said so.
    assert "sudo didgw broker setup" in installed.stderr
    assert "dialout" in throwaway.ok("id -nG didgw").split()
    assert modes(
        throwaway,
        "/etc/didgw", "/etc/didgw/gateway.toml", "/etc/didgw/broker.password",
        "/etc/didgw/broker-admin.password", "/var/lib/didgw", "/var/lib/didgw/keys/gateway.pem",
        "/var/lib/didgw/didgw.db", "/var/lib/didgw-broker", "/etc/mosquitto/certs/didgw/broker.key",
        "/var/lib/mosquitto/dynamic-security.json",
    ) == {
        "/etc/didgw": "750 root didgw",
        "/etc/didgw/gateway.toml": "644 root root",
        "/etc/didgw/broker.password": "600 didgw didgw",
        "/etc/didgw/broker-admin.password": "600 root root",
        "/var/lib/didgw": "700 didgw didgw",
        "/var/lib/didgw/keys/gateway.pem": "600 didgw didgw",
        "/var/lib/didgw/didgw.db": "600 didgw didgw",
        "/var/lib/didgw-broker": "2750 didgw mosquitto",
        "/etc/mosquitto/certs/didgw/broker.key": "600 mosquitto mosquitto",
        "/var/lib/mosquitto/dynamic-security.json": "600 mosquitto mosquitto",
    }  # fmt: skip
    assert throwaway.ok("readlink /etc/mosquitto/conf.d/didgw.conf").strip() == "../didgw.conf"
    assert throwaway.ok("systemctl is-enabled didgw.service").strip() == "enabled"
    # root's admin command finds the service's gateway and runs as its user.
    assert throwaway.run("didgw device list").returncode == 0
    key = throwaway.upper / "var/lib/didgw/keys/gateway.pem"
    before = hashlib.sha256(key.read_bytes()).hexdigest()

    # Reinstalling takes the upgrade path: data and the administrator's edits are kept.
    throwaway.ok("echo '# edited by the administrator' >> /etc/didgw/gateway.toml")
    throwaway.ok("dpkg -i /didgw.deb")
    assert hashlib.sha256(key.read_bytes()).hexdigest() == before
    assert "# edited by the administrator" in throwaway.ok("cat /etc/didgw/gateway.toml")

    # Remove: the code goes, the data and configuration stay, mosquitto's link goes.
    throwaway.ok("dpkg -r didgw")
    throwaway.ok("test ! -e /usr/bin/didgw && test ! -e /opt/didgw")
    throwaway.ok(
        "test ! -e /etc/mosquitto/conf.d/didgw.conf && test ! -L /etc/mosquitto/conf.d/didgw.conf"
    )
    throwaway.ok("test -f /var/lib/didgw/keys/gateway.pem && test -f /etc/didgw/broker.password")
    throwaway.ok("test -f /etc/didgw/gateway.toml")

    # Purge: the keys, the record and the secrets go.
    throwaway.ok("dpkg -P didgw")
    gone = ("/var/lib/didgw", "/var/lib/didgw-broker", "/etc/didgw", "/etc/mosquitto/didgw.conf")
    for path in (*gone, "/etc/mosquitto/certs/didgw"):
        throwaway.ok(f"test ! -e {path}")

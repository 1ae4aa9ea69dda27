"""The Debian package (scripts/build-deb.sh): built once for this machine's architecture
(amd64 or arm64), looked at with dpkg-deb
and lintian, its code run from the package's own files, and installed, reinstalled (the
upgrade path), removed and purged for real in a throwaway root (an overlay over this
machine's / in a private mount and network namespace, so nothing reaches the real system
and nothing could be downloaded)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
EM_X86_64, EM_AARCH64 = 62, 183  # ELF e_machine
#: The package built and installed here is this machine's: (triplet, ELF machine) by arch.
ARCHES = {"amd64": ("x86_64-linux-gnu", EM_X86_64), "arm64": ("aarch64-linux-gnu", EM_AARCH64)}


def host_arch() -> str:
    found = shutil.which("dpkg")
    if found is None:
        return ""
    return subprocess.run(
        [found, "--print-architecture"], capture_output=True, text=True, check=False
    ).stdout.strip()


ARCH = host_arch()
TRIPLET, EM_HOST = ARCHES.get(ARCH, ("", 0))

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb missing (dpkg-dev)"),
    pytest.mark.skipif(
        ARCH not in ARCHES, reason=f"packages are built for amd64 and arm64, not {ARCH!r}"
    ),
]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [ROOT / "scripts" / "build-deb.sh", "--no-lintian", "--out", str(out), ARCH],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return out / f"didgw_{VERSION}_{ARCH}.deb"


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
    assert field(deb, "Architecture") == ARCH
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
    # multiprocessing's spawn imports the script again in each reading worker: guarded.
    assert 'if __name__ == "__main__":' in (tree / "opt/didgw/.venv/bin/didgw").read_text()
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
        f"/usr/lib/{TRIPLET}/didgw/didgw_auth.so",
        f"/usr/lib/{TRIPLET}/mosquitto_dynamic_security.so",
    ]
    assert (tree / plugins[0].lstrip("/")).is_file()
    other = ({"x86_64", "aarch64"} - {TRIPLET.split("-")[0]}).pop()
    assert not any(other in line for line in lines)


def elf_machine(path: Path) -> int | None:
    with path.open("rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def test_native_code_is_the_machines(tree: Path) -> None:
    machines = {
        p.relative_to(tree): elf_machine(p)
        for p in tree.rglob("*")
        if p.is_file() and not p.is_symlink()
    }
    native = {p: m for p, m in machines.items() if m is not None}
    assert Path(f"usr/lib/{TRIPLET}/didgw/didgw_auth.so") in native
    assert len(native) > 20  # the dependencies' extensions too
    assert {p: m for p, m in native.items() if m != EM_HOST} == {}


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
        [python, "-c", "import nacl, cryptography, coincurve, h11, gateway; "
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


# --- the package's whole life, in a throwaway root --------------------------------------


class Throwaway:
    """This machine's / under an overlay whose writes go to ``upper``, in a private mount
    namespace (the overlay vanishes with it) and network namespace (only its own loopback:
    nothing can be downloaded, and ports 1883, 8883 and 8884 are free for its broker).

    One holder process keeps both namespaces alive; every command enters them (``nsenter``)
    and runs chrooted into the overlay, so the broker and the gateway started in the
    background share the namespaces with the commands that follow."""

    def __init__(self, base: Path) -> None:
        self.upper, self.work, self.merged = base / "upper", base / "work", base / "merged"
        for d in (self.upper, self.work, self.merged):
            d.mkdir()
        setup = (
            f"mount -t overlay overlay -o lowerdir=/,upperdir={self.upper},"
            f"workdir={self.work} {self.merged} && "
            f"mount -t proc proc {self.merged}/proc && "
            f"mount --rbind /dev {self.merged}/dev && "
            "ip link set lo up && echo ready && exec sleep infinity"
        )
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--net", "sh", "-c", setup],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        )  # fmt: skip
        self.background: list[subprocess.Popen[bytes]] = []
        assert self.holder.stdout is not None
        if self.holder.stdout.readline() != "ready\n":
            _, err = self.holder.communicate(timeout=10)
            self.error = err.strip() or "the namespaces did not start"
        else:
            self.error = ""

    def enter(self, *, chroot: bool = True) -> list[str]:
        where = ["nsenter", "-t", str(self.holder.pid), "--net"]
        if chroot:
            return [*where, "--mount", "chroot", str(self.merged)]
        return where  # the network namespace only: this machine's files, the root's broker

    def run(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.enter(), "/bin/sh", "-c", command],
            capture_output=True, text=True, timeout=timeout, check=False, env=ENV,
        )  # fmt: skip

    def ok(self, command: str) -> str:
        done = self.run(command)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
        return done.stdout

    def start(self, command: str, log: Path) -> subprocess.Popen[bytes]:
        """A long-running command in the root (``exec``'d, so that it gets the signals)."""
        with log.open("ab") as out:
            process = subprocess.Popen(
                [*self.enter(), "/bin/sh", "-c", f"exec {command}"],
                stdout=out, stderr=subprocess.STDOUT, env=ENV,
            )  # fmt: skip
        self.background.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> int:
        process.terminate()
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def wait_port(self, port: int) -> None:
        probe = (
            "import socket, sys, time\n"
            "end = time.monotonic() + 20\n"
            "while time.monotonic() < end:\n"
            "    try:\n"
            f"        socket.create_connection(('127.0.0.1', {port}), 1).close()\n"
            "        sys.exit(0)\n"
            "    except OSError:\n"
            "        time.sleep(0.1)\n"
            "sys.exit(1)\n"
        )
        done = subprocess.run([*self.enter(chroot=False), sys.executable, "-c", probe], check=False)
        assert done.returncode == 0, f"nothing listens on {port} in the throwaway root"

    def close(self) -> None:
        for process in reversed(self.background):
            if process.poll() is None:
                self.stop(process)
        self.holder.kill()
        self.holder.communicate()  # and its pipes closed


ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@pytest.fixture
def throwaway(tmp_path: Path) -> Iterator[Throwaway]:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("a throwaway root needs root, unshare and nsenter (util-linux)")
    root = Throwaway(tmp_path)
    try:
        if root.error:
            pytest.skip(f"no overlay root here: {root.error}")
        yield root
    finally:
        root.close()


def modes(root: Throwaway, *paths: str) -> dict[str, str]:
    out = root.ok("stat -c '%n %a %U %G' " + " ".join(paths))
    return {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines()}


NEXT = f"{VERSION}+upgrade1"  # the same code, rebuilt as a newer package


@pytest.fixture(scope="module")
def deb_next(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist-next")
    build = subprocess.run(
        [ROOT / "scripts" / "build-deb.sh", "--no-lintian", "--out", str(out),
         "--version", NEXT, ARCH],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    return out / f"didgw_{NEXT}_{ARCH}.deb"


def timed(root: Throwaway, command: str) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    done = root.run(command)
    return done, time.monotonic() - start


class Sensor:
    """firmware-sim/sensor.py in the root's network namespace (this machine's files: the
    checkout's simulator, its own key and queue), over TLS to the installed broker."""

    def __init__(self, root: Throwaway, base: Path) -> None:
        self.root, self.base = root, base
        self.key, self.state, self.ca = base / "dev.pem", base / "dev-state", base / "ca.pem"
        self.did = self.sim("--print-did").strip()
        assert self.did.startswith("did:key:z6Mk"), self.did

    def sim(self, *args: str) -> str:
        command = [sys.executable, str(ROOT / "firmware-sim" / "sensor.py"),
                   "--key", str(self.key), "--state", str(self.state), *args]  # fmt: skip
        done = subprocess.run(
            [*self.root.enter(chroot=False), *command],
            capture_output=True, text=True, timeout=120, check=False, env=ENV,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def send(self, count: int, gateway_did: str) -> list[int]:
        """``count`` signed readings, each acknowledged: their record entries."""
        out = self.sim(
            "--broker", "mqtts://127.0.0.1:8884", "--account-broker", "mqtts://127.0.0.1:8883",
            "--tls-ca", str(self.ca), "--gateway-did", gateway_did,
            "--rate", "10", "--count", str(count), "--timeout", "20",
        )  # fmt: skip
        entries = [int(e) for e in re.findall(r"accepted \(record entry (\d+)\)", out)]
        assert len(entries) == count, out
        return entries


def gateway_did(root: Throwaway) -> str:
    """What `didgw init` says of the installed gateway (it makes none when there is one)."""
    out = root.ok("didgw init --config /etc/didgw/gateway.toml")
    assert "already initialised in /var/lib/didgw" in out, out
    (did,) = re.findall(r"^Gateway DID: (did:key:z6Mk\w+)$", out, re.M)
    return did


def run_gateway(root: Throwaway, log: Path) -> subprocess.Popen[bytes]:
    """`didgw run` as the unit runs it: as didgw, umask 077, the installed configuration."""
    gateway = root.start(
        "setpriv --reuid=didgw --regid=didgw --init-groups "
        "sh -c 'umask 077 && PYTHONUNBUFFERED=1 "
        "exec /opt/didgw/.venv/bin/didgw run --config /etc/didgw/gateway.toml'",
        log,
    )
    end = time.monotonic() + 60
    while " running (state " not in log.read_text(errors="replace"):
        assert gateway.poll() is None and time.monotonic() < end, log.read_text()
        time.sleep(0.2)
    return gateway


def on_record(root: Throwaway, did: str, entries: list[int]) -> None:
    verified = root.ok("didgw chain verify")
    assert verified.startswith("ok: "), verified
    for seq in entries:
        entry = root.ok(f"didgw chain show {seq}")
        assert "reading" in entry and did in entry, entry


def test_install_run_upgrade_purge(
    deb: Path, deb_next: Path, throwaway: Throwaway, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The package's whole life as an administrator lives it: install (no systemd, so the
    test does what the units would), the broker and a device over TLS, readings on the
    record, an upgrade to a newer package that keeps all of it, remove, purge."""
    logs = tmp_path_factory.mktemp("logs")
    shutil.copy(deb, throwaway.upper / "didgw.deb")
    shutil.copy(deb_next, throwaway.upper / "didgw-next.deb")
    installed, install_seconds = timed(throwaway, "dpkg -i /didgw.deb")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # No systemd here and no broker yet: the broker's last step is left, and said so.
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
    assert throwaway.ok("didgw --version").strip() == f"didgw {VERSION}"
    did = gateway_did(throwaway)  # postinst made it; the operator's `didgw init` keeps it

    # mosquitto as Debian's unit starts it: the installed configuration, conf.d included.
    throwaway.ok("install -d -o mosquitto -g mosquitto /run/mosquitto")
    broker_log = logs / "mosquitto.log"
    broker = throwaway.start("mosquitto -c /etc/mosquitto/mosquitto.conf", broker_log)
    for port in (1883, 8883, 8884):
        throwaway.wait_port(port)
    # The operator's step once the broker runs: it now logs in and applies the policy.
    setup = throwaway.run("didgw broker setup")
    assert setup.returncode == 0, setup.stdout + setup.stderr

    sensor = Sensor(throwaway, tmp_path_factory.mktemp("sensor"))
    sensor.ca.write_text(throwaway.ok("didgw tls show --pem"))
    throwaway.ok(f"didgw device register {sensor.did} --name 'sim 1' --kind sensor")
    gateway = run_gateway(throwaway, logs / "gateway.log")
    first = sensor.send(3, did)
    on_record(throwaway, sensor.did, first)
    assert throwaway.stop(gateway) == 0, (logs / "gateway.log").read_text()

    # Upgrade to a newer package (mosquitto keeps running, as it would), the
    # administrator's edit in a conffile and every datum kept.
    throwaway.ok("echo '# edited by the administrator' >> /etc/didgw/gateway.toml")
    key = throwaway.upper / "var/lib/didgw/keys/gateway.pem"
    key_digest = hashlib.sha256(key.read_bytes()).hexdigest()
    upgraded, upgrade_seconds = timed(throwaway, "dpkg -i /didgw-next.deb")
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert throwaway.ok("dpkg-query -W -f '${Version}' didgw") == NEXT
    assert throwaway.ok("didgw --version").strip() == f"didgw {NEXT}"
    assert "# edited by the administrator" in throwaway.ok("cat /etc/didgw/gateway.toml")
    assert hashlib.sha256(key.read_bytes()).hexdigest() == key_digest
    assert gateway_did(throwaway) == did
    assert sensor.did in throwaway.ok(f"didgw device show {sensor.did}")
    on_record(throwaway, sensor.did, first)
    # The upgraded gateway takes the same device's next readings onto the same record.
    gateway = run_gateway(throwaway, logs / "gateway-next.log")
    later = sensor.send(2, did)
    assert min(later) > max(first)
    on_record(throwaway, sensor.did, first + later)
    assert throwaway.stop(gateway) == 0, (logs / "gateway-next.log").read_text()
    throwaway.stop(broker)

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
    print(f"dpkg -i {install_seconds:.1f} s, upgrade {upgrade_seconds:.1f} s")


# --- arm64 on an amd64 machine: cross-built, its native code checked, run under qemu-user --
#: An arm64 python3.11 for qemu-user: Debian's python3.11-minimal:arm64 unpacked here, its
#: standard library and libraries the arm64 multiarch packages (scripts/setup.sh --dev).
ARM64_PYTHON = ROOT / "build" / "arm64-python" / "usr" / "bin" / "python3.11"


@pytest.fixture(scope="module")
def arm64_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if ARCH == "arm64":
        pytest.skip("this machine is arm64: the tests above build, check and install that package")
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("no cross compiler for arm64 (gcc-aarch64-linux-gnu; scripts/setup.sh --dev)")
    out = tmp_path_factory.mktemp("dist-arm64")
    build = subprocess.run(
        [ROOT / "scripts" / "build-deb.sh", "--no-lintian", "--out", str(out), "arm64"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    deb = out / f"didgw_{VERSION}_arm64.deb"
    assert field(deb, "Architecture") == "arm64"
    root = tmp_path_factory.mktemp("tree-arm64")
    subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
    return root


def test_arm64_native_code_is_aarch64(arm64_tree: Path) -> None:
    native = {
        p.relative_to(arm64_tree): elf_machine(p)
        for p in arm64_tree.rglob("*")
        if p.is_file() and not p.is_symlink() and elf_machine(p) is not None
    }
    assert Path("usr/lib/aarch64-linux-gnu/didgw/didgw_auth.so") in native
    assert len(native) > 20
    assert {p: m for p, m in native.items() if m != EM_AARCH64} == {}
    conf = (arm64_tree / "etc/mosquitto/didgw.conf").read_text()
    assert "plugin /usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so" in conf


def test_arm64_didgw_runs_under_qemu(arm64_tree: Path, tmp_path: Path) -> None:
    """The arm64 package's own code and native extensions on an arm64 python3.11, emulated:
    `didgw --version`, then a gateway made from nothing (Ed25519, X25519, secp256k1, SQLite)."""
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if qemu is None:
        pytest.skip("no qemu-user here (qemu-user-static; scripts/setup.sh --dev installs it)")
    if not ARM64_PYTHON.is_file():
        pytest.skip(f"no arm64 python3.11 at {ARM64_PYTHON} (scripts/setup.sh --dev unpacks it)")
    site = arm64_tree / "opt/didgw/.venv/lib/python3.11/site-packages"
    # The stdlib is /usr/lib/python3.11 with the arm64 extension modules of
    # libpython3.11-stdlib:arm64 beside the amd64 ones; the package's site-packages on the path
    # (its venv's python3 links to the machine's /usr/bin/python3, an amd64 program here).
    env = {**ENV, "PYTHONHOME": "/usr", "PYTHONPATH": str(site), "HOME": str(tmp_path)}
    script = str(arm64_tree / "opt/didgw/.venv/bin/didgw")

    def arm64(*args: str) -> str:
        done = subprocess.run(
            [qemu, str(ARM64_PYTHON), *args],
            capture_output=True, text=True, timeout=300, check=False, env=env, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert arm64("-c", "import platform; print(platform.machine())").strip() == "aarch64"
    assert arm64(script, "--version").strip() == f"didgw {VERSION}"
    init = arm64(script, "init", "--state-dir", str(tmp_path / "state"))
    assert "Gateway DID: did:key:z6Mk" in init
    # ...on the package's own native extensions, not anything of this machine's.
    rust = arm64("-c", "import cryptography.hazmat.bindings._rust as r; print(r.__file__)")
    assert rust.strip().startswith(str(site)), rust

"""A private mosquitto with dynamic security and the gateway's policy: for the demo, tests, benches.

One launcher, so the demo, the test suite and the benchmarks run the broker the same way an
operator sets one up (``configs/mosquitto/README.md``): the dynamic-security file created by
``mosquitto_ctrl dynsec init``, then the gateway's policy applied over the admin account
(anonymous group limited to the auth topics, default access, the gateway's role and
account), with the same settings as ``configs/mosquitto/mosquitto.conf`` (client-id
prefix, packet limit: :func:`gateway.auth.broker.broker_settings`). The broker runs from a
directory of its own on two loopback ports that it keeps across
:meth:`PrivateBroker.restart`: :attr:`~PrivateBroker.port`, the gateway's listener, where
anonymous clients authenticate too, and :attr:`~PrivateBroker.accounts_port`, where devices
and people connect with their accounts (the client id is the username, as on the shipped
accounts listener).

Started as root, mosquitto drops its privileges to the ``user`` named in its config (by
default ``mosquitto``), which could neither read a private temporary directory nor write the
dynamic-security file there. The config therefore names the user running it: for root that
keeps root (mosquitto warns, which is fine for a private broker), for anyone else the option
has no effect. An installed gateway uses the system's mosquitto service instead
(``systemd/``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

from gateway.auth import broker as policy
from gateway.errors import DidgwError
from gateway.ops.broker_setup import apply_policy, init_dynsec_file
from gateway.transports.dynsec import DynsecAdmin

HOST = "127.0.0.1"


class BrokerError(DidgwError):
    code = "broker_failed"


def dynsec_plugin() -> str | None:
    """The plugin's shared library wherever this distribution installs it."""
    found = sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so"))
    found += glob.glob("/usr/lib/mosquitto_dynamic_security.so")
    found += glob.glob("/usr/local/lib/mosquitto_dynamic_security.so")
    return found[0] if found else None


def token_plugin_library() -> Path | None:
    """mosquitto's didgw plugin as ``scripts/build-broker-plugin.sh`` builds it in this checkout."""
    built = Path(__file__).resolve().parents[2] / "build" / "broker-plugin" / "didgw_auth.so"
    return built if built.is_file() else None


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
        None,
    )


def missing_tools() -> str:
    """Why the broker cannot run here ("" when it can)."""
    if mosquitto_binary() is None:
        return "mosquitto is not installed"
    if dynsec_plugin() is None:
        return "mosquitto's dynamic-security plugin is not installed"
    for tool in ("mosquitto_ctrl", "mosquitto_pub", "mosquitto_sub"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (package mosquitto-clients)"
    return ""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nobody listens on right now, on loopback (TCP by default)."""
    return free_ports(1, kind)[0]


def free_ports(count: int, kind: int = socket.SOCK_STREAM) -> list[int]:
    """``count`` different ports nobody listens on right now, on loopback. Each probe stays
    bound until all are picked: ports asked for one at a time can come back twice (the
    demo once gave its web server the broker's port)."""
    probes: list[socket.socket] = []
    try:
        for _ in range(count):
            probe = socket.socket(socket.AF_INET, kind)
            probes.append(probe)
            probe.bind((HOST, 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


class PrivateBroker:
    """One broker in ``directory``: set up, start, stop, restart on the same port and file."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        accounts_port: int | None = None,
        prefix: str = "didgw",
        gateway_username: str = "didgw",
        tcp_nodelay: bool = True,
        tls_files: tuple[Path, Path] | None = None,
        token_plugin: tuple[Path, Path] | None = None,
    ) -> None:
        self.directory = directory
        #: where the gateway writes what the didgw plugin reads (its [mqtt] token_dir): the
        #: plugin checks the gateway's session tokens (gateway/auth/broker_tokens.py) before
        #: dynamic security sees a client
        self.token_dir = directory / "tokens"
        #: (token key file, deny file) of the plugin: those in token_dir unless given
        self.token_plugin = token_plugin or (
            self.token_dir / "token.key",
            self.token_dir / "deny",
        )
        self.host = HOST
        picked = free_ports(2)
        self.port = port if port is not None else picked[0]
        self.accounts_port = accounts_port if accounts_port is not None else picked[1]
        #: (certfile, keyfile) of a third listener, MQTT over TLS, as devices on a LAN use it
        #: (configs/mosquitto/mosquitto.conf; here one TLS listener serves both authentication
        #: and accounts); None: the plain loopback listeners only.
        self.tls_files = tls_files
        self.tls_port = free_port() if tls_files is not None else None
        self.pid_file = directory / "mosquitto.pid"
        self.prefix = prefix
        self.tcp_nodelay = tcp_nodelay
        self.admin_username = "admin"
        self.admin_password = secrets.token_urlsafe(16)
        self.gateway_username = gateway_username
        self.gateway_password = secrets.token_urlsafe(16)
        self.config_file = directory / "mosquitto.conf"
        self.dynsec_file = directory / "dynamic-security.json"
        self.log_file = directory / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def setup(self) -> None:
        """Write the config and the dynamic-security file, start, apply the gateway's policy."""
        missing = missing_tools()
        if missing:
            raise BrokerError(f"{missing}: run scripts/setup.sh")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.token_dir.mkdir(mode=0o755, exist_ok=True)
        init_dynsec_file(self.dynsec_file, self.admin_password)  # as `didgw broker setup`
        self.config_file.write_text(self.config())
        self.start()
        with self.admin(as_gateway=False) as admin:
            apply_policy(admin, self.prefix, self.gateway_username, self.gateway_password)

    def config(self) -> str:
        """The broker's configuration file."""
        user = pwd.getpwuid(os.geteuid()).pw_name
        lines = [
            *policy.broker_settings(),
            # Devices log in without a username to authenticate; dynamic-security puts
            # them in its anonymous group, whose role allows only the auth topics.
            "allow_anonymous true",
            *self._token_plugin_lines(),
            f"plugin {dynsec_plugin()}",
            f"plugin_opt_config_file {self.dynsec_file}",
            "persistence false",
            # The stock 1000 silently drops QoS 1 messages queued for a slow subscriber.
            "max_queued_messages 1000000",
            "max_inflight_messages 100",
            *(["set_tcp_nodelay true"] if self.tcp_nodelay else []),
            f"user {user}",
            f"log_dest file {self.log_file}",
            *(f"log_type {kind}" for kind in ("error", "warning", "notice", "information")),
            f"listener {self.port} {self.host}",
            f"listener {self.accounts_port} {self.host}",
            *policy.accounts_listener_settings(),
            *self._tls_lines(),
        ]
        return "\n".join(lines) + "\n"

    def gateway_settings(self) -> str:
        """The ``[mqtt]`` keys of a gateway that uses this broker (its password: the
        ``DIDGW_MQTT_PASSWORD`` of its environment)."""
        return (
            f'host = "{self.host}"\nport = {self.port}\n'
            f'username = "{self.gateway_username}"\nprefix = "{self.prefix}"\n'
            f'token_dir = "{self.token_dir}"\n'
        )

    def _token_plugin_lines(self) -> list[str]:
        """The didgw plugin, before dynamic security: mosquitto asks plugins in that order."""
        library = token_plugin_library()
        if library is None:
            raise BrokerError("the didgw broker plugin is not built: run scripts/setup.sh")
        key_file, deny_file = self.token_plugin
        return [
            f"plugin {library}",
            f"plugin_opt_key_file {key_file}",
            f"plugin_opt_deny_file {deny_file}",
        ]

    def _tls_lines(self) -> list[str]:
        """The TLS listener (last: the options after a listener line are that listener's)."""
        if self.tls_files is None:
            return []
        certfile, keyfile = self.tls_files
        return [
            f"pid_file {self.pid_file}",  # for SIGHUP after a renewal ([tls] broker_pid_file)
            f"listener {self.tls_port} {self.host}",
            f"certfile {certfile}",
            f"keyfile {keyfile}",
            "tls_version tlsv1.2",
        ]

    def start(self, timeout: float = 10.0) -> None:
        """Run mosquitto and return once its port accepts connections."""
        if self._process is not None:
            raise BrokerError("the broker is already running")
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError("mosquitto is not installed: run scripts/setup.sh")
        self._stderr = (self.directory / "mosquitto.stderr").open("ab")
        self._process = subprocess.Popen(
            [binary, "-c", str(self.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._reap()
                raise BrokerError(f"mosquitto exited with status {code}:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.2),
                socket.create_connection((self.host, self.accounts_port), 0.2),
            ):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"mosquitto did not listen within {timeout} s:\n{self.log()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Terminate mosquitto (SIGTERM: it saves the dynamic-security file and exits)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._reap()

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        """SIGHUP: mosquitto reloads its configuration and its TLS certificate and key."""
        os.kill(self.pid, signal.SIGHUP)

    def _reap(self) -> None:
        self._process = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise BrokerError("the broker is not running")
        return self._process.pid

    def log(self) -> str:
        """What mosquitto logged, and anything it wrote to stderr."""
        parts = []
        for path in (self.log_file, self.directory / "mosquitto.stderr"):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    # -- clients -----------------------------------------------------------------------

    def admin(self, *, as_gateway: bool = True, timeout: float = 5.0) -> DynsecAdmin:
        """A dynamic-security client (use it in ``with``), logged in as the gateway by default."""
        if as_gateway:
            return DynsecAdmin(
                self.host, self.port, self.gateway_username, self.gateway_password, timeout=timeout
            )
        return DynsecAdmin(
            self.host, self.port, self.admin_username, self.admin_password, timeout=timeout
        )

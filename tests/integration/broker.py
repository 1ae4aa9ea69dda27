"""A real mosquitto with the dynamic-security plugin, and MQTT test peers that talk to it.

The broker runs from a throwaway directory: its config, its dynamic-security file (created
by ``mosquitto_ctrl dynsec init``, as an operator would) and its log. It listens on a free
loopback port, keeps that port across :meth:`Mosquitto.restart`, and starts with the
gateway's policy applied (anonymous group, default access, the gateway's role and account).

Started as root, mosquitto drops its privileges to the ``user`` named in its config (by
default ``mosquitto``), which could neither read pytest's private temporary directory nor
write the dynamic-security file there. The config therefore names the user running the
tests: for root that keeps root (mosquitto warns, which is fine for a test), and for
anyone else the option has no effect.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import queue
import secrets
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from gateway.auth import broker as policy
from gateway.transports.dynsec import DynsecAdmin

PREFIX = "didgw"
HOST = "127.0.0.1"


def dynsec_plugin() -> str | None:
    """The plugin's shared library wherever this distribution installs it."""
    found = sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so"))
    found += glob.glob("/usr/lib/mosquitto_dynamic_security.so")
    found += glob.glob("/usr/local/lib/mosquitto_dynamic_security.so")
    return found[0] if found else None


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class Mosquitto:
    """One broker in ``directory``: start, stop, restart on the same port and file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.host = HOST
        self.port = free_port()
        self.prefix = PREFIX
        self.admin_username = "admin"
        self.admin_password = secrets.token_urlsafe(16)
        self.gateway_username = "didgw-gateway"
        self.gateway_password = secrets.token_urlsafe(16)
        self.config_file = directory / "mosquitto.conf"
        self.dynsec_file = directory / "dynamic-security.json"
        self.log_file = directory / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def setup(self) -> None:
        """Write the config and the dynamic-security file, start, apply the gateway's policy."""
        self.directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "mosquitto_ctrl",
                "dynsec",
                "init",
                str(self.dynsec_file),
                self.admin_username,
                self.admin_password,
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.config_file.write_text(self._config())
        self.start()
        with self.admin(as_gateway=False) as admin:
            admin.execute(
                [
                    *policy.anonymous_policy_commands(self.prefix),
                    *policy.gateway_role_commands(self.prefix),
                    *policy.gateway_client_commands(self.gateway_username, self.gateway_password),
                ],
                ok_errors=policy.POLICY_OK_ERRORS,
            )

    def _config(self) -> str:
        user = pwd.getpwuid(os.geteuid()).pw_name
        return "\n".join(
            [
                f"listener {self.port} {self.host}",
                # Devices log in without a username to authenticate; dynamic-security puts
                # them in its anonymous group, whose role allows only the auth topics.
                "allow_anonymous true",
                f"plugin {dynsec_plugin()}",
                f"plugin_opt_config_file {self.dynsec_file}",
                "persistence false",
                # The stock 1000 silently drops QoS 1 messages queued for a slow subscriber.
                "max_queued_messages 1000000",
                "max_inflight_messages 100",
                "set_tcp_nodelay true",
                f"user {user}",
                f"log_dest file {self.log_file}",
                "log_type error",
                "log_type warning",
                "log_type notice",
                "log_type information",
                "",
            ]
        )

    def start(self, timeout: float = 10.0) -> None:
        """Run mosquitto and return once its port accepts connections."""
        assert self._process is None, "already running"
        binary = mosquitto_binary()
        assert binary is not None
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
                raise RuntimeError(f"mosquitto exited with status {code}:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.2),
            ):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not listen within {timeout} s:\n{self.log()}")
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

    def _reap(self) -> None:
        self._process = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "not running"
        return self._process.pid

    def log(self) -> str:
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

    def peer(self, username: str | None = None, password: str | None = None) -> Peer:
        """An MQTT client of this broker (not yet connected), anonymous without a username."""
        return Peer(self.host, self.port, username, password)

    def gateway(self) -> Peer:
        return self.peer(self.gateway_username, self.gateway_password)


class Peer:
    """A paho MQTT v5 client with blocking calls and bounded waits, for tests.

    Every wait has a deadline; messages land in :attr:`messages` as ``(topic, payload)``.
    """

    def __init__(
        self, host: str, port: int, username: str | None = None, password: str | None = None
    ) -> None:
        self.host, self.port = host, port
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connack: ReasonCode | None = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self._answered = threading.Event()
        self._acks: dict[int, list[ReasonCode]] = {}
        self._acked = threading.Condition()
        self._running = False
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-{secrets.token_hex(6)}",
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,  # a peer the broker drops stays dropped
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe

    def connect(self, timeout: float = 5.0) -> ReasonCode:
        """Connect and return the CONNACK's reason code; a refused client is closed again."""
        self.client.connect(self.host, self.port, keepalive=30, clean_start=True)
        self.client.loop_start()
        self._running = True
        assert self._answered.wait(timeout), "no CONNACK"
        assert self.connack is not None
        if self.connack.is_failure:
            self.close()
        return self.connack

    def close(self) -> None:
        if self._running:
            self._running = False
            self.client.disconnect()
            self.client.loop_stop()
            self.client.reinitialise()  # closes the socket pair loop_start() opened

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def subscribe(self, topic: str, timeout: float = 5.0) -> ReasonCode:
        """Subscribe at QoS 1 and return the SUBACK's reason code."""
        _, mid = self.client.subscribe(topic, qos=1)
        (code,) = self._wait_ack(mid, timeout)
        return code

    def publish(self, topic: str, payload: bytes | str, timeout: float = 5.0) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1)
        (code,) = self._wait_ack(info.mid, timeout)
        return code

    def next_message(self, timeout: float = 5.0) -> tuple[str, bytes]:
        return self.messages.get(timeout=timeout)

    def received_until(self, topic: str, payload: bytes, timeout: float = 5.0) -> list[str]:
        """Topics of everything received before the marker ``(topic, payload)`` arrived.

        mosquitto delivers in order; a marker sent after the action being tested comes
        after anything that action caused, so waiting for it bounds the wait exactly.
        """
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            got_topic, got_payload = self.messages.get(
                timeout=max(0.01, deadline - time.monotonic())
            )
            if (got_topic, got_payload) == (topic, payload):
                return seen
            seen.append(got_topic)

    def _wait_ack(self, mid: int, timeout: float) -> list[ReasonCode]:
        with self._acked:
            assert self._acked.wait_for(lambda: mid in self._acks, timeout), f"no ack for {mid}"
            return self._acks.pop(mid)

    # paho's thread

    def _on_connect(self, client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        self.connack = code
        if not code.is_failure:
            self.connected.set()
        self._answered.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        self.connected.clear()
        self.disconnected.set()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put((message.topic, message.payload))

    def _on_publish(self, client: Any, userdata: Any, mid: int, code: Any, props: Any) -> None:
        with self._acked:
            self._acks[mid] = [code]
            self._acked.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._acked:
            self._acks[mid] = list(codes)
            self._acked.notify_all()

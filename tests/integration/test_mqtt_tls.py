"""MQTT over TLS, end to end: the CA that ``didgw init`` makes, the broker certificate that
``didgw tls issue`` writes, a real mosquitto serving it on a TLS listener, ``didgw run``, and
the simulators (firmware-sim/) verifying the broker before they send anything.

An eavesdropper is a TCP relay in the path (``wiretap.py``): over plain MQTT it sees the
broker password and the readings verbatim; over TLS, neither. OpenSSL's command-line tools
check the certificates independently of Python's ssl module and of pyca/cryptography.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import device as dev
import pytest
import wallet as wal
from broker import Mosquitto, missing_tools
from cryptography import x509
from gateway_process import GatewayProcess, make_device, records, register, seqs_of
from support import ROOT, Run, wait_until
from wiretap import Wiretap

from gateway.identity import certs

pytestmark = pytest.mark.integration

VALUES = {"power_w": {"value": 812, "unit": "W"}}


@dataclass(frozen=True)
class Pki:
    """The gateway's state with its CA and a broker certificate for 127.0.0.1 and localhost."""

    state: Path
    ca: Path
    cert: Path
    key: Path
    fingerprint: str
    did: str


@pytest.fixture
def pki(didgw: Run, tmp_path: Path) -> Pki:
    state = tmp_path / "state"
    init = didgw("init", "--state-dir", str(state))
    assert init.returncode == 0, init.stderr
    assert "TLS certificate authority:" in init.stdout and "(created)" in init.stdout
    issued = didgw(
        "tls", "issue", "--name", "localhost", "--ip", "127.0.0.1", "--state-dir", str(state)
    )
    assert issued.returncode == 0, issued.stderr
    shown = didgw("tls", "show", "--json", "--state-dir", str(state))
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    tls = state / "tls"
    did = init.stdout.split("Gateway DID: ")[1].strip()
    return Pki(
        state, tls / "ca.crt", tls / "broker.crt", tls / "broker.key", info["ca_sha256"], did
    )


@pytest.fixture
def mosquitto(tmp_path: Path, pki: Pki) -> Iterator[Mosquitto]:
    """This module's broker: the usual one, plus a TLS listener with the gateway's certificate
    (it replaces conftest's ``mosquitto``, so the ``gateway`` fixture runs against it)."""
    missing = missing_tools()
    assert not missing, f"{missing}: run scripts/setup.sh"
    broker = Mosquitto(tmp_path / "mosquitto", tls_files=(pki.cert, pki.key))
    try:
        broker.setup()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """A certificate authority that did not sign the broker's certificate."""
    key = certs.generate_key()
    path = tmp_path / "other-ca.crt"
    path.write_bytes(certs.to_pem(certs.new_ca(key, common_name="someone else", now=time.time())))
    return path


def tls_device(tmp_path: Path, address: str, name: str, pki: Pki, **trust: Any) -> Any:
    return dev.Device(
        address,
        key_path=tmp_path / f"{name}.pem",
        state_dir=tmp_path / f"{name}-state",
        gateway_did=pki.did,
        tls=dev.Trust(**trust) if trust else None,
    )


def send_readings(device: Any, count: int) -> None:
    accepted = device.stats["accepted"]
    for _ in range(count):
        device.publish_reading("energy", VALUES)
    assert device.wait_acked(20), f"{device.pending()} readings not acknowledged"
    assert device.stats["accepted"] == accepted + count


def as_bytes(payload: str | bytes) -> bytes:
    return payload if isinstance(payload, bytes) else payload.encode()


def openssl(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *args], input=stdin, capture_output=True, text=True, timeout=30, check=False
    )


def served_serial(port: int, ca: Path) -> int:
    """The serial number of the certificate the broker serves now, verified against ``ca``."""
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), 5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


# -- devices over TLS ------------------------------------------------------------------------


def test_a_device_over_tls_is_recorded_and_an_eavesdropper_learns_nothing(
    didgw: Run, gateway: GatewayProcess, mosquitto: Mosquitto, pki: Pki, tmp_path: Path
) -> None:
    gateway.start()
    assert mosquitto.tls_port is not None
    with Wiretap((mosquitto.host, mosquitto.tls_port)) as tap:
        device = tls_device(tmp_path, f"127.0.0.1:{tap.port}", "secure", pki, ca_file=pki.ca)
        register(didgw, pki.state, device.did, "secure")
        with device:
            device.start(timeout=15)
            send_readings(device, 3)
            assert device.grant is not None
            password = device.grant.password
            tokens = [as_bytes(e.payload) for e in records(pki.state)]
        seen = tap.captured
    assert seqs_of(records(pki.state)) == [1, 2, 3]
    assert seen[:1] == b"\x16", "the first byte on the wire is not a TLS handshake record"
    assert password not in seen
    assert len(tokens) == 3 and not [t for t in tokens if t in seen]
    assert device.did.encode() not in seen  # not even who is talking

    # The same through the same tap in plain MQTT (allowed on loopback only): the tap works.
    # The password and the readings go over the account's connection: tap the accounts listener.
    with Wiretap((mosquitto.host, mosquitto.accounts_port)) as tap:
        plain = make_device(tmp_path, mosquitto, "plain", pki.did)
        plain.account_host, plain.account_port = tap.host, tap.port
        register(didgw, pki.state, plain.did, "plain")
        with plain:
            plain.start(timeout=15)
            send_readings(plain, 1)
            assert plain.grant is not None
            plain_password = plain.grant.password
        seen = tap.captured
    assert plain_password in seen
    assert [e for e in records(pki.state) if as_bytes(e.payload) in seen]


def test_a_device_with_the_pinned_fingerprint_learns_the_ca_and_connects(
    didgw: Run, gateway: GatewayProcess, mosquitto: Mosquitto, pki: Pki, tmp_path: Path
) -> None:
    gateway.start()
    fingerprint = openssl("x509", "-noout", "-fingerprint", "-sha256", "-in", str(pki.ca)).stdout
    assert fingerprint.strip() == f"sha256 Fingerprint={pki.fingerprint}"  # as openssl sees it
    device = tls_device(
        tmp_path, f"mqtts://127.0.0.1:{mosquitto.tls_port}", "pinned", pki, pin=pki.fingerprint
    )
    register(didgw, pki.state, device.did, "pinned")
    with device:
        device.start(timeout=15)
        send_readings(device, 2)


def test_the_sensor_program_speaks_tls_with_a_pin(
    didgw: Run, gateway: GatewayProcess, mosquitto: Mosquitto, pki: Pki, tmp_path: Path
) -> None:
    gateway.start()
    sensor = [
        str(Path(dev.__file__).with_name("sensor.py")),
        "--broker",
        f"mqtts://127.0.0.1:{mosquitto.tls_port}",
        "--tls-pin",
        pki.fingerprint,
        "--state",
        str(tmp_path / "sensor"),
        "--gateway-did",
        pki.did,
    ]
    python = sys.executable
    did = subprocess.run(
        [python, *sensor, "--print-did"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    register(didgw, pki.state, did, "sensor")
    run = subprocess.run(
        [python, *sensor, "--count", "2", "--rate", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "accepted 2" in run.stdout


@pytest.mark.parametrize("trust", ["other CA", "wrong pin", "name not in the certificate"])
def test_a_device_refuses_a_broker_it_cannot_verify_and_sends_nothing(  # noqa: PLR0917
    didgw: Run,
    gateway: GatewayProcess,
    mosquitto: Mosquitto,
    pki: Pki,
    other_ca: Path,
    tmp_path: Path,
    trust: str,
) -> None:
    gateway.start()
    assert mosquitto.tls_port is not None
    # An eavesdropper subscribed where hellos go (the gateway's account may): a device that
    # refuses the broker must not have said even that.
    watcher = mosquitto.gateway()
    watcher.connect()
    assert not watcher.subscribe(f"{mosquitto.prefix}/auth/req").is_failure
    with Wiretap((mosquitto.host, mosquitto.tls_port), listen_host="127.0.0.2") as other_name:
        address, options = {
            "other CA": (f"127.0.0.1:{mosquitto.tls_port}", {"ca_file": other_ca}),
            "wrong pin": (f"127.0.0.1:{mosquitto.tls_port}", {"pin": "ab" * 32}),
            # the right CA, but 127.0.0.2 is not a name in the broker's certificate
            "name not in the certificate": (f"127.0.0.2:{other_name.port}", {"ca_file": pki.ca}),
        }[trust]
        device = tls_device(tmp_path, address, "wary", pki, **options)
        register(didgw, pki.state, device.did, "wary")
        with device, pytest.raises(dev.DeviceError, match="refusing the broker") as refused:
            device.authenticate(timeout=10)
    assert {
        "other CA": "self-signed certificate in certificate chain",
        "wrong pin": "none of the 2 certificates it presents is the pinned",
        "name not in the certificate": "certificate is not valid for '127.0.0.2'",
    }[trust] in str(refused.value)
    marker = b"marker"
    assert not watcher.publish(f"{mosquitto.prefix}/auth/req", marker).is_failure
    assert watcher.received_until(f"{mosquitto.prefix}/auth/req", marker) == []
    watcher.close()


def test_plain_mqtt_is_refused_on_the_tls_listener_and_off_loopback(
    mosquitto: Mosquitto, pki: Pki, tmp_path: Path
) -> None:
    port = str(mosquitto.tls_port)
    hello = ["-h", "127.0.0.1", "-p", port, "-t", "didgw/auth/req", "-m", "{}", "-q", "1"]
    plain = subprocess.run(
        ["mosquitto_pub", *hello], capture_output=True, text=True, timeout=30, check=False
    )
    assert plain.returncode != 0  # mosquitto's own client, plain, on the TLS listener
    tls = subprocess.run(
        ["mosquitto_pub", "--cafile", str(pki.ca), *hello],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert tls.returncode == 0, tls.stderr  # the same over TLS
    # A raw MQTT 3.1.1 CONNECT: the listener answers no CONNACK (0x20) and closes.
    connect = bytes([0x10, 14, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 2]) + b"id"
    with socket.create_connection(("127.0.0.1", int(port)), 5) as raw:
        raw.sendall(connect)
        raw.settimeout(5)
        try:
            answer = raw.recv(64)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"\x20")

    # And the simulators refuse to send plain MQTT to anything but this machine.
    with pytest.raises(dev.DeviceError, match=r"refusing plain MQTT to 192\.0\.2\.10:1883"):
        dev.Device("192.0.2.10:1883", key_path=tmp_path / "k.pem", state_dir=tmp_path / "s")
    with pytest.raises(wal.WalletError, match="refusing plain MQTT"):
        wal.Wallet("mqtt://192.0.2.10", key_path=tmp_path / "w.pem", gateway_did=pki.did)


def listeners(config: str) -> list[tuple[str, dict[str, str]]]:
    """(``listener`` line, the options that follow it) for each listener of a mosquitto file."""
    found: list[tuple[str, dict[str, str]]] = []
    for line in config.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        word, _, value = line.partition(" ")
        if word == "listener":
            found.append((value, {}))
        elif found:
            found[-1][1][word] = value
    return found


def runnable(shipped: str, tmp_path: Path, pki: Pki) -> tuple[str, dict[str, int]]:
    """The shipped file with free ports, this machine's plugin, and files in ``tmp_path``;
    and the port each ``listener`` line got."""
    from gateway.ops.broker import dynsec_plugin, free_port, token_plugin_library

    paths = {
        "plugin_opt_config_file": str(tmp_path / "dynsec.json"),
        "plugin_opt_key_file": str(tmp_path / "token.key"),
        "plugin_opt_deny_file": str(tmp_path / "deny"),
        "certfile": str(pki.cert),
        "keyfile": str(pki.key),
    }
    ports: dict[str, int] = {}

    def fitted(line: str) -> str:
        word, _, value = line.partition(" ")
        if word == "listener":
            port = ports.setdefault(value, free_port())
            return " ".join(["listener", str(port), *value.split()[1:]])
        if word == "plugin":  # the checkout's didgw plugin, this machine's dynamic security
            return f"plugin {token_plugin_library() if 'didgw_auth' in value else dynsec_plugin()}"
        return f"{word} {paths[word]}" if word in paths else line

    lines = [fitted(line) for line in shipped.splitlines()]
    lines += [f"persistence_location {tmp_path}/", f"log_dest file {tmp_path / 'm.log'}"]
    lines += ["user root"] if os.geteuid() == 0 else []
    return "\n".join(lines) + "\n", ports


def test_the_shipped_broker_configuration_serves_tls_and_plain_on_loopback_only(
    pki: Pki, tmp_path: Path
) -> None:
    """configs/mosquitto/mosquitto.conf as shipped, run by a real mosquitto with only its
    ports, file paths and plugin path changed for this machine."""
    from gateway.ops.broker import mosquitto_binary

    shipped = (ROOT / "configs" / "mosquitto" / "mosquitto.conf").read_text()
    found = listeners(shipped)
    plain = [where for where, options in found if "certfile" not in options]
    tls = [where for where, options in found if "certfile" in options and "keyfile" in options]
    assert tls, "no TLS listener for devices"
    assert all(len(w.split()) == 2 and w.split()[1] in ("127.0.0.1", "::1") for w in plain), plain
    text, ports = runnable(shipped, tmp_path, pki)
    conf = tmp_path / "shipped.conf"
    conf.write_text(text)
    subprocess.run(
        ["mosquitto_ctrl", "dynsec", "init", str(tmp_path / "dynsec.json"), "admin"],
        input="pw\npw\n", text=True, capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    with (tmp_path / "stderr").open("wb") as stderr:
        broker = subprocess.Popen([str(mosquitto_binary()), "-c", str(conf)], stderr=stderr)
    try:
        tls_port = ports[tls[0]]
        wait_until(
            lambda: probe(tls_port),
            "mosquitto to listen",
            details=(tmp_path / "stderr").read_text,
        )
        served = x509.load_pem_x509_certificates(pki.cert.read_bytes())[0]
        assert served_serial(tls_port, pki.ca) == served.serial_number
        hello = ["-h", "127.0.0.1", "-t", "didgw/auth/req", "-m", "{}"]
        pub = ["mosquitto_pub", *hello, "-p"]
        refused = subprocess.run(
            [*pub, str(tls_port)], capture_output=True, timeout=30, check=False
        )
        assert refused.returncode != 0  # plain MQTT on the TLS listener
        for where in plain:
            ok = subprocess.run(
                [*pub, str(ports[where])], capture_output=True, timeout=30, check=False
            )
            assert ok.returncode == 0, ok.stderr
    finally:
        broker.terminate()
        broker.wait(10)


def probe(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
    except OSError:
        return False
    return True


# -- the certificates, checked by OpenSSL ---------------------------------------------------


def test_openssl_verifies_the_certificate_the_broker_serves(
    mosquitto: Mosquitto, pki: Pki, other_ca: Path
) -> None:
    verify = openssl("verify", "-CAfile", str(pki.ca), "-purpose", "sslserver", str(pki.cert))
    assert verify.returncode == 0 and verify.stdout.strip().endswith(": OK"), verify.stdout
    connect = ["s_client", "-connect", f"127.0.0.1:{mosquitto.tls_port}", "-showcerts"]
    checks = ["-verify_return_error", "-verify_ip", "127.0.0.1"]
    served = openssl(*connect, "-CAfile", str(pki.ca), *checks, stdin="")
    assert served.returncode == 0, served.stderr
    assert "Verify return code: 0 (ok)" in served.stdout
    assert served.stdout.count("-----BEGIN CERTIFICATE-----") == 2  # broker, then the CA
    assert re.search(r"New, TLSv1\.[23], Cipher is", served.stdout)
    refused = openssl(*connect, "-CAfile", str(other_ca), *checks, stdin="")
    assert refused.returncode != 0
    assert "self-signed certificate in certificate chain" in refused.stdout
    wrong_name = openssl(*connect, "-CAfile", str(pki.ca), "-verify_return_error",
                         "-verify_hostname", "evil.example", stdin="")  # fmt: skip
    assert wrong_name.returncode != 0
    mode = pki.key.stat().st_mode & 0o777
    assert mode == 0o600, f"broker.key has mode {mode:04o}"
    assert (pki.state / "keys" / "tls-ca.pem").stat().st_mode & 0o777 == 0o600


# -- the gateway's own connection ------------------------------------------------------------


def test_the_gateway_connects_to_its_broker_over_tls(
    didgw: Run, gateway: GatewayProcess, mosquitto: Mosquitto, pki: Pki, tmp_path: Path
) -> None:
    config = gateway.config.read_text().replace(
        f"port = {mosquitto.port}\n", f"port = {mosquitto.tls_port}\ntls = true\n"
    )
    gateway.config.write_text(config)
    assert didgw("config", "check", "--config", str(gateway.config)).stderr == ""
    gateway.start()  # ca_file empty: the gateway's own CA
    device = tls_device(
        tmp_path, f"mqtts://127.0.0.1:{mosquitto.tls_port}", "d", pki, ca_file=pki.ca
    )
    register(didgw, pki.state, device.did, "d")
    with device:
        device.start(timeout=15)
        send_readings(device, 3)  # through the reading workers, over TLS as well
    assert gateway.stop() == 0
    assert listeners_of(mosquitto, mosquitto.gateway_username) == {mosquitto.tls_port}


def listeners_of(broker: Mosquitto, username: str) -> set[int]:
    """The ports of the listeners on which ``username`` logged in, from the broker's log."""
    log = broker.log()
    port_of = dict(re.findall(r"New connection from (\S+) on port (\d+)\.", log))
    logins = re.findall(rf"New client connected from (\S+) as .*u'{re.escape(username)}'\)", log)
    return {int(port_of[address]) for address in logins}


def test_the_gateway_refuses_a_broker_whose_certificate_does_not_verify(
    didgw: Run, gateway: GatewayProcess, mosquitto: Mosquitto, other_ca: Path
) -> None:
    config = gateway.config.read_text().replace(
        f"port = {mosquitto.port}\n",
        f'port = {mosquitto.tls_port}\ntls = true\nca_file = "{other_ca}"\n',
    )
    gateway.config.write_text(config)
    run = didgw(
        "run",
        "--state-dir",
        str(gateway.state),
        "--config",
        str(gateway.config),
        env={"DIDGW_MQTT_PASSWORD": mosquitto.gateway_password},
    )
    assert run.returncode == 1
    assert "TLS certificate does not verify" in run.stderr, run.stderr
    assert f"u'{mosquitto.gateway_username}'" not in mosquitto.log()


def test_a_broker_elsewhere_without_tls_is_warned_about(
    didgw: Run, gateway: GatewayProcess, mosquitto: Mosquitto
) -> None:
    remote = gateway.config.read_text().replace(f'"{mosquitto.host}"', '"192.0.2.10"')
    gateway.config.write_text(remote)
    check = didgw("config", "check", "--config", str(gateway.config))
    assert check.returncode == 0
    assert "WARNING: [mqtt] host: '192.0.2.10' is not this machine" in check.stderr
    assert check.stdout.startswith(f"ok: {gateway.config}, with 1 exposure warning(s) below")
    run = didgw(
        "run",
        "--state-dir",
        str(gateway.state),
        "--config",
        str(gateway.config),
        env={"DIDGW_MQTT_PASSWORD": mosquitto.gateway_password},
    )
    warning = [line for line in run.stderr.splitlines() if "is not this machine" in line]
    assert warning and "WARNING" in warning[0], run.stderr
    gateway.config.write_text(remote.replace("[mqtt]\n", "[mqtt]\ntls = true\n"))
    check = didgw("config", "check", "--config", str(gateway.config))
    assert check.returncode == 0 and check.stderr == "" and check.stdout.startswith("ok: ")


# -- renewal ---------------------------------------------------------------------------------


def test_renewal_replaces_the_served_certificate_without_dropping_anyone(
    didgw: Run, gateway: GatewayProcess, mosquitto: Mosquitto, pki: Pki, tmp_path: Path
) -> None:
    assert mosquitto.tls_port is not None
    tls_section = f'\n[tls]\nbroker_pid_file = "{mosquitto.pid_file}"\n'
    if os.geteuid() == 0:
        tls_section += 'broker_owner = "nobody"\n'
    gateway.config.write_text(tls_section + gateway.config.read_text())
    config = ["--state-dir", str(pki.state), "--config", str(gateway.config)]
    nameless = didgw("tls", "issue", *config)
    assert nameless.returncode == 1 and "give the names (--name)" in nameless.stderr
    gateway.start()
    before = served_serial(mosquitto.tls_port, pki.ca)
    device = tls_device(tmp_path, f"127.0.0.1:{mosquitto.tls_port}", "old", pki, ca_file=pki.ca)
    register(didgw, pki.state, device.did, "old")
    with device:
        device.start(timeout=15)
        send_readings(device, 1)
        not_due = didgw("tls", "renew", *config)
        assert not_due.returncode == 0 and "not due" in not_due.stdout, not_due.stderr
        assert served_serial(mosquitto.tls_port, pki.ca) == before
        renewed = didgw("tls", "renew", "--force", *config)
        assert renewed.returncode == 0, renewed.stderr
        assert f"mosquitto (pid {mosquitto.pid}) told to load it" in renewed.stdout
        new = x509.load_pem_x509_certificates(pki.cert.read_bytes())[0]
        assert new.serial_number != before
        assert certs.names_of(new) == certs.parse_names(["localhost"], ["127.0.0.1", "::1"])
        wait_until(
            lambda: served_serial(mosquitto.tls_port, pki.ca) == new.serial_number,
            "the broker to serve the new certificate",
        )
        send_readings(device, 1)  # still connected: the reload dropped nobody
        assert device.stats["connects"] == 1
    newcomer = tls_device(tmp_path, f"127.0.0.1:{mosquitto.tls_port}", "new", pki, ca_file=pki.ca)
    register(didgw, pki.state, newcomer.did, "new")
    with newcomer:
        newcomer.start(timeout=15)  # authenticates: the broker's accounts survived the reload
        send_readings(newcomer, 1)
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody").pw_uid
        assert pki.key.stat().st_uid == nobody and pki.cert.stat().st_uid == nobody


def test_the_renewal_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    didgw = str(Path(sys.executable).with_name("didgw"))
    units = []
    for name in ("didgw-tls-renew.service", "didgw-tls-renew.timer"):
        text = (ROOT / "systemd" / name).read_text()
        unit = tmp_path / name
        unit.write_text(text.replace("/opt/didgw/.venv/bin/didgw", didgw))
        units.append(str(unit))
    assert "didgw tls renew" in Path(units[0]).read_text()
    verify = subprocess.run(
        ["systemd-analyze", "verify", *units],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stderr


# -- people's wallets --------------------------------------------------------------------------


def test_a_wallet_logs_in_over_tls(
    didgw: Run, gateway: GatewayProcess, mosquitto: Mosquitto, pki: Pki, tmp_path: Path
) -> None:
    bob = wal.Wallet(
        f"mqtts://127.0.0.1:{mosquitto.tls_port}",
        key_path=tmp_path / "bob.pem",
        gateway_did=pki.did,
        prefix=mosquitto.prefix,
        tls=dev.Trust(pin=pki.fingerprint),
    )
    out = tmp_path / "bob.sdjwt"
    issued = didgw(
        "cred", "issue", "facility-manager", "--subject", bob.did, "--format", "sd-jwt",
        "--claim", "name=Bob", "--claim", "site=Block A", "-o", str(out),
        "--state-dir", str(pki.state),
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    gateway.start()
    session = bob.authenticate([out.read_text().strip()], ["site"])
    assert session.permissions == ["devices"]
    bob.connect()
    try:
        hall = dev.Identity.from_key(dev.load_or_create_key(tmp_path / "hall.pem"))
        answer = bob.request("register", did=hall.did, name="hall", kind="sensor")
    finally:
        bob.close()
    assert answer["status"] == "done"

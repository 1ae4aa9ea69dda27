"""Run the real ``didgw`` command in a clean environment; run a real mosquitto broker, a
real anvil chain, and ``didgw run`` against that broker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from anvil import Anvil, missing_anvil
from broker import Mosquitto, free_port, missing_tools
from browser import Browser, launched
from gateway_process import GatewayProcess
from inverters import Inverters
from meters import Meters
from people_web import Person
from support import Run

DIDGW = str(Path(sys.executable).with_name("didgw"))


@pytest.fixture
def didgw(tmp_path: Path) -> Run:
    """``didgw(*args, env=…, cwd=…, input=…)``: run the installed command with HOME and state
    in tmp_path (``input``: its standard input)."""
    base_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "LANG": "C.UTF-8",
    }

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DIDGW, *args],
            input=input,
            capture_output=True,
            text=True,
            env={**base_env, **(env or {})},
            cwd=cwd or tmp_path,
            timeout=60,
            check=False,
        )

    return run


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running mosquitto with dynamic security and the gateway's policy (see broker.py)."""
    missing = missing_tools()
    assert not missing, f"{missing}: run scripts/setup.sh"
    broker = Mosquitto(tmp_path / "mosquitto")
    try:
        broker.setup()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def anvil(tmp_path: Path) -> Iterator[Anvil]:
    """A running anvil dev chain, mining each transaction at once (see anvil.py)."""
    missing = missing_anvil()
    assert not missing, f"{missing}: run scripts/setup.sh --dev"
    chain = Anvil(tmp_path / "anvil")
    try:
        chain.start()
        yield chain
    finally:
        chain.stop()


@pytest.fixture
def gateway(didgw: Run, mosquitto: Mosquitto, tmp_path: Path) -> Iterator[GatewayProcess]:
    """``didgw run`` initialised in tmp_path/state for ``mosquitto``, not yet started; its
    config ends with the [mqtt] table, so a test can append keys to it."""
    state = tmp_path / "state"
    assert didgw("init", "--state-dir", str(state)).returncode == 0
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"[metrics]\nport = {free_port()}\n\n[http]\nport = {free_port()}\n\n"
        # [mqtt] last: tests append keys to it
        "[mqtt]\n" + mosquitto.gateway_settings()
    )
    process = GatewayProcess(state, mosquitto, config)
    yield process
    process.kill()


@pytest.fixture
def front_door(didgw: Run, tmp_path: Path) -> Iterator[GatewayProcess]:
    """``didgw run`` initialised in tmp_path/state with only its HTTP edge (MQTT, CoAP,
    anchoring off), not yet started; ``front_door.url`` is its address (plain HTTP on
    loopback). Its config ends with the [http] table, so a test can append keys to it."""
    state = tmp_path / "state"
    assert didgw("init", "--state-dir", str(state)).returncode == 0
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"[mqtt]\nenabled = false\n\n[coap]\nenabled = false\n\n"
        f"[anchor]\nenabled = false\n\n[metrics]\nport = {free_port()}\n\n"
        f"[http]\nport = {port}\n"
    )
    process = GatewayProcess(state, None, config)
    process.url = f"http://localhost:{port}"
    yield process
    process.kill()


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A real chromium (Playwright); fails, never skips, when it is not installed."""
    with launched() as chromium:
        yield chromium


@pytest.fixture
def person(didgw: Run, front_door: GatewayProcess) -> Person:
    """A household member with a credential the front door's gateway issued, who signs in at
    /login with a wallet (``person.sign_in_browser(page)`` or ``person.sign_in_http()``)."""
    return Person.issued(didgw, front_door)


@pytest.fixture
def https_front_door(front_door: GatewayProcess, didgw: Run) -> GatewayProcess:
    """The ``front_door`` over HTTPS on loopback, as a wallet meets it on a LAN: a
    certificate for localhost from the gateway's own certificate authority (issued with
    ``didgw tls issue``), served as ``[http] cert_file``; ``front_door.ca`` is the authority's
    certificate, which the clients trust."""
    state = front_door.state
    issued = didgw("tls", "issue", "--name", "localhost", "--state-dir", str(state))
    assert issued.returncode == 0, issued.stderr
    port = front_door.url.rsplit(":", 1)[1]
    with front_door.config.open("a") as f:
        f.write(
            f'cert_file = "{state / "tls" / "broker.crt"}"\n'
            f'key_file = "{state / "tls" / "broker.key"}"\n'
            f'public_url = "https://localhost:{port}"\n'
        )
    front_door.url = f"https://localhost:{port}"
    front_door.ca = state / "tls" / "ca.crt"
    return front_door


@pytest.fixture
def inverters() -> Iterator[Inverters]:
    """Simulated SunSpec inverters over Modbus TCP (``inverters.tcp(*args)``) and RTU on real
    ptys (``inverters.pty(link, *args)``), stopped after."""
    sims = Inverters()
    yield sims
    sims.stop()


@pytest.fixture
def meters() -> Iterator[Meters]:
    """Simulated P1 meters on real ptys (``meters.start(link, *args)``), stopped after."""
    sims = Meters()
    yield sims
    sims.stop()

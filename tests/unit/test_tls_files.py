"""The CA and the broker certificate on disk (gateway/ops/tls.py), with the clock as an argument:
made once, renewed when due and not before, files replaced whole with their modes, the
broker told by its pid file, and refusals that say what to do."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.errors import DidgwError, StateError
from gateway.identity import certs
from gateway.ops import tls

NOW = 1_800_000_000.0
DAY = 86400
CONFIG = parse_config({}, source="test")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    tls.ensure_ca(state, None, common_name="didgw CA test", now=NOW)
    return state


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_ca_is_made_once_and_then_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first, created = tls.ensure_ca(state, b"secret", common_name="didgw CA x", now=NOW)
    assert created
    assert mode(state / "keys" / "tls-ca.pem") == 0o600
    again, created = tls.ensure_ca(state, b"secret", common_name="other", now=NOW + DAY)
    assert not created and again == first  # devices pin it: never replaced
    (state / "tls" / "ca.crt").unlink()
    with pytest.raises(StateError, match="restore it from the backup"):
        tls.ensure_ca(state, b"secret", common_name="didgw CA x", now=NOW)


def test_renewal_waits_until_due_then_keeps_the_names(state: Path) -> None:
    names = certs.parse_names(["gateway.local"], ["192.168.1.10"])
    first = tls.issue_broker(CONFIG, state, None, now=NOW, names=names, force=True)
    assert first.reason is not None and first.cert is not None
    key, cert = state / "tls" / tls.BROKER_KEY, state / "tls" / tls.BROKER_CERT
    assert mode(key) == 0o600 and mode(cert) == 0o644
    chain = certs.load_pem(cert.read_bytes(), "broker.crt")
    assert chain == [first.cert, tls.read_ca_cert(state)]  # the leaf, then the CA
    assert not [p for p in key.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    for day in (1, 59):
        kept = tls.issue_broker(CONFIG, state, None, now=NOW + day * DAY)
        assert kept.reason is None and kept.cert == first.cert
    renewed = tls.issue_broker(CONFIG, state, None, now=NOW + 61 * DAY)
    assert renewed.reason is not None and "within 30 days" in renewed.reason
    assert renewed.cert is not None and renewed.cert.serial_number != first.cert.serial_number
    assert certs.names_of(renewed.cert) == names.with_loopback()
    assert renewed.cert.public_key() != first.cert.public_key()  # a new key each time


def test_there_is_nothing_to_renew_before_the_first_issue(state: Path) -> None:
    with pytest.raises(tls.TlsError, match="didgw tls issue --name"):
        tls.issue_broker(CONFIG, state, None, now=NOW)


def test_no_ca_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="run: didgw init"):
        tls.issue_broker(CONFIG, tmp_path, None, now=NOW, names=certs.Names(("x",)))


def test_the_broker_is_told_by_its_pid_file(state: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    config = parse_config({"tls": {"broker_pid_file": str(pid_file)}}, source="test")
    told: list[int] = []
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: told.append(signum))
    try:
        issued = tls.issue_broker(config, state, None, now=NOW, names=certs.Names(("x",)))
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert issued.reloaded == os.getpid() and told == [signal.SIGHUP]
    pid_file.write_text("not a pid\n")
    with pytest.raises(tls.TlsError, match="in place, but the broker was not told"):
        tls.issue_broker(config, state, None, now=NOW, force=True)
    assert tls.read_broker_cert(config, state) != issued.cert  # written all the same


def test_an_owner_needs_root(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before anything is written (as root it is allowed: test_mqtt_tls.py)."""
    monkeypatch.setattr(os, "geteuid", lambda: 4321)  # not root, not the owner named
    config = parse_config({"tls": {"broker_owner": "root"}}, source="test")
    with pytest.raises(tls.TlsError, match="only root may give files to another user"):
        tls.issue_broker(config, state, None, now=NOW, names=certs.Names(("x",)))
    assert tls.read_broker_cert(config, state) is None


def test_didgw_run_is_told_when_the_certificate_is_overdue(state: Path) -> None:
    assert tls.broker_cert_warning(CONFIG, state, now=NOW) is None  # none issued: not its job
    tls.issue_broker(CONFIG, state, None, now=NOW, names=certs.Names(("x",)), force=True)
    assert tls.broker_cert_warning(CONFIG, state, now=NOW + DAY) is None
    late = tls.broker_cert_warning(CONFIG, state, now=NOW + 70 * DAY)
    assert late is not None and "didgw-tls-renew.timer" in late


def test_the_gateways_own_connection_uses_its_ca_by_default(state: Path, tmp_path: Path) -> None:
    assert tls.gateway_tls(CONFIG, state) is None
    on = parse_config({"mqtt": {"tls": True}}, source="test")
    context = tls.gateway_tls(on, state)
    assert context is not None and context.check_hostname
    assert len(context.get_ca_certs()) == 1
    with pytest.raises(DidgwError, match="no TLS certificate authority yet"):
        tls.gateway_tls(on, tmp_path / "elsewhere")

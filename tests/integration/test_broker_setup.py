"""``didgw broker setup`` against a real mosquitto: the accounts, their password files and
the policy from nothing, then again (nothing changes), and the refusals that leave
everything as it was."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest
from support import Run

from gateway.auth import broker as policy
from gateway.ops.broker import PrivateBroker
from gateway.transports.dynsec import DynsecAdmin, DynsecError

pytestmark = pytest.mark.integration

ME = pwd.getpwuid(os.geteuid()).pw_name


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A mosquitto configured as shipped but not set up: no dynamic-security file yet."""
    made = PrivateBroker(tmp_path / "broker")
    made.directory.mkdir()
    yield made
    made.stop()


def setup_args(tmp_path: Path, broker: PrivateBroker, password_file: str = "") -> list[str]:
    config = tmp_path / "gateway.toml"
    line = f'password_file = "{password_file}"\n' if password_file else ""
    config.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n{line}'
        f'token_dir = "{broker.token_dir}"\n'
    )
    return [
        "broker", "setup", "--config", str(config), "--state-dir", str(tmp_path / "state"),
        "--dynsec-file", str(broker.dynsec_file), "--service-user", ME, "--broker-user", ME,
    ]  # fmt: skip


def test_setup_makes_the_accounts_then_keeps_them(
    didgw: Run, tmp_path: Path, broker: PrivateBroker
) -> None:
    etc = tmp_path / "etc"
    gateway_file, admin_file = etc / "broker.password", etc / "broker-admin.password"
    args = setup_args(tmp_path, broker, str(gateway_file))

    # the broker is not running yet: the files are made, and it says what to do next
    first = didgw(*args)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "restart it" in first.stderr and "run 'didgw broker setup' again" in first.stderr
    assert f"wrote a new password in {gateway_file} (0600)" in first.stdout
    assert broker.dynsec_file.exists() and mode(broker.dynsec_file) == 0o600
    assert mode(gateway_file) == mode(admin_file) == 0o600
    gateway_password = gateway_file.read_text().strip()
    admin_password = admin_file.read_text().strip()
    assert len(gateway_password) >= 32 and gateway_password != admin_password
    for secret in (gateway_password, admin_password):
        assert secret not in first.stdout + first.stderr

    broker.config_file.write_text(broker.config())
    broker.start()
    second = didgw(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "the gateway's account didgw: created" in second.stdout
    assert "kept the password" in second.stdout
    for secret in (gateway_password, admin_password):
        assert secret not in second.stdout + second.stderr

    # the gateway logs in with its file's password and may administer; anonymous clients
    # are in the policy's group, with the policy's default access
    with DynsecAdmin(broker.host, broker.port, "didgw", gateway_password) as gateway:
        assert set(gateway.list_clients()) == {"admin", "didgw"}
        answer = gateway.execute([{"command": "getAnonymousGroup"}])[0]
        assert answer["data"]["group"]["groupname"] == policy.ANONYMOUS_GROUP
        access = gateway.execute([{"command": "getDefaultACLAccess"}])[0]["data"]["acls"]
        assert {a["acltype"]: a["allow"] for a in access} == policy.DEFAULT_ACL_ACCESS
    with pytest.raises(DynsecError):  # the administrator's password is not the gateway's
        DynsecAdmin(broker.host, broker.port, "admin", gateway_password).connect()

    # again: nothing new, the same passwords, the account's password set from its file
    third = didgw(*args)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "password set from its file" in third.stdout
    assert "wrote a new" not in third.stdout and "made " not in third.stdout
    assert gateway_file.read_text().strip() == gateway_password
    assert admin_file.read_text().strip() == admin_password
    with DynsecAdmin(broker.host, broker.port, "didgw", gateway_password) as gateway:
        assert "didgw" in gateway.list_clients()


def test_setup_refuses_what_it_cannot_trust_and_changes_nothing(
    didgw: Run, tmp_path: Path, broker: PrivateBroker
) -> None:
    # no [mqtt] password_file: it says which setting to add
    bare = didgw(*setup_args(tmp_path, broker))
    assert bare.returncode == 1
    assert "set [mqtt] password_file" in bare.stderr
    assert not broker.dynsec_file.exists()

    # a password file that others may read is refused, not used and not replaced
    etc = tmp_path / "etc"
    etc.mkdir()
    shared = etc / "broker.password"
    shared.write_text("readable-by-all\n")
    shared.chmod(0o644)
    refused = didgw(*setup_args(tmp_path, broker, str(shared)))
    assert refused.returncode == 1
    assert str(shared) in refused.stderr and "readable-by-all" not in refused.stderr
    assert shared.read_text() == "readable-by-all\n" and mode(shared) == 0o644
    assert not (etc / "broker-admin.password").exists()
    assert not broker.dynsec_file.exists()

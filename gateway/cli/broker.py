"""``didgw broker setup``: the broker's accounts, passwords and access policy, in one command."""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path

from gateway.cli._base import CommandTree, load_config, state_dir

#: Where mosquitto's dynamic-security plugin keeps its file (configs/mosquitto/mosquitto.conf).
DYNSEC_FILE = "/var/lib/mosquitto/dynamic-security.json"
#: The administrator's password file, beside the gateway's (``[mqtt] password_file``).
ADMIN_PASSWORD_NAME = "broker-admin.password"  # noqa: S105 - a file name


def cmd_broker_setup(args: argparse.Namespace) -> int:
    from gateway.errors import ConfigError
    from gateway.ops import broker_setup as setup
    from gateway.ops.tls import gateway_tls
    from gateway.service import token_dir
    from gateway.transports.dynsec import DynsecAdmin, DynsecError

    written = _password_file_setting(args)
    early = setup.password_file(written, owner=args.service_user) if written else None
    config = load_config(args)  # checks that the password file is its owner's alone
    mqtt = config.mqtt
    if not mqtt.password_file:
        raise ConfigError(
            f"{config.source}: set [mqtt] password_file (for example "
            '"/etc/didgw/broker.password"): the gateway reads its broker password there, '
            "and this command writes a new random one there if the file does not exist"
        )
    gateway_file = Path(mqtt.password_file)
    admin_file = Path(args.admin_password_file or gateway_file.with_name(ADMIN_PASSWORD_NAME))
    if early is not None and early.path == gateway_file:
        gateway = early
    else:
        gateway = setup.password_file(gateway_file, owner=args.service_user)
    admin = setup.password_file(admin_file)
    for made in (admin, gateway):
        print(f"{'wrote a new' if made.made else 'kept the'} password in {made.path} (0600)")
    dynsec_file = Path(args.dynsec_file)
    if setup.init_dynsec_file(dynsec_file, admin.value, owner=args.broker_user):
        print(f"made {dynsec_file} with the account {setup.ADMIN_USERNAME}")
    state = state_dir(args, config)
    tokens = token_dir(config, state)
    setup.token_directory(tokens, owner=args.service_user, group=args.broker_user)
    where = f"{mqtt.host}:{mqtt.port}"
    client = DynsecAdmin(
        mqtt.host, mqtt.port, setup.ADMIN_USERNAME, admin.value, tls=gateway_tls(config, state)
    )
    try:
        client.connect()
    except DynsecError as exc:
        raise setup.SetupError(
            f"cannot log in to the broker at {where} as {setup.ADMIN_USERNAME}: {exc}. "
            f"mosquitto reads {dynsec_file} when it starts: restart it (systemctl restart "
            "mosquitto) and run 'didgw broker setup' again. If the file was made with another "
            f"password, put that password in {admin_file}"
        ) from None
    try:
        for line in setup.apply_policy(client, mqtt.prefix, mqtt.username, gateway.value):
            print(line)
    finally:
        client.close()
    print(f"the broker at {where} is set up for the gateway; its sessions' key goes to {tokens}")
    return 0


def _password_file_setting(args: argparse.Namespace) -> Path | None:
    """``[mqtt] password_file`` as the config file says it, read before the config is
    checked: the check wants the file to exist, and this command is what makes it. A config
    that cannot be read gives None here, and its error from the check that follows."""
    from gateway.config import find_config

    path = find_config(args.config, os.environ)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8")) if path is not None else {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    table = data.get("mqtt")
    value = table.get("password_file") if isinstance(table, dict) else None
    return Path(value) if isinstance(value, str) and value else None


def register(tree: CommandTree) -> None:
    broker = tree.group("broker", "the MQTT broker the gateway uses (mosquitto)")
    p = tree.command(
        "setup",
        cmd_broker_setup,
        "create the broker's administrator and the gateway's account with random passwords "
        "in 0600 files (kept when they exist), mosquitto's dynamic-security file if missing, "
        "and apply the access policy; safe to run again",
        "sudo didgw broker setup --config /etc/didgw/gateway.toml",
        group=broker,
        on_state=False,  # root: it gives files to the broker and the service
    )
    p.add_argument(
        "--admin-password-file",
        metavar="FILE",
        help=f"the administrator's password (default: {ADMIN_PASSWORD_NAME} beside "
        "[mqtt] password_file)",
    )
    p.add_argument(
        "--dynsec-file",
        metavar="FILE",
        default=DYNSEC_FILE,
        help=f"mosquitto's dynamic-security file (default: {DYNSEC_FILE})",
    )
    p.add_argument(
        "--broker-user",
        metavar="USER",
        default="mosquitto",
        help="run as root: the broker's user, who gets the dynamic-security file and reads "
        "the gateway's token directory (default: mosquitto)",
    )
    p.add_argument(
        "--service-user",
        metavar="USER",
        default="didgw",
        help="run as root: the gateway service's user, who gets its password file and the "
        "token directory (default: didgw)",
    )

"""``didgw homeassistant enable|disable|list``: a household's Home Assistant, opted in or out."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from gateway.cli._base import CommandTree, load_config, open_gateway, print_json, state_dir


def _broker(args: argparse.Namespace) -> tuple[Any, Any, str, Any]:
    """(config, a connected dynamic-security client as the gateway, its password, TLS)."""
    from gateway.ops.tls import gateway_tls
    from gateway.run.runner import mqtt_password
    from gateway.transports.dynsec import DynsecAdmin

    config = load_config(args)
    password = mqtt_password(config, os.environ)
    tls = gateway_tls(config, state_dir(args, config))
    mqtt = config.mqtt
    admin = DynsecAdmin(mqtt.host, mqtt.port, mqtt.username, password, tls=tls)
    admin.connect()
    return config, admin, password, tls


def cmd_enable(args: argparse.Namespace) -> int:
    from gateway.errors import DidgwError
    from gateway.files import write_private
    from gateway.ops import homeassistant

    target = Path(args.password_file) if args.password_file else None
    if target is not None and (target.exists() or target.is_symlink()):
        raise DidgwError(f"{target} exists; name a new file (it gets the password, 0600)")
    config, admin, _, _ = _broker(args)
    try:
        with open_gateway(args) as gateway:
            done = homeassistant.enable(
                gateway.db, admin, args.household, prefix=config.mqtt.prefix,
                now_ms=int(time.time() * 1000),
            )  # fmt: skip
    finally:
        admin.close()
    if target is not None:
        write_private(target, (done.password + "\n").encode("ascii"), error=DidgwError)
    print(
        f"{'enabled' if done.new else 'new password for'} Home Assistant of {args.household}\n"
        f"  broker username:   {done.username}\n"
        f"  discovery prefix:  {done.discovery_prefix}\n"
        "  client id:         any id starting with didgw- (e.g. didgw-homeassistant)"
    )
    if target is not None:
        print(f"  password:          in {target} (0600); it is not kept anywhere else")
    else:
        print(f"  password:          {done.password}\n(shown once; it is not kept anywhere)")
    if not config.homeassistant.enabled:
        print(
            "note: the gateway publishes only with [homeassistant] enabled = true",
            file=sys.stderr,
        )
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    from gateway.auth import homeassistant_access as access
    from gateway.ops import homeassistant

    config, admin, password, tls = _broker(args)
    try:
        with open_gateway(args) as gateway:
            was = homeassistant.disable(gateway.db, admin, args.household)
    finally:
        admin.close()
    prefix, node = config.mqtt.prefix, access.node_id(args.household)
    mqtt = config.mqtt
    homeassistant.clear_published(
        mqtt.host,
        mqtt.port,
        mqtt.username,
        password,
        [access.discovery_topic(prefix, node), access.state_topic(prefix, node)],
        tls=tls,
    )
    print(
        f"{'disabled' if was else 'was not enabled:'} Home Assistant of {args.household}: "
        "its broker account is deleted and its device removed from Home Assistant"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from gateway.market.homeassistant_households import listing

    with open_gateway(args) as gateway:
        rows = listing(gateway.db)
    if args.json:
        print_json(rows)
    for row in [] if args.json else rows:
        print(f"{row['household']}  username {row['username']}")
    return 0


def register(tree: CommandTree) -> None:
    group = tree.group(
        "homeassistant", "households' Home Assistant: MQTT discovery on a read-only account"
    )
    p = tree.command(
        "enable",
        cmd_enable,
        "opt a household in: a broker account that reads only her entities, with a new "
        "random password shown once (or written to a new 0600 file); again: a new password",
        "didgw homeassistant enable did:key:z6MkHOUSE… --password-file ha.password",
        group=group,
    )
    p.add_argument("household", metavar="DID", help="the household's DID")
    p.add_argument(
        "--password-file",
        metavar="FILE",
        help="write the password to this new file (0600) instead of showing it",
    )
    p = tree.command(
        "disable",
        cmd_disable,
        "opt a household out: delete her broker account and remove her device from Home "
        "Assistant (empty retained discovery message)",
        "didgw homeassistant disable did:key:z6MkHOUSE…",
        group=group,
    )
    p.add_argument("household", metavar="DID", help="the household's DID")
    p = tree.command(
        "list",
        cmd_list,
        "households that opted in, with their broker usernames",
        "didgw homeassistant list --json",
        group=group,
    )
    p.add_argument("--json", action="store_true", help="as JSON")

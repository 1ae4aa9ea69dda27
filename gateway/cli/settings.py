"""``didgw config …``: the configuration file."""

from __future__ import annotations

import argparse
import sys

from gateway.cli._base import CommandTree, load_config, state_dir


def cmd_config_example(args: argparse.Namespace) -> int:
    from gateway.config import render_example

    print(render_example(), end="")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from gateway.config import mqtt_tls_warnings

    config = load_config(args)
    warnings = mqtt_tls_warnings(config)
    if warnings:
        print(f"valid, with {len(warnings)} warning(s): {config.source}")
        for _, message in warnings:
            print(f"WARNING: {message}", file=sys.stderr)
    else:
        print(f"ok: {config.source}")
    print(f"state directory: {state_dir(args, config)}")
    return 0


def register(tree: CommandTree) -> None:
    config = tree.group("config", "the configuration file")
    tree.command(
        "example",
        cmd_config_example,
        "print a config file listing every key with its default",
        "didgw config example > /etc/didgw/gateway.toml",
        group=config,
    )
    tree.command(
        "check",
        cmd_config_check,
        "validate the config file and say which one is used",
        "didgw config check --config /etc/didgw/gateway.toml",
        group=config,
    )

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
    config = load_config(args)
    warnings = config.warnings()
    note = f", with {len(warnings)} exposure warning(s) below" if warnings else ""
    print(f"ok: {config.source}{note}")
    print(f"state directory: {state_dir(args, config)}")
    for key, why in warnings:
        section, name = key.split(".", 1)
        print(f"WARNING: [{section}] {name}: {why}", file=sys.stderr)
    return 0


def register(tree: CommandTree) -> None:
    config = tree.group("config", "the configuration file")
    tree.command(
        "example",
        cmd_config_example,
        "print a config file listing every key with its default",
        "didgw config example > /etc/didgw/gateway.toml",
        group=config,
        on_state=False,
    )
    tree.command(
        "check",
        cmd_config_check,
        "validate the config file and say which one is used",
        "didgw config check --config /etc/didgw/gateway.toml",
        group=config,
        on_state=False,
    )

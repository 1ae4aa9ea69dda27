"""``didgw run``: the gateway as a long-running process."""

from __future__ import annotations

import argparse

from gateway.cli._base import CommandTree, load_config, state_dir


def cmd_run(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.runner import run

    config = load_config(args)
    logs.configure()
    run(config, state_dir(args, config))
    return 0


def register(tree: CommandTree) -> None:
    tree.command(
        "run",
        cmd_run,
        "run the gateway: serve devices over MQTT until SIGTERM or Ctrl-C",
        "didgw run --config /etc/didgw/gateway.toml",
    )

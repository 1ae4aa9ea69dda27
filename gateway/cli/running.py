"""``didgw run``: the gateway as a long-running process."""

from __future__ import annotations

import argparse
import logging
import os

from gateway.cli._base import CommandTree, load_config, state_dir


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.runner import run

    config = load_config(args)
    # One line per event; journald adds its own timestamps.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(level=logging.INFO, format=stamp + "%(levelname)s %(name)s: %(message)s")
    run(config, state_dir(args, config))
    return 0


def register(tree: CommandTree) -> None:
    tree.command(
        "run",
        cmd_run,
        "run the gateway: serve devices over MQTT until SIGTERM or Ctrl-C",
        "didgw run --config /etc/didgw/gateway.toml",
    )

"""``didgw run``: the gateway as a long-running process."""

from __future__ import annotations

import argparse
import logging
import sys

from gateway.cli._base import CommandTree, load_config, state_dir

#: ``didgw run``'s exit status when starting again cannot help (sysexits' EX_CONFIG): the
#: unit's ``RestartPreventExitStatus`` stops systemd from restarting it forever.
NOT_RESTARTABLE = 78


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.errors import ConfigError, KeyStoreError, StateError
    from gateway.ops import logs
    from gateway.ops.sdnotify import Notifier

    try:
        config = load_config(args)
        logs.configure()
        for key, why in config.warnings():
            section, name = key.split(".", 1)
            logging.getLogger("didgw").warning("[%s] %s: %s", section, name, why)
        from gateway.run.runner import run

        run(config, state_dir(args, config))
    except (ConfigError, KeyStoreError, StateError) as exc:
        # A bad or incomplete configuration, a missing or unreadable key, a state that is
        # not a gateway's: the same next time. Said where `systemctl status` shows it.
        notifier = Notifier()
        notifier.status(f"not started: {exc} (a restart will not fix this)")
        notifier.close()
        print(f"didgw: error: {exc}", file=sys.stderr)
        print("didgw: not started, and a restart will not fix this: fix it, then start again",
              file=sys.stderr)  # fmt: skip
        return NOT_RESTARTABLE
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """The health summary: the running gateway's live figures (from its metrics endpoint)
    and what the database holds. Exit 0 when the gateway answers and every connection is
    up, 1 otherwise (for scripts and monitoring)."""
    from gateway.db import DB_NAME, open_read_only
    from gateway.ops.health import stored_health
    from gateway.ops.status import live_health, render_status

    config = load_config(args)
    directory = state_dir(args, config)
    conn = open_read_only(directory / DB_NAME)
    try:
        stored = stored_health(conn)
    finally:
        conn.close()
    live = live_health(config.metrics.host, config.metrics.port) if config.metrics.enabled else None
    text, healthy = render_status(stored, live, anchoring=config.anchor.enabled)
    print(text)
    return 0 if healthy else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole product for a minute, on loopback (see gateway/cli/demo.py)."""
    from pathlib import Path

    from gateway.cli.demo import DemoError, run

    if args.config is not None:
        raise DemoError("didgw demo writes its own configuration: --config is not used")
    state = Path(args.state_dir) if args.state_dir is not None else None
    return run(args.seconds, keep=args.keep, state_dir=state)


def register(tree: CommandTree) -> None:
    tree.command(
        "run",
        cmd_run,
        "run the gateway: serve devices over MQTT until SIGTERM or Ctrl-C",
        "didgw run --config /etc/didgw/gateway.toml",
    )
    demo = tree.command(
        "demo",
        cmd_demo,
        "run the whole product for a minute on loopback: broker, ledger, devices, market",
        "didgw demo --seconds 60",
        on_state=False,
    )
    demo.add_argument("--seconds", type=float, default=60.0, help="how long devices send")
    demo.add_argument("--keep", action="store_true", help="keep the demo's files afterwards")
    tree.command(
        "status",
        cmd_status,
        "the gateway's health: readings, refusals, connections, record, anchors",
        "didgw status --config /etc/didgw/gateway.toml",
    )

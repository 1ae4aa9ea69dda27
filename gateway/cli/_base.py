"""What every didgw subcommand shares: the command tree, the common options, output helpers.

Only the standard library is imported here: ``didgw --help`` must start fast.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.service import Gateway

Handler = Callable[[argparse.Namespace], int]


class CommandTree:
    """Declares subcommands: each gets the common options, a handler and an example."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self._top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
        self._common = _common_options()

    def group(
        self, name: str, help_text: str
    ) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        sub = self._top.add_parser(name, help=help_text, description=help_text)
        return sub.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)

    def command(
        self,
        name: str,
        handler: Handler,
        help_text: str,
        example: str,
        *,
        group: argparse._SubParsersAction[argparse.ArgumentParser] | None = None,
        on_state: bool = True,
    ) -> argparse.ArgumentParser:
        """``on_state``: the command works on the gateway's state, so it runs as the state's
        owner (``ops/service_user.py``); False for those that must stay who they are."""
        sub = (group or self._top).add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[self._common],
            epilog=f"Example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(func=handler, on_state=on_state)
        return sub


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("gateway options")
    group.add_argument(
        "--state-dir",
        metavar="DIR",
        help="state directory (default: $DIDGW_STATE_DIR, [gateway] state_dir, "
        "$STATE_DIRECTORY, /var/lib/didgw if it exists, ~/.local/state/didgw)",
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $DIDGW_CONFIG, $CONFIGURATION_DIRECTORY/gateway.toml, "
        "/etc/didgw/gateway.toml, else built-in defaults)",
    )
    return common


def change_options(parser: argparse.ArgumentParser, *, reason_required: bool) -> None:
    """``--reason`` and ``--by``: every change says why and who."""
    parser.add_argument("--reason", required=reason_required, help="why (kept in the audit trail)")
    parser.add_argument("--by", metavar="WHO", help="who makes the change (default: local:<user>)")


def load_config(args: argparse.Namespace) -> Config:
    from gateway.config import find_config, load_config

    return load_config(find_config(args.config, os.environ))


def state_dir(args: argparse.Namespace, config: Config) -> Path:
    from gateway.config import state_dir

    return state_dir(config, args.state_dir, os.environ)


def as_state_owner(args: argparse.Namespace) -> None:
    """Before a command on the gateway's state: become the state's owner if it is another
    user's (as root), or stop with the command to run as that user."""
    if not getattr(args, "on_state", False):
        return
    from gateway.errors import ConfigError
    from gateway.ops.service_user import run_as_owner

    try:
        config = load_config(args)
    except ConfigError:
        return  # the command says what is wrong with it, in its own way
    run_as_owner(state_dir(args, config))


def open_gateway(args: argparse.Namespace) -> Gateway:
    from gateway.service import open_gateway

    config = load_config(args)
    return open_gateway(config, state_dir(args, config))


def actor(args: argparse.Namespace) -> str:
    return str(args.by or f"local:{getpass.getuser()}")


def when(ts: float | None) -> str:
    """A Unix time in seconds as ISO 8601 UTC, or '-'."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))

"""The ``didgw`` command: each subcommand is a few lines over a library call.

One module per command group (``identity``, ``devices``, ``chain``, ``anchor``,
``energy``, ``homeassistant``, ``credentials``, ``api_tokens``, ``running``, ``settings``, ``tls``,
``broker``, ``backup``), each declaring its parsers next to its handlers; ``demo`` is
``didgw demo``. Nothing imports this package. Start-up must stay fast (``didgw --help`` well
under 0.3 s on a Pi), so only the standard library is imported until a command runs. Exit
status: 0 done, 1 refused (the message says why), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway.cli import (
    anchor,
    api_tokens,
    backup,
    broker,
    chain,
    credentials,
    devices,
    energy,
    homeassistant,
    identity,
    inverters,
    running,
    settings,
    tls,
)
from gateway.cli._base import CommandTree, as_state_owner

DESCRIPTION = """\
didgw: DID authentication gateway for the IoT edge.

Devices and people are identified by DIDs; the gateway keeps the registry of
who may connect, checks every signature they send, and keeps a tamper-evident
record of what it accepted.
"""


class _Version(argparse.Action):
    """``--version``: prints ``didgw <version>``, read only when asked (it costs an import)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print didgw's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from gateway import __version__

        print(f"didgw {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="didgw",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example:\n  didgw init && didgw device list\n\n"
        "Run 'didgw COMMAND --help' for each command.",
    )
    parser.add_argument("--version", action=_Version)
    tree = CommandTree(parser)
    for module in (
        identity,
        devices,
        chain,
        anchor,
        energy,
        homeassistant,
        inverters,
        credentials,
        api_tokens,
        running,
        settings,
        tls,
        broker,
        backup,
    ):
        module.register(tree)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gateway.errors import DidgwError

    try:
        as_state_owner(args)
        return int(args.func(args))
    except DidgwError as exc:
        print(f"didgw: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


__all__ = ["build_parser", "main"]

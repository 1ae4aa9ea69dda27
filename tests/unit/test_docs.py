"""Every didgw command has an example in its --help and is documented in the README."""

from __future__ import annotations

import argparse
import re

import pytest
from support import ROOT

from gateway.cli import build_parser


def command_paths() -> list[tuple[str, argparse.ArgumentParser]]:
    found: list[tuple[str, argparse.ArgumentParser]] = []

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found.append((prefix, parser))
        for action in subs:
            for name, sub in action.choices.items():
                walk(f"{prefix} {name}", sub)

    walk("didgw", build_parser())
    return found


COMMANDS = command_paths()
README = (ROOT / "README.md").read_text()
CODE = "\n".join(re.findall(r"```sh\n(.*?)```", README, flags=re.S))


def test_the_command_tree_is_what_the_readme_describes() -> None:
    assert len(COMMANDS) >= 12


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_help_has_an_example_of_the_command(path: str, parser: argparse.ArgumentParser) -> None:
    assert parser.epilog and "Example:" in parser.epilog
    assert path in parser.epilog.split("Example:")[1]


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_readme_shows_the_command_in_an_example(path: str, parser: argparse.ArgumentParser) -> None:
    assert re.search(rf"^{re.escape(path)}\b", CODE, flags=re.M), (
        f"README has no example of `{path}`"
    )


def test_readme_has_exactly_two_setup_commands_up_front() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, flags=re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["./scripts/demo.sh", "./scripts/test.sh"]
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("exec ./scripts/test.sh")

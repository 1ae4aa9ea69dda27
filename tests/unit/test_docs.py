"""The documentation holds together.

Every didgw command has an example in its --help and is shown in a ```sh example in README.md
or under docs/; every repo-relative path that the code, the configs, the units and the docs
cite exists; nothing cites a README section by its title any more (cite the file path:
``docs/protocol/mqtt.md, "Readings"``); links between markdown files land on a file, and on a
heading when they name one; and each long page opens with a table of contents.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

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
DOCS = sorted((ROOT / "docs").rglob("*.md"))
#: README.md and the reference under docs/: where every command must be shown.
PAGES = [ROOT / "README.md", *DOCS]
FENCE = re.compile(r"^```.*?^```[^\n]*$", flags=re.S | re.M)
SH_BLOCK = re.compile(r"```sh\n(.*?)```", flags=re.S)


def sh_examples(text: str) -> str:
    return "\n".join(SH_BLOCK.findall(text))


CODE = "\n".join(sh_examples(page.read_text()) for page in PAGES)

# -- the files whose citations are checked -----------------------------------------------

#: Folders (and files) whose text may cite documentation or other files of the checkout.
CITING = ("gateway", "tests", "bench", "firmware-sim", "configs", "systemd", "scripts", "docs")
SKIP_DIRS = frozenset(
    {"node_modules", "__pycache__", ".venv", ".git", ".mypy_cache", ".pytest_cache"}
)
TEXT_SUFFIXES = frozenset(
    {".py", ".md", ".toml", ".conf", ".service", ".sysusers", ".sh", ".txt", ".cfg", ".ini"}
)
#: This file holds examples of the old citation style on purpose.
THIS_FILE = Path(__file__).resolve()


def citing_files() -> Iterator[Path]:
    yield ROOT / "README.md"
    for top in CITING:
        for path in sorted((ROOT / top).rglob("*")):
            if SKIP_DIRS.intersection(path.relative_to(ROOT).parts):
                continue
            if path.is_file() and path.suffix in TEXT_SUFFIXES and path.resolve() != THIS_FILE:
                yield path


def lines_of(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines()


def where(path: Path, number: int) -> str:
    return f"{path.relative_to(ROOT)}:{number}"


# -- commands -----------------------------------------------------------------------------


def test_the_command_tree_is_what_the_docs_describe() -> None:
    assert len(COMMANDS) >= 12


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_help_has_an_example_of_the_command(path: str, parser: argparse.ArgumentParser) -> None:
    assert parser.epilog and "Example:" in parser.epilog
    assert path in parser.epilog.split("Example:")[1]


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_the_docs_show_the_command_in_an_example(
    path: str, parser: argparse.ArgumentParser
) -> None:
    assert re.search(rf"^{re.escape(path)}\b", CODE, flags=re.M), (
        f"no ```sh example of `{path}` in README.md or docs/"
    )


def test_the_command_check_can_fail() -> None:
    assert not re.search(r"^didgw chain frobnicate\b", CODE, flags=re.M)
    assert sh_examples("```sh\ndidgw init\n```\n```toml\ndidgw run\n```") == "didgw init\n"


def test_readme_has_exactly_two_setup_commands_up_front() -> None:
    first_block = SH_BLOCK.search(README)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["./scripts/demo.sh", "./scripts/test.sh"]
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("exec ./scripts/test.sh")


def test_readme_is_a_front_door_not_the_reference() -> None:
    size = len(README.encode("utf-8"))
    assert size < 30_000, f"README.md is {size} bytes; move reference text to docs/"


# -- cited paths --------------------------------------------------------------------------

#: A repo-relative path: one of these folders and something in it, or README.md, not inside
#: a longer path or a URL.
CITED_PATH = re.compile(
    r"(?<![\w./@:-])((?:docs|configs|firmware-sim|systemd|bench|scripts|tests|gateway)/[\w.-]"
    r"(?:[\w./-]*\w)?|README\.md)/?(?![\w/-])"
)
#: Provenance notes of test vectors name files in other projects' repositories; and
#: ``node_modules`` folders appear only once setup.sh has installed them.
FOREIGN = ("tests/vectors/", "tests/interop/")


def cited_paths(text: str) -> list[str]:
    return CITED_PATH.findall(text)


def test_the_path_pattern_finds_what_it_should() -> None:
    text = (
        'see docs/protocol/mqtt.md, "Readings"; (configs/mosquitto/) and README.md; '
        "firmware-sim/device.py. https://example.com/docs/x.md file:/opt/didgw/README.md "
        "gateway/run/recorder.py bench/*"
    )
    assert cited_paths(text) == [
        "docs/protocol/mqtt.md",
        "configs/mosquitto",
        "README.md",
        "firmware-sim/device.py",
        "gateway/run/recorder.py",
    ]


def test_every_cited_path_exists() -> None:
    missing = [
        f"{where(path, number)}: {cited}"
        for path in citing_files()
        if not str(path.relative_to(ROOT)).startswith(FOREIGN)
        for number, line in enumerate(lines_of(path), start=1)
        for cited in cited_paths(line)
        if "node_modules" not in cited and not (ROOT / cited).exists()
    ]
    assert not missing, "cited paths that do not exist:\n" + "\n".join(missing)


# -- no citations of README sections by title ------------------------------------------------

#: "README" (not the path README.md), maybe "'s", then punctuation, then a quoted or
#: capitalised title: README "Receipts", (README, "The market"), (README, Readings), the
#: README ("Devices over MQTT"), the main README's "Devices over CoAP (protocol)", the
#: README's CoAP benchmark. Not: "the README's first command", "README.md, "Readings"".
TITLE_CITATION = re.compile(r"\bREADME\b(?!\.md)(?:'s)?[\s,(]*[\"“]?[A-Z]")

#: Citations of README sections by title as the code had them, to show the check catches them.
OLD_CITATIONS = [
    ':mod:`gateway.anchor.verify_receipt` reads; README "Receipts" documents it.',
    'The trust is not the same as a self-signed device\'s (README, "Vouched meters"): the',
    '"""As the ``values`` of a reading (README, Readings)."""',
    'thing that is not exactly what the README ("Devices over MQTT (protocol)") says:',
    'mosquitto enforces the topic layout of the README ("Devices over MQTT"); this module',
    "verified in this process; see the README's CoAP benchmark).",
    'The rule (README, "The market"):',
    '| `device.py` | the device: identity, the protocol of the main README\'s "Devices over MQTT"',
    "Nothing is imported from the gateway. The protocol is the main README's \"Devices over",
    "`coap_sensor.py` is a constrained device over CoAP: the protocol of the main README's\n"
    '"Devices over CoAP (protocol)", with aiocoap, cbor2 and pyca/cryptography',
    '"""A person\'s wallet speaking didgw\'s wallet protocol (README, "People over MQTT").',
    '# didgw as a systemd service. Install (see the README, "Running it as a service"):',
    'load generator processes that speak the wire protocol of the README ("Devices',
]
GOOD_CITATIONS = [
    '"""As the ``values`` of a reading (docs/protocol/mqtt.md, "Readings")."""',
    '# didgw as a systemd service. Install (see README.md, "Running it as a service"):',
    '"""README.md\'s first command: ``didgw demo`` runs the whole product',
    "exec(match.group(1), {})  # (the snippet in configs/mosquitto/README.md)",
]


@pytest.mark.parametrize("text", OLD_CITATIONS)
def test_the_title_check_catches_the_old_style(text: str) -> None:
    assert TITLE_CITATION.search(text)


@pytest.mark.parametrize("text", GOOD_CITATIONS)
def test_the_title_check_passes_file_paths(text: str) -> None:
    assert not TITLE_CITATION.search(text)


def test_nothing_cites_a_readme_section_by_its_title() -> None:
    offenders = []
    for path in citing_files():
        text = path.read_text(errors="replace")
        for match in TITLE_CITATION.finditer(text):
            number = text.count("\n", 0, match.start()) + 1
            line = text.splitlines()[number - 1].strip()
            offenders.append(f"{where(path, number)}: {line}")
    assert not offenders, (
        'cite the file instead (docs/protocol/mqtt.md, "Readings"), not a README section '
        "by its title:\n" + "\n".join(offenders)
    )


# -- links between markdown files ---------------------------------------------------------------

MARKDOWN = sorted(
    path for path in ROOT.rglob("*.md") if not SKIP_DIRS.intersection(path.relative_to(ROOT).parts)
)
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", flags=re.M)


def without_code(text: str) -> str:
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for _, title in HEADING.findall(without_code(path.read_text())):
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def name_of(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken_links(path: Path) -> Iterator[str]:
    for target in LINK.findall(without_code(path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, …
            continue
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            yield f"{name_of(path)}: ({target}): no such file"
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            yield f"{name_of(path)}: ({target}): no heading #{fragment} there"


def test_slugs_are_githubs() -> None:
    assert slug("Health: metrics and `didgw status`") == "health-metrics-and-didgw-status"
    assert slug("COSE_Sign1 as didgw reads it") == "cose_sign1-as-didgw-reads-it"
    assert slug("VC 2.0 with eddsa-jcs-2022") == "vc-20-with-eddsa-jcs-2022"


def test_the_link_check_can_fail(tmp_path: Path) -> None:
    page = tmp_path / "a.md"
    page.write_text(
        "# A\n\n## Here it is\n\n```sh\n# not a heading\n```\n\n"
        "[x](b.md) [y](a.md#here-it-is) [z](a.md#gone) [w](#here-it-is) [v](#not-a-heading) "
        "[u](https://example.com/c.md)\n"
    )
    assert list(broken_links(page)) == [
        f"{page}: (b.md): no such file",
        f"{page}: (a.md#gone): no heading #gone there",
        f"{page}: (#not-a-heading): no heading #not-a-heading there",
    ]


def test_links_between_markdown_files_land() -> None:
    broken = [problem for path in MARKDOWN for problem in broken_links(path)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_long_pages_open_with_a_table_of_contents() -> None:
    missing = []
    for path in PAGES:
        text = without_code(path.read_text())
        sections = re.findall(r"^## (.+)$", text, flags=re.M)
        if len(sections) < 4:
            continue
        top = text[: text.index("\n## ")]
        listed = {link.partition("#")[2] for link in LINK.findall(top) if link.startswith("#")}
        missing += [
            f"{path.relative_to(ROOT)}: ## {title}"
            for title in sections
            if slug(title) not in listed
        ]
    assert not missing, "not in the table of contents at the top:\n" + "\n".join(missing)

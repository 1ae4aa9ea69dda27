"""The import graph points one way: foundations ← core ← edges, and nothing imports the CLI.
And no test module imports another: what tests share is in conftest.py or a helper module.

Read from the source with ``ast`` (imports inside functions count too), so a lazy import
cannot hide an arrow pointing up.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

import pytest
from support import ROOT

FOUNDATIONS = {"errors", "files", "config", "db", "migrations"}
CORE = {"identity", "credentials", "registry", "auth", "chain", "anchor", "energy", "market"}
EDGES = {"transports", "service", "run", "ops", "cli"}

#: What each part may import besides itself and the standard library and third parties.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "files": {"errors"},
    "migrations": set(),
    "db": {"errors", "files", "migrations"},
    "config": {"errors", "files"},
    **dict.fromkeys(CORE, FOUNDATIONS | CORE),
    "transports": FOUNDATIONS | CORE,
    "service": FOUNDATIONS | CORE | {"transports"},
    "ops": FOUNDATIONS | CORE | {"transports"},
    "run": FOUNDATIONS | CORE | {"transports", "service", "ops"},
    "cli": FOUNDATIONS | CORE | EDGES,
    "__main__": {"cli"},
}

#: The one arrow that points up, and why: a config file's topic prefix is checked by the
#: rule that builds the topics, so the two cannot disagree.
EXCEPTIONS = {("config", "gateway.auth.broker")}


def part_of(module: str) -> str:
    """``gateway.run.runner`` → ``run``; ``gateway.config`` → ``config``."""
    return module.split(".")[1]


def imports() -> Iterator[tuple[str, str, str]]:
    """(importing module's part, imported module, where) for every gateway import."""
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        relative = path.relative_to(ROOT)
        module = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        if module == "gateway":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
                if node.module == "gateway":
                    names = [f"gateway.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("gateway.") and name != "gateway.__version__":
                    yield part_of(module), name, f"{relative}:{node.lineno}"


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {p.stem if p.is_file() else p.name for p in (ROOT / "gateway").iterdir()}
    parts -= {"__init__", "__pycache__"}
    assert parts <= set(ALLOWED), f"no layer for {sorted(parts - set(ALLOWED))}"


def test_imports_point_down_only() -> None:
    wrong = [
        f"{where}: {part} imports {name}"
        for part, name, where in imports()
        if part_of(name) != part
        and part_of(name) not in ALLOWED[part]
        and (part, name) not in EXCEPTIONS
    ]
    assert not wrong, "imports pointing up:\n" + "\n".join(wrong)


def test_the_exceptions_are_still_needed() -> None:
    found = {(part, name) for part, name, _ in imports()}
    assert found >= EXCEPTIONS, f"no longer imported: {sorted(EXCEPTIONS - found)}"


@pytest.mark.parametrize("part", sorted(CORE | EDGES - {"service"}))
def test_each_package_says_what_it_holds_and_may_import(part: str) -> None:
    init = ROOT / "gateway" / part / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert "import" in doc, f"gateway/{part}/__init__.py does not say what it may import"


def test_no_test_module_imports_another() -> None:
    """Shared fixtures live in a conftest.py, shared helpers in a plain module (support.py,
    integration/gateway_process.py …): a test module imported by another is not free to
    change, and a fixture imported from one hides where it comes from."""
    wrong = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = (node.module or "").split(".") + [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [part for alias in node.names for part in alias.name.split(".")]
            else:
                continue
            if any(name.startswith("test_") for name in names):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not wrong, "test modules importing test modules:\n" + "\n".join(wrong)

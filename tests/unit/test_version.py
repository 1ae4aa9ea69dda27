"""The version is written once, in pyproject.toml: the package reads it from its installed
metadata, or from the checkout's pyproject.toml when it is not installed."""

from __future__ import annotations

import tomllib
from importlib import metadata

import pytest
from support import ROOT

import gateway


def _pyproject_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


def test_the_installed_version_is_pyprojects() -> None:
    assert gateway.__version__ == gateway.version() == _pyproject_version()


def test_a_checkout_that_is_not_installed_reads_pyproject(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert gateway.version() == _pyproject_version()
    monkeypatch.setattr(gateway, "_PYPROJECT", ROOT / "no-such-pyproject.toml")
    with pytest.raises(FileNotFoundError):
        gateway.version()  # it really read the file

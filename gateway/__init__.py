"""didgw: a DID authentication gateway for the IoT edge.

One folder per layer, imports pointing down only:

* foundations, at the root: ``errors``, ``config``, ``db``, ``migrations`` and ``files``
  (files holding secrets or personal data);
* the sans-IO core: ``identity``, ``credentials``, ``registry``, ``auth``, ``chain``,
  ``anchor``, ``energy``, ``market`` (time, randomness and the network come in as arguments);
* the edges: ``transports`` (one outside protocol each), ``service`` (the composition root),
  ``run`` (the running parts of ``didgw run``), ``ops`` (health, metrics, status, systemd,
  logs, the private broker, TLS files) and ``cli`` (the ``didgw`` command, which nothing imports).

``tests/unit/test_layers.py`` holds the rules.

Importing this package must stay cheap: ``didgw --help`` imports it.
"""

from __future__ import annotations

from pathlib import Path

#: The one place the version is written: ``[project] version`` in pyproject.toml.
_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def version() -> str:
    """didgw's version: the installed distribution's (pyproject's ``[project] version``, as
    built), or, when the package runs from a checkout that is not installed, the checkout's
    pyproject.toml. Read when asked, so that ``import gateway`` stays cheap."""
    from importlib import metadata

    try:
        return metadata.version("didgw")
    except metadata.PackageNotFoundError:
        import tomllib

        with _PYPROJECT.open("rb") as file:
            return str(tomllib.load(file)["project"]["version"])


def __getattr__(name: str) -> str:
    if name == "__version__":
        return version()
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")


__all__ = ["__version__", "version"]

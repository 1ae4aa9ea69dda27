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

__version__ = "0.1.0"

__all__ = ["__version__"]

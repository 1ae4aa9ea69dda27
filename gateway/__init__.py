"""didgw: a DID authentication gateway for the IoT edge.

The package is split into a sans-IO core (``identity``, ``registry`` and, as the
product grows, ``creds``, ``auth``, ``chain``, ``energy``, ``anchor``) and thin
edges (``transports``, ``service``, ``cli``). Core modules never import the
edges; they take time and randomness as arguments.

Importing this package must stay cheap: ``didgw --help`` imports it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

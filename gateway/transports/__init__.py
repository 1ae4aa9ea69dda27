"""Thin edges between the sans-IO core and the world: sockets, serial ports, HTTP.

Each module adapts one outside protocol and imports its library lazily, so an
optional part that is not configured costs nothing at start-up. They may import the
foundations and the core (for its types and seams), never ``service``, ``run``, ``ops`` or
``cli``.
"""

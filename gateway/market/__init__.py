"""The local solar-surplus market: orders, clearing, settlement, and its service.

Sans-IO: the market's clock and its MQTT messages are driven by ``run/energy.py``. May
import the foundations and the core (``identity``, ``chain``, ``registry``, ``auth``);
never an edge.
"""

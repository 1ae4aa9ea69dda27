"""The local solar-surplus market: orders, clearing, settlement, and its service."""

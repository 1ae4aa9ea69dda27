"""How the gateway's processes log: one line per event, journald-friendly.

Shared by ``didgw run`` and its reading workers (spawned processes do not
inherit the parent's logging set-up).
"""

from __future__ import annotations

import logging
import os


def configure() -> None:
    """INFO and above to stderr; no timestamps of our own under journald (it adds them)."""
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(level=logging.INFO, format=stamp + "%(levelname)s %(name)s: %(message)s")

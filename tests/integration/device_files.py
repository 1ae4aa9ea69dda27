"""Device files for the tests of bulk registration: new DIDs, a CSV of them (CRLF, a BOM,
quoted commas; optionally a bad row), and what the registry holds."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.identity.did_key import did_from_public_key
from gateway.identity.keystore import generate_key, public_bytes


def new_did() -> str:
    return did_from_public_key(public_bytes(generate_key()))


def csv_file(dids: list[str], *, bad_line: int | None = None) -> str:
    """A CSV of ``dids`` (CRLF, a BOM, quoted commas); the row on ``bad_line`` has an
    unknown kind."""
    rows = ["\ufeffdid,name,kind,metadata"]
    for i, did in enumerate(dids):
        kind = "toaster" if i + 2 == bad_line else "sensor"
        rows.append(f'{did},"sensor {i}, hall",{kind},floor={i % 3}')
    return "\r\n".join(rows) + "\r\n"


def registered(state: Path) -> set[str]:
    conn = sqlite3.connect(state / "didgw.db")
    try:
        return {r[0] for r in conn.execute("SELECT did FROM devices")}
    finally:
        conn.close()

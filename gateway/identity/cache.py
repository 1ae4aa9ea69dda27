"""The resolution cache kept in the gateway database (table ``did_cache``)."""

from __future__ import annotations

import json
from typing import Any

from sqlite_utils import Database


class SqliteResolutionCache:
    """:class:`~gateway.identity.resolver.ResolutionCache` over the gateway's SQLite file.

    Kept on disk so that a gateway restarted during a network outage still knows
    the documents it had (within the staleness limit).
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, did: str) -> tuple[dict[str, Any], str, float] | None:
        row = self._db.execute(
            "SELECT document, source, retrieved_at FROM did_cache WHERE did = ?", [did]
        ).fetchone()
        if row is None:
            return None
        return json.loads(row[0]), row[1], float(row[2])

    def put(self, did: str, document: dict[str, Any], source: str, retrieved_at: float) -> None:
        with self._db.atomic():
            self._db.execute(
                "INSERT INTO did_cache (did, document, source, retrieved_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(did) DO UPDATE SET document = excluded.document, "
                "source = excluded.source, retrieved_at = excluded.retrieved_at",
                [did, json.dumps(document, sort_keys=True), source, retrieved_at],
            )

    def drop(self, did: str) -> None:
        with self._db.atomic():
            self._db.execute("DELETE FROM did_cache WHERE did = ?", [did])

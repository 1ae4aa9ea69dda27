"""The facility manager's table of devices: search, filter, sort and page through thousands.

A page is one query whatever the number of devices: sorted by registration or by name it is
an index range (``devices_order``, ``devices_status_order``, ``devices_name_order``); sorted
by last seen, each device's newest reading is one lookup in the record's keyed index
(``chain_keys``: a reading's key is the device's sequence number), so nothing is added to the
path every reading takes. The position of a page is a :class:`Cursor` (the sort, the last
row's sort value and DID), not an offset, so pages stay right while devices are added.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

from gateway.errors import RegistryError
from gateway.registry.model import Device, Status
from gateway.registry.store import device_of_row

SORTS = ("registered", "name", "last_seen")
READING = "reading"  # the kind of a device's readings on the record
_META_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_QUERY = 128

_COLUMNS = (
    "did, name, kind, owner, topics, capabilities, metadata, status, "
    "created_at, updated_at, replaces, replaced_by"
)
# The chain seq of a device's newest reading (-1: none yet), from the keyed index only.
_SEEN = (
    "coalesce((SELECT k.seq FROM chain_keys k WHERE k.actor = "
    "(SELECT a.id FROM chain_actors a WHERE a.did = devices.did) "
    "AND k.kind = 'reading' ORDER BY k.key DESC LIMIT 1), -1)"
)


@dataclass(frozen=True)
class DeviceFilter:
    """Which devices: name or DID containing ``query``, of a ``status``, a ``kind``, with a
    ``metadata`` member equal to a value."""

    query: str = ""
    status: Status | None = None
    kind: str | None = None
    metadata: tuple[str, str] | None = None


def metadata_filter(text: str) -> tuple[str, str]:
    """``key=value`` as a metadata filter; RegistryError saying why for anything else."""
    key, equals, value = text.partition("=")
    if not equals or not _META_KEY.fullmatch(key) or len(value) > 512:
        raise RegistryError(
            "a metadata filter is key=value: a key of letters, digits and _ . : - "
            "(at most 64) and a value of at most 512 characters"
        )
    return key, value


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: after the row whose sort value is ``value`` and DID ``did``."""

    sort: str
    value: float | int | str
    did: str

    def encode(self) -> str:
        raw = json.dumps([self.sort, self.value, self.did], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str, sort: str) -> Cursor:
        """A cursor of ``sort`` from :meth:`encode` (or the older ``[created_at, did]`` of the
        registration order); ValueError for anything else."""
        if len(text) > 1024:
            raise ValueError("too long")
        try:
            value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (RecursionError, UnicodeDecodeError, ValueError):
            raise ValueError("not a cursor") from None
        if isinstance(value, list) and len(value) == 2:
            value = ["registered", *value]
        if not isinstance(value, list) or len(value) != 3 or value[0] != sort:
            raise ValueError(f"not a cursor of the {sort} order")
        _, position, did = value
        expected: Any = str if sort == "name" else (int | float)
        if (
            not isinstance(position, expected)
            or isinstance(position, bool)
            or not isinstance(did, str)
        ):
            raise ValueError("not a device cursor")
        return cls(sort, position, did)


def page(
    db: Any,
    *,
    limit: int,
    sort: str = "registered",
    after: Cursor | None = None,
    where: DeviceFilter = DeviceFilter(),
) -> tuple[list[Device], Cursor | None]:
    """Up to ``limit`` devices in ``sort`` order (registration and name ascending, last
    seen newest first) after ``after``, and the cursor of the next page (None on the last)."""
    if sort not in SORTS:
        raise RegistryError(f"sort by one of {', '.join(SORTS)}, not {sort!r}")
    conditions, args = _conditions(where)
    if after is not None and after.sort != sort:
        raise RegistryError("the cursor belongs to another order")
    if sort == "last_seen":
        inner = f"SELECT {_COLUMNS}, {_SEEN} AS seen FROM devices"  # noqa: S608 - constants
        if conditions:
            inner += " WHERE " + " AND ".join(conditions)
        sql = f"SELECT * FROM ({inner})"  # noqa: S608 - constants only
        if after is not None:
            sql += " WHERE (seen < ? OR (seen = ? AND did > ?))"
            args += [after.value, after.value, after.did]
        sql += " ORDER BY seen DESC, did LIMIT ?"
    else:  # one flat query, so that the order's index gives the range
        key = "created_at" if sort == "registered" else "name"
        if after is not None:
            conditions.append(f"({key}, did) > (?, ?)")
            args += [after.value, after.did]
        sql = f"SELECT {_COLUMNS} FROM devices"  # noqa: S608 - constants only
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        sql += f" ORDER BY {key}, did LIMIT ?"
    rows = db.execute(sql, [*args, limit + 1]).fetchall()
    devices = [device_of_row(row) for row in rows[:limit]]
    if len(rows) <= limit or not devices:
        return devices, None
    last = rows[limit - 1]
    value = last[12] if sort == "last_seen" else {"registered": last[8], "name": last[1]}[sort]
    return devices, Cursor(sort, value, last[0])


def _conditions(where: DeviceFilter) -> tuple[list[str], list[Any]]:
    conditions: list[str] = []
    args: list[Any] = []
    if where.status is not None:
        conditions.append("status = ?")
        args.append(where.status.value)
    if where.kind is not None:
        conditions.append("kind = ?")
        args.append(where.kind)
    if where.metadata is not None:
        key, value = where.metadata
        if not _META_KEY.fullmatch(key):
            raise RegistryError(f"bad metadata key {key[:64]!r}")
        conditions.append("json_extract(metadata, ?) = ?")
        args += [f'$."{key}"', value]
    if where.query:
        if len(where.query) > MAX_QUERY:
            raise RegistryError(f"search for at most {MAX_QUERY} characters")
        escaped = where.query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = "%" + escaped + "%"
        conditions.append("(name LIKE ? ESCAPE '\\' OR did LIKE ? ESCAPE '\\')")
        args += [pattern, pattern]
    return conditions, args

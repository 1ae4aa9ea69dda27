"""Bulk registration: a CSV or JSON file of devices, checked whole, registered all or none.

Sans-IO: bytes in, rows and problems out. Tolerant of what editors and spreadsheets add
(a UTF-8 byte-order mark, CRLF line ends, blank lines, quoted commas), strict about
everything else: each row's problems are reported with the line they are on, so a
facility manager can fix a 10,000-row file in one pass instead of one error at a time.

CSV: a header row naming the columns ``did``, ``name``, ``kind`` and optionally
``owner`` and ``metadata`` (any order, any case); ``metadata`` is ``key=value`` pairs
separated by ``;`` or a JSON object of strings. JSON: an array of objects with the same
members (``metadata`` an object of strings).

Line numbers are the file's own (1 is the CSV header); a JSON row's is the line its
object starts on; line 0 means the file as a whole. What the database decides (already
registered, a DID that does not resolve) is checked by :func:`check_registered`, and
:func:`register_file` does both and registers.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.errors import DidgwError, RegistryError
from gateway.identity.document import check_did_syntax
from gateway.registry.model import KINDS, check_name

if TYPE_CHECKING:
    from gateway.chain.store import NewEntry
    from gateway.registry.model import Device
    from gateway.registry.store import Registry

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_ROWS = 20_000
MAX_PROBLEMS = 500  # shown; more are counted
MAX_DID = 512
MAX_META = 32
MAX_META_KEY = 64
MAX_META_VALUE = 512
#: DIDs whose document must be fetched (did:web …) per file: each is a request to
#: another site, made while the import waits; did:key needs none.
MAX_FETCHED = 100
MAX_DEPTH = 8  # the array, a device, its metadata: anything deeper is not a device file
_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # strings are skipped whole
COLUMNS = ("did", "name", "kind", "owner", "metadata")
REQUIRED = ("did", "name", "kind")


@dataclass(frozen=True)
class Problem:
    """Why one row (``line``; 0 for the whole file) cannot be registered.

    ``text`` is a fixed English sentence with ``{name}`` places and ``values`` what goes
    in them, so the pages can show the sentence in the reader's language (the catalogue
    is looked up by ``text``; ``tests/unit/test_i18n.py`` collects every ``Problem(…)``
    text of this module and wants its Korean). ``message`` is the English, for the API
    and the command line."""

    line: int
    field: str  # the column or member, "" when it is the row or the file
    text: str
    values: Mapping[str, str | int] = dataclasses.field(default_factory=dict, hash=False)

    @property
    def message(self) -> str:
        return self.text.format(**self.values) if self.values else self.text

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "file"
        return f"{where}: {self.field + ': ' if self.field else ''}{self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message}


@dataclass(frozen=True)
class DeviceRow:
    """One device to register, as the file gave it (checked)."""

    line: int
    did: str
    name: str
    kind: str
    owner: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Parsed:
    """A checked file: its rows, its problems (at most :data:`MAX_PROBLEMS` kept,
    ``problem_count`` all of them), its format and SHA-256."""

    rows: list[DeviceRow]
    problems: list[Problem]
    problem_count: int
    format: str
    digest: str
    seen: int = 0  # rows read, good or bad

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, problems: Sequence[Problem]) -> None:
        self.problem_count += len(problems)
        room = MAX_PROBLEMS - len(self.problems)
        self.problems.extend(problems[: max(0, room)])
        self.problems.sort(key=lambda p: p.line)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "sha256": self.digest,
            "devices": len(self.rows),
            "problem_count": self.problem_count,
            "problems": [p.to_json() for p in self.problems],
        }


class ImportRefused(RegistryError):
    """The file has problems: nothing was registered."""

    code = "invalid_import"

    def __init__(self, parsed: Parsed) -> None:
        shown = "; ".join(str(p) for p in parsed.problems[:3])
        more = parsed.problem_count - min(3, len(parsed.problems))
        super().__init__(
            f"the file has {parsed.problem_count} problem(s), nothing was registered: {shown}"
            + (f" (and {more} more)" if more > 0 else "")
        )
        self.parsed = parsed


def parse(data: bytes) -> Parsed:
    """Read and check a device file (no database): its rows and every problem found."""
    digest = hashlib.sha256(data).hexdigest()
    parsed = Parsed([], [], 0, "csv", digest)
    if len(data) > MAX_FILE_BYTES:
        too_big = {"size": len(data), "limit": MAX_FILE_BYTES}
        parsed.add(
            [
                Problem(
                    0,
                    "",
                    "the file is {size} bytes; at most {limit} (split it into smaller files)",
                    too_big,
                )
            ]
        )
        return parsed
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        parsed.add([Problem(line, "", "not UTF-8 text (save the file as UTF-8)")])
        return parsed
    if not text.strip():
        parsed.add([Problem(0, "", "the file is empty")])
        return parsed
    parsed.format = "json" if text.lstrip().startswith("[") else "csv"
    records = _json_records(text) if parsed.format == "json" else _csv_records(text)
    seen: dict[str, int] = {}
    for item in records:
        if isinstance(item, Problem):
            parsed.add([item])
            continue
        line, values = item
        parsed.seen += 1
        if parsed.seen > MAX_ROWS:
            parsed.add(
                [
                    Problem(
                        line,
                        "",
                        "more than {limit} devices in one file; split it",
                        {"limit": MAX_ROWS},
                    )
                ]
            )
            break
        row, problems = _check_row(line, values)
        if row is not None:
            earlier = seen.get(row.did)
            if earlier is not None:
                problems.append(
                    Problem(
                        line,
                        "did",
                        "{did} is also on line {earlier}",
                        {"did": row.did, "earlier": earlier},
                    )
                )
            else:
                seen[row.did] = line
        if problems:
            parsed.add(problems)
        if row is not None and not problems:
            parsed.rows.append(row)
    if parsed.seen == 0 and parsed.ok:
        parsed.add([Problem(0, "", "no devices in the file")])
    return parsed


Record = tuple[int, dict[str, Any]] | Problem


def _csv_records(text: str) -> Iterator[Record]:
    """(line, {column: cell}) per data row; a Problem where the file cannot be read on."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except csv.Error as exc:
        yield Problem(1, "", "cannot read the header row: {detail}", {"detail": str(exc)})
        return
    names = [h.strip().lower() for h in header]
    unknown = [n for n in names if n not in COLUMNS]
    missing = [c for c in REQUIRED if c not in names]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if unknown or missing or doubled:
        known = {"columns": ", ".join(COLUMNS), "required": ", ".join(REQUIRED)}
        if unknown:
            named = ", ".join(repr(n) for n in unknown)
            yield Problem(1, "", "unknown column(s) {names} (columns: {columns}; {required} "
                                 "required)", {"names": named, **known})  # fmt: skip
        if missing:
            yield Problem(1, "", "missing column(s) {names} (columns: {columns}; {required} "
                                 "required)", {"names": ", ".join(missing), **known})  # fmt: skip
        if doubled:
            yield Problem(1, "", "column(s) named twice: {names}",
                          {"names": ", ".join(doubled)})  # fmt: skip
        return
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Problem(start, "", "cannot read this row: {detail}", {"detail": str(exc)})
            return
        line, start = start, reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue  # a blank line
        if len(cells) != len(names):
            yield Problem(line, "", "{cells} cells, the header has {columns} (a comma inside a "
                                    "value needs quotes)",
                          {"cells": len(cells), "columns": len(names)})  # fmt: skip
            continue
        yield line, dict(zip(names, cells, strict=True))


def _json_records(text: str) -> Iterator[Record]:
    """(line, object) per array element, each with the line it starts on."""
    deep = _too_deep(text)
    if deep:
        yield Problem(
            deep,
            "",
            "not JSON this importer reads: nested more than {limit} deep",
            {"limit": MAX_DEPTH},
        )
        return
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted = 1, 0

    def line_at(p: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, p)
        counted = p
        return line

    while True:
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == "]":
            if text[pos + 1 :].strip():
                yield Problem(line_at(pos), "", "text after the end of the array")
            return
        at = line_at(pos)
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield Problem(
                exc.lineno,
                "",
                "not JSON: {detail} (column {column})",
                {"detail": exc.msg, "column": exc.colno},
            )
            return
        except RecursionError:
            yield Problem(at, "", "not JSON: nested too deeply")
            return
        if not isinstance(value, dict):
            yield Problem(at, "", "each device must be a JSON object")
        else:
            yield at, value
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "]":
            yield Problem(line_at(min(pos, len(text))), "", "not JSON: expected ',' or ']'")
            return


def _too_deep(text: str) -> int:
    """The line where ``text`` nests arrays or objects deeper than :data:`MAX_DEPTH`, or 0.

    Checked before decoding: CPython's JSON decoder recurses in C, and a few hundred
    thousand ``[`` overflow its stack (a crash, not a RecursionError)."""
    depth = 0
    for match in _BRACKETS.finditer(text):
        found = match.group()
        if found in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                return text.count("\n", 0, match.start()) + 1
        elif found in ("]", "}"):
            depth -= 1
    return 0


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _check_row(line: int, values: dict[str, Any]) -> tuple[DeviceRow | None, list[Problem]]:
    problems: list[Problem] = []
    unknown = sorted(set(values) - set(COLUMNS))
    if unknown:
        problems.append(
            Problem(line, "", "unknown member(s) {names}", {"names": ", ".join(unknown)})
        )

    def text(name: str, *, required: bool) -> str | None:
        value = values.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                problems.append(Problem(line, name, "missing"))
            return None
        if not isinstance(value, str):
            problems.append(Problem(line, name, "must be text"))
            return None
        return value.strip()

    did, name, kind = (text(n, required=True) for n in REQUIRED)
    owner = text("owner", required=False)
    for label, value in (("did", did), ("owner", owner)):
        if value is not None:
            if len(value) > MAX_DID:
                problems.append(Problem(line, label, "too long ({length} characters; at most "
                                                     "{limit})", {"length": len(value),
                                                                  "limit": MAX_DID}))  # fmt: skip
            else:
                try:
                    check_did_syntax(value)
                except DidgwError as exc:
                    problems.append(
                        Problem(line, label, "not a DID: {detail}", {"detail": str(exc)})
                    )
    if kind is not None and kind not in KINDS:  # the usual slip: said here in full
        kinds = {"kind": repr(kind), "kinds": ", ".join(KINDS)}
        problems.append(Problem(line, "kind", "unknown device kind {kind}; use one of: {kinds}",
                                kinds))  # fmt: skip
    if name is not None:
        try:
            check_name(name)
        except DidgwError as exc:
            problems.append(Problem(line, "name", "not accepted: {detail}", {"detail": str(exc)}))
    metadata = _metadata(line, values.get("metadata"), problems)
    if problems or did is None or name is None or kind is None:
        return None, problems
    return DeviceRow(line, did, name, kind, owner, metadata), problems


def _metadata(line: int, value: Any, problems: list[Problem]) -> dict[str, str]:
    try:
        found = _metadata_object(value)
        _check_metadata(found)
    except ValueError as exc:
        problems.append(Problem(line, "metadata", "not accepted: {detail}", {"detail": str(exc)}))
        return {}
    return found


def _metadata_object(value: Any) -> dict[str, str]:
    """A JSON object (in JSON, or as text in a CSV cell) or ``k=v; k=v`` text."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    found: Any = value
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            found = json.loads(value)
        except (ValueError, RecursionError):
            raise ValueError("not a JSON object") from None
    elif isinstance(value, str):
        found = {}
        for pair in filter(str.strip, value.split(";")):
            key, sep, item = pair.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"{pair.strip()!r} is not key=value (pairs separated by ';')")
            found[key.strip()] = item.strip()
    if not isinstance(found, dict) or not all(isinstance(v, str) for v in found.values()):
        raise ValueError("must be an object of text values")
    return found


def _check_metadata(found: dict[str, str]) -> None:
    if len(found) > MAX_META:
        raise ValueError(f"{len(found)} keys; at most {MAX_META}")
    for key, item in found.items():
        if not key or len(key) > MAX_META_KEY or len(item) > MAX_META_VALUE:
            raise ValueError(
                f"key {key[:40]!r}: keys are 1-{MAX_META_KEY} characters, "
                f"values at most {MAX_META_VALUE}"
            )
        if not (key.isprintable() and item.isprintable()):
            raise ValueError(f"key {key[:40]!r}: not printable")


# -- with the database ---------------------------------------------------------------


def check_registered(registry: Registry, parsed: Parsed, *, now: float) -> None:
    """Add the problems only the registry can see: DIDs already registered (or revoked,
    which never come back) and DIDs whose document has no usable key."""
    problems: list[Problem] = []
    known = registry.known([r.did for r in parsed.rows])
    fetched = 0
    for row in parsed.rows:
        existing = known.get(row.did)
        if existing is not None:
            name, status = existing
            values = {"name": repr(name), "status": status}
            if status == "revoked":
                problems.append(
                    Problem(
                        row.line,
                        "did",
                        "already registered as {name}, revoked "
                        "(revoked DIDs cannot be registered again)",
                        values,
                    )
                )
            else:
                problems.append(
                    Problem(row.line, "did", "already registered as {name}, {status}", values)
                )
            continue
        if not row.did.startswith("did:key:"):
            fetched += 1
            if fetched > MAX_FETCHED:
                problems.append(
                    Problem(
                        row.line,
                        "did",
                        "more than {limit} DIDs in one file need their "
                        "document fetched; import the rest in another file",
                        {"limit": MAX_FETCHED},
                    )
                )
                continue
        try:
            registry.check_resolvable(row.did, now)
        except DidgwError as exc:
            problems.append(
                Problem(row.line, "did", "cannot be used: {detail}", {"detail": str(exc)})
            )
    if problems:
        parsed.add(problems)
        bad = {p.line for p in problems}
        parsed.rows = [r for r in parsed.rows if r.line not in bad]


def register_file(
    registry: Registry,
    data: bytes,
    *,
    actor: str,
    now: float,
    reason: str = "imported",
    dry_run: bool = False,
    also: Callable[[Device], Sequence[NewEntry]] | None = None,
) -> tuple[Parsed, list[Device]]:
    """Check ``data`` whole, then register every device in it in one transaction, or none:
    :class:`ImportRefused` (with every problem) when there is one. ``dry_run`` only checks
    (and returns no devices). ``also(device)``: entries to append to the record with each
    device (a person's action)."""
    parsed = parse(data)
    if parsed.ok:
        check_registered(registry, parsed, now=now)
    if not parsed.ok:
        raise ImportRefused(parsed)
    if dry_run or not parsed.rows:
        return parsed, []
    devices = registry.register_many(parsed.rows, actor=actor, reason=reason, now=now, also=also)
    return parsed, devices

"""DSMR 5.0 P1 telegrams, sans-IO: find them in a byte stream, check them, parse them.

A P1 port (115200 8N1) sends one telegram a second::

    /ISk5\\2MT382-1000            identification: '/', 3 letters of maker, baud digit, model
                                  (blank line)
    1-3:0.2.8(50)                 one COSEM object per line: OBIS code, then (value)(value)…
    0-0:1.0.0(101209113020W)
    1-0:1.8.1(123456.789*kWh)
    …
    !EF2F                         '!', then CRC16 of everything from '/' to '!' inclusive,
                                  4 upper-case hex digits, CRLF

The CRC is CRC-16/ARC (polynomial 0x8005 reflected = 0xA001, initial value 0, no final
XOR). :class:`P1Splitter` takes bytes as they come off the wire (any chunking) and returns
each complete telegram, parsed, or the reason it was rejected: ``crc`` (checksum wrong),
``truncated`` (a new telegram started, or the size limit was reached, before the end of
this one), ``garbled`` (checksum right but a line or value is not what DSMR 5.0 says).
Bytes outside any telegram are line noise: counted and dropped. Lines with an OBIS code
the parser does not use (gas meters, event logs, text messages …) are skipped; the ones
it does not know at all are counted in ``unknown``. Nothing here raises on bad input and
nothing bad becomes a reading.

Energy is kept exactly as integers: Wh (the registers have 3 decimals of kWh) and W (the
power values have 3 decimals of kW).
"""

from __future__ import annotations

import re
import sys
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

#: A telegram longer than this without its end is given up as truncated.
MAX_TELEGRAM = 8192

REJECT_REASONS = ("crc", "truncated", "garbled")


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_T8 = _crc_table()
# Two bytes at a time: after two steps the CRC depends only on (crc ^ 16-bit word), so a
# table of 65,536 entries halves the Python loop (P1 parsing is bounded by the CRC).
_T16: list[int] | None = None


def _table16() -> list[int]:
    global _T16  # noqa: PLW0603 - built once, on first use (256 KiB)
    if _T16 is None:
        t8 = _T8
        table = []
        for word in range(65536):
            crc = (word >> 8) ^ t8[word & 0xFF]
            crc = (crc >> 8) ^ t8[crc & 0xFF]
            table.append(crc)
        _T16 = table
    return _T16


def crc16(data: bytes) -> int:
    """CRC-16/ARC of ``data`` (check value: ``crc16(b"123456789") == 0xBB3D``)."""
    t16 = _table16()
    crc = 0
    even = len(data) & ~1
    words = array("H", data[:even])
    if sys.byteorder == "big":
        words.byteswap()
    for word in words:
        crc = t16[crc ^ word]
    if even != len(data):
        crc = (crc >> 8) ^ _T8[(crc ^ data[-1]) & 0xFF]
    return crc


@dataclass(frozen=True)
class Telegram:
    """One checked DSMR 5.0 telegram. Energy in Wh, power in W (integers, exact)."""

    ident: str
    version: str
    meter_time_ms: int  # the meter's clock (0-0:1.0.0), as Unix milliseconds
    equipment_id: str
    import_wh: tuple[int, int]  # 1-0:1.8.1, 1-0:1.8.2: delivered to the household
    export_wh: tuple[int, int]  # 1-0:2.8.1, 1-0:2.8.2: delivered by the household
    tariff: int
    power_import_w: int  # 1-0:1.7.0
    power_export_w: int  # 1-0:2.7.0
    voltage_v: dict[str, float] = field(default_factory=dict)  # L1, L2, L3
    current_a: dict[str, float] = field(default_factory=dict)
    phase_import_w: dict[str, int] = field(default_factory=dict)
    phase_export_w: dict[str, int] = field(default_factory=dict)
    unknown: int = 0  # lines with an OBIS code this parser does not know (skipped)
    raw: bytes = field(default=b"", repr=False)

    @property
    def total_import_wh(self) -> int:
        return self.import_wh[0] + self.import_wh[1]

    @property
    def total_export_wh(self) -> int:
        return self.export_wh[0] + self.export_wh[1]

    def values(self) -> dict[str, dict[str, float | int | str]]:
        """As the ``values`` of a reading (docs/protocol/mqtt.md, "Readings")."""
        out: dict[str, dict[str, float | int | str]] = {
            "import_t1_wh": {"value": self.import_wh[0], "unit": "Wh"},
            "import_t2_wh": {"value": self.import_wh[1], "unit": "Wh"},
            "export_t1_wh": {"value": self.export_wh[0], "unit": "Wh"},
            "export_t2_wh": {"value": self.export_wh[1], "unit": "Wh"},
            "power_import_w": {"value": self.power_import_w, "unit": "W"},
            "power_export_w": {"value": self.power_export_w, "unit": "W"},
            "tariff": {"value": self.tariff, "unit": "1"},
            "meter_time_ms": {"value": self.meter_time_ms, "unit": "ms"},
        }
        for phase, v in self.voltage_v.items():
            out[f"voltage_{phase.lower()}_v"] = {"value": v, "unit": "V"}
        for phase, a in self.current_a.items():
            out[f"current_{phase.lower()}_a"] = {"value": a, "unit": "A"}
        return out

    def as_json(self) -> dict[str, object]:
        return {
            "ident": self.ident,
            "version": self.version,
            "meter_time_ms": self.meter_time_ms,
            "equipment_id": self.equipment_id,
            "import_wh": list(self.import_wh),
            "export_wh": list(self.export_wh),
            "tariff": self.tariff,
            "power_import_w": self.power_import_w,
            "power_export_w": self.power_export_w,
            "voltage_v": self.voltage_v,
            "current_a": self.current_a,
            "phase_import_w": self.phase_import_w,
            "phase_export_w": self.phase_export_w,
            "unknown_lines": self.unknown,
        }


@dataclass(frozen=True)
class Rejected:
    """A telegram-shaped run of bytes that is not a telegram, and why."""

    reason: str  # one of REJECT_REASONS
    detail: str
    raw: bytes = field(default=b"", repr=False)


class P1Error(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


_IDENT = re.compile(rb"/[A-Za-z]{3}\d[\x21-\x7e]{1,96}\r\n\r\n")
# Every line of the body: an OBIS code, one or more (values), CRLF. One C-level match
# checks the shape of the whole body; the lines are then split without regular expressions.
_LINES = re.compile(r"(?:\d{1,3}-\d{1,3}:\d{1,3}\.\d{1,3}\.\d{1,3}(?:\([^()\r\n]*\))+\r\n)*")
_ENERGY = re.compile(r"(\d{1,9})\.(\d{3})\*kWh")
_POWER = re.compile(r"(\d{1,6})\.(\d{3})\*kW")
_VOLT = re.compile(r"(\d{1,4}(?:\.\d{1,2})?)\*V")
_AMP = re.compile(r"(\d{1,4}(?:\.\d{1,2})?)\*A")
_TST = re.compile(r"(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})([SW])")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2}){0,96}")

# OBIS codes a DSMR 5.0 meter sends that this parser knows and does not use.
_IGNORED = frozenset(
    {
        "0-0:96.7.21",  # power failures
        "0-0:96.7.9",  # long power failures
        "1-0:99.97.0",  # power failure event log
        "1-0:32.32.0",
        "1-0:52.32.0",
        "1-0:72.32.0",  # voltage sags
        "1-0:32.36.0",
        "1-0:52.36.0",
        "1-0:72.36.0",  # voltage swells
        "0-0:96.13.0",  # text message
        "0-0:96.13.1",
        "0-0:17.0.0",  # limiter threshold (DSMR 4)
        "0-0:96.3.10",  # breaker state (DSMR 4)
    }
    | {f"0-{n}:{code}" for n in range(1, 5) for code in ("24.1.0", "96.1.0", "24.2.1", "24.4.0")}
)
_PHASES = {"32": "L1", "52": "L2", "72": "L3"}
_CURRENTS = {"31": "L1", "51": "L2", "71": "L3"}
_PHASE_IMPORT = {"21": "L1", "41": "L2", "61": "L3"}
_PHASE_EXPORT = {"22": "L1", "42": "L2", "62": "L3"}


def _milli(match: re.Match[str] | None, what: str) -> int:
    if match is None:
        raise P1Error("garbled", f"{what} is not a DSMR value with its unit")
    return int(match[1]) * 1000 + int(match[2])


def _meter_time(value: str) -> int:
    """YYMMDDhhmmssX (X: S summer time, CEST = UTC+2; W winter time, CET = UTC+1)."""
    m = _TST.fullmatch(value)
    if m is None:
        raise P1Error("garbled", f"timestamp {value!r} is not YYMMDDhhmmss[SW]")
    try:
        local = datetime(
            2000 + int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6]), tzinfo=UTC
        )
    except ValueError:
        raise P1Error("garbled", f"timestamp {value!r} is not a date") from None
    offset = timedelta(hours=2 if m[7] == "S" else 1)
    return int((local - offset).timestamp() * 1000)


def parse_telegram(data: bytes) -> Telegram:  # noqa: PLR0912, PLR0915 - one pass, flat
    """Check and parse one whole telegram (from '/' to the CRLF after its CRC).

    Raises :class:`P1Error` with reason ``crc``, ``truncated`` or ``garbled``.
    """
    end = data.rfind(b"!")
    if not data.startswith(b"/") or end < 0 or len(data) < end + 5:
        raise P1Error("truncated", "no '!' and CRC at the end")
    crc_text = data[end + 1 : end + 5]
    tail = data[end + 5 :]
    if tail not in (b"\r\n", b""):
        raise P1Error("garbled", "bytes after the CRC")
    try:
        stated = int(crc_text, 16) if re.fullmatch(rb"[0-9A-F]{4}", crc_text) else -1
    except ValueError:
        stated = -1
    if stated < 0:
        raise P1Error("garbled", f"CRC {crc_text!r} is not 4 upper-case hex digits")
    body = data[: end + 1]
    actual = crc16(body)
    if actual != stated:
        raise P1Error("crc", f"CRC says {stated:04X}, telegram has {actual:04X}")
    ident = _IDENT.match(body)
    if ident is None:
        raise P1Error("garbled", "identification line is not '/XXXn…' and a blank line")
    try:
        text = body[ident.end() : end].decode("ascii")
    except UnicodeDecodeError:
        raise P1Error("garbled", "non-ASCII bytes in the telegram") from None
    shape = _LINES.match(text)
    if shape is None or shape.end() != len(text):
        bad = 0 if shape is None else shape.end()
        raise P1Error("garbled", f"not a COSEM line at byte {ident.end() + bad}")
    unknown = 0
    tel: dict[str, str] = {}
    voltage: dict[str, float] = {}
    current: dict[str, float] = {}
    phase_imp: dict[str, int] = {}
    phase_exp: dict[str, int] = {}
    seen: set[str] = set()
    for line in text.split("\r\n")[:-1]:
        obis, _, value = line.partition("(")
        if obis in seen:
            raise P1Error("garbled", f"{obis} appears twice")
        seen.add(obis)
        handler = _HANDLERS.get(obis)
        if handler is None:
            if obis not in _IGNORED:
                unknown += 1
            continue
        kind, name = handler
        inner = value[:-1]
        if kind == "tel":
            tel[name] = inner
        elif kind == "V":
            v = _VOLT.fullmatch(inner)
            if v is None:
                raise P1Error("garbled", f"{obis}: {inner!r} is not a voltage")
            voltage[name] = float(v[1])
        elif kind == "A":
            amps = _AMP.fullmatch(inner)
            if amps is None:
                raise P1Error("garbled", f"{obis}: {inner!r} is not a current")
            current[name] = float(amps[1])
        elif kind == "+P":
            phase_imp[name] = _milli(_POWER.fullmatch(inner), obis)
        else:
            phase_exp[name] = _milli(_POWER.fullmatch(inner), obis)
    missing = [name for name in _REQUIRED if name not in tel]
    if missing:
        raise P1Error("garbled", f"missing {', '.join(missing)}")
    equipment = str(tel["equipment_id"])
    if not _HEX.fullmatch(equipment):
        raise P1Error("garbled", "equipment id is not hex-encoded")
    try:
        equipment_text = bytes.fromhex(equipment).decode("ascii")
    except UnicodeDecodeError:
        raise P1Error("garbled", "equipment id is not ASCII") from None
    tariff = str(tel["tariff"])
    if not re.fullmatch(r"\d{4}", tariff):
        raise P1Error("garbled", f"tariff indicator {tariff!r} is not 4 digits")
    return Telegram(
        ident=ident[0][1:-4].decode("ascii"),
        version=str(tel["version"]),
        meter_time_ms=_meter_time(str(tel["time"])),
        equipment_id=equipment_text,
        import_wh=(
            _milli(_ENERGY.fullmatch(str(tel["import1"])), "1-0:1.8.1"),
            _milli(_ENERGY.fullmatch(str(tel["import2"])), "1-0:1.8.2"),
        ),
        export_wh=(
            _milli(_ENERGY.fullmatch(str(tel["export1"])), "1-0:2.8.1"),
            _milli(_ENERGY.fullmatch(str(tel["export2"])), "1-0:2.8.2"),
        ),
        tariff=int(tariff),
        power_import_w=_milli(_POWER.fullmatch(str(tel["power_import"])), "1-0:1.7.0"),
        power_export_w=_milli(_POWER.fullmatch(str(tel["power_export"])), "1-0:2.7.0"),
        voltage_v=voltage,
        current_a=current,
        phase_import_w=phase_imp,
        phase_export_w=phase_exp,
        unknown=unknown,
        raw=bytes(data),
    )


_KNOWN = {
    "1-3:0.2.8": "version",
    "0-0:1.0.0": "time",
    "0-0:96.1.1": "equipment_id",
    "1-0:1.8.1": "import1",
    "1-0:1.8.2": "import2",
    "1-0:2.8.1": "export1",
    "1-0:2.8.2": "export2",
    "0-0:96.14.0": "tariff",
    "1-0:1.7.0": "power_import",
    "1-0:2.7.0": "power_export",
}
_REQUIRED = tuple(_KNOWN.values())
_HANDLERS: dict[str, tuple[str, str]] = {
    **{obis: ("tel", name) for obis, name in _KNOWN.items()},
    **{f"1-0:{g}.7.0": ("V", p) for g, p in _PHASES.items()},
    **{f"1-0:{g}.7.0": ("A", p) for g, p in _CURRENTS.items()},
    **{f"1-0:{g}.7.0": ("+P", p) for g, p in _PHASE_IMPORT.items()},
    **{f"1-0:{g}.7.0": ("-P", p) for g, p in _PHASE_EXPORT.items()},
}


class P1Splitter:
    """Telegrams out of a byte stream, whatever the chunking; see the module docstring.

    ``feed`` returns what the new bytes completed, in order: :class:`Telegram` or
    :class:`Rejected`. ``counts`` keeps ``telegrams``, each rejection reason,
    ``noise_bytes`` and ``unknown_lines``.
    """

    def __init__(self, max_telegram: int = MAX_TELEGRAM) -> None:
        self._buf = bytearray()
        self._max = max_telegram
        self.counts: dict[str, int] = dict.fromkeys(
            ("telegrams", *REJECT_REASONS, "noise_bytes", "unknown_lines"), 0
        )

    def feed(self, chunk: bytes) -> list[Telegram | Rejected]:
        buf = self._buf
        buf += chunk
        out: list[Telegram | Rejected] = []
        while True:
            start = buf.find(b"/")
            if start < 0:
                self.counts["noise_bytes"] += len(buf)
                buf.clear()
                return out
            if start:
                self.counts["noise_bytes"] += start
                del buf[:start]
            bang = buf.find(b"!", 1)
            again = buf.find(b"/", 1, bang if bang >= 0 else len(buf))
            if again > 0:  # a new telegram began before this one ended
                out.append(self._reject("truncated", "a new telegram began", bytes(buf[:again])))
                del buf[:again]
                continue
            if bang < 0:
                if len(buf) > self._max:
                    out.append(self._reject("truncated", "no end within the size limit", b""))
                    del buf[:1]
                    continue
                return out
            if len(buf) < bang + 7:  # '!' + 4 hex + CRLF
                return out
            raw = bytes(buf[: bang + 7])
            del buf[: bang + 7]
            try:
                telegram = parse_telegram(raw)
            except P1Error as exc:
                out.append(self._reject(exc.reason, exc.detail, raw))
                continue
            self.counts["telegrams"] += 1
            self.counts["unknown_lines"] += telegram.unknown
            out.append(telegram)

    def _reject(self, reason: str, detail: str, raw: bytes) -> Rejected:
        self.counts[reason] += 1
        return Rejected(reason, detail, raw)


def format_telegram(lines: list[str], ident: str = "XMX5LGF0010") -> bytes:
    """A telegram with its CRC, from its COSEM lines (for simulators and tests)."""
    body = ("/" + ident + "\r\n\r\n" + "".join(line + "\r\n" for line in lines) + "!").encode()
    return body + b"%04X\r\n" % crc16(body)

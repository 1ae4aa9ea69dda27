"""DSMR P1 telegrams, sans-IO: find them in a byte stream, check them, parse them.

A P1 port sends one telegram every second (DSMR 5.0: 115200 8N1) or ten (DSMR 2.2-4: 9600
7E1)::

    /ISk5\\2MT382-1000            identification: '/', 3 letters of maker, baud digit, model
                                  (blank line)
    1-3:0.2.8(50)                 one COSEM object per line: OBIS code, then (value)(value)…
    0-0:1.0.0(101209113020W)
    1-0:1.8.1(123456.789*kWh)
    …
    !EF2F                         '!', then CRC16 of everything from '/' to '!' inclusive,
                                  up to 4 hex digits, CRLF

The CRC is CRC-16/ARC (polynomial 0x8005 reflected = 0xA001, initial value 0, no final
XOR). Meters of DSMR 2.2 and 3 and EasyMeter's Q3D send no CRC ('!' and CRLF); some send
it with fewer than 4 digits. Which telegrams are accepted depends on the meter's variant
(:mod:`gateway.energy.variants`): the variant says which registers a telegram must carry
and whether it may come without a CRC. :class:`P1Splitter` takes bytes as they come off the
wire (any chunking) and returns each complete telegram, parsed, or the reason it was
rejected: ``crc`` (checksum wrong, or missing where the variant has one), ``truncated`` (a
new telegram started, or the size limit was reached, before the end of this one),
``garbled`` (a line or value is not what the variant says). Bytes outside any telegram
are line noise: counted and dropped. Lines with an OBIS code the parser does not use (gas
meters, event logs, text messages …) are skipped; the ones it does not know at all are
counted in ``unknown``. Nothing here raises on bad input and nothing bad becomes a reading.

Energy is kept exactly as integers: Wh and W, whatever unit the meter sends (kWh and kW
with 3 decimals in DSMR 4-5, 2 in DSMR 2.2-3; Wh and W in Sagemcom's T210-D-R). Digits
below 1 Wh or 1 W (EasyMeter's Q3D sends 7 decimals of kWh) are dropped (rounded down),
so a register never runs ahead of the meter.
"""

from __future__ import annotations

import re
import sys
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gateway.energy.variants import AUTO, VARIANTS, Variant, detect

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
    """One checked telegram. Energy in Wh, power in W (integers, exact).

    A register the meter does not send is empty (``import_wh == ()``: the meter sends only
    a total) or None (``meter_time_ms``, ``tariff``); ``variant`` names the meter's layout.
    """

    ident: str
    version: str  # "" when the meter sends none (DSMR 2.2, 3, Q3D, Iskra IE …)
    meter_time_ms: int | None  # the meter's clock (0-0:1.0.0), as Unix milliseconds
    equipment_id: str  # "" when the meter sends none
    import_wh: tuple[int, ...]  # 1-0:1.8.1, 1-0:1.8.2 (…1.8.4): delivered to the household
    export_wh: tuple[int, ...]  # 1-0:2.8.1, 1-0:2.8.2 (…2.8.4): delivered by the household
    tariff: int | None
    power_import_w: int  # 1-0:1.7.0
    power_export_w: int  # 1-0:2.7.0 (0 when the meter does not measure it)
    voltage_v: dict[str, float] = field(default_factory=dict)  # L1, L2, L3
    current_a: dict[str, float] = field(default_factory=dict)
    phase_import_w: dict[str, int] = field(default_factory=dict)
    phase_export_w: dict[str, int] = field(default_factory=dict)
    unknown: int = 0  # lines with an OBIS code this parser does not know (skipped)
    raw: bytes = field(default=b"", repr=False)
    import_total: int | None = None  # 1-0:1.8.0 when sent (else the tariffs' sum)
    export_total: int | None = None  # 1-0:2.8.0 when sent
    variant: str = "dsmr5"
    frame_counter: int | None = None  # an encrypted frame's invocation counter

    @property
    def total_import_wh(self) -> int:
        return self.import_total if self.import_total is not None else sum(self.import_wh)

    @property
    def total_export_wh(self) -> int:
        return self.export_total if self.export_total is not None else sum(self.export_wh)

    def values(self) -> dict[str, dict[str, float | int | str]]:
        """As the ``values`` of a reading (docs/protocol/mqtt.md, "Readings")."""
        out: dict[str, dict[str, float | int | str]] = {}
        for n, wh in enumerate(self.import_wh, 1):
            out[f"import_t{n}_wh"] = {"value": wh, "unit": "Wh"}
        for n, wh in enumerate(self.export_wh, 1):
            out[f"export_t{n}_wh"] = {"value": wh, "unit": "Wh"}
        if not self.import_wh:
            out["import_total_wh"] = {"value": self.total_import_wh, "unit": "Wh"}
        if not self.export_wh:
            out["export_total_wh"] = {"value": self.total_export_wh, "unit": "Wh"}
        out["power_import_w"] = {"value": self.power_import_w, "unit": "W"}
        out["power_export_w"] = {"value": self.power_export_w, "unit": "W"}
        if self.tariff is not None:
            out["tariff"] = {"value": self.tariff, "unit": "1"}
        if self.meter_time_ms is not None:
            out["meter_time_ms"] = {"value": self.meter_time_ms, "unit": "ms"}
        for phase, v in self.voltage_v.items():
            out[f"voltage_{phase.lower()}_v"] = {"value": v, "unit": "V"}
        for phase, a in self.current_a.items():
            out[f"current_{phase.lower()}_a"] = {"value": a, "unit": "A"}
        return out

    def as_json(self) -> dict[str, object]:
        return {
            "variant": self.variant,
            "ident": self.ident,
            "version": self.version,
            "meter_time_ms": self.meter_time_ms,
            "equipment_id": self.equipment_id,
            "import_wh": list(self.import_wh),
            "export_wh": list(self.export_wh),
            "import_total_wh": self.total_import_wh,
            "export_total_wh": self.total_export_wh,
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

    reason: str  # one of REJECT_REASONS (or, for encrypted meters, DECRYPT_REASONS)
    detail: str
    raw: bytes = field(default=b"", repr=False)


class P1Error(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


_IDENT = re.compile(rb"/[A-Za-z]{3}\d[\x20-\x7e]{1,96}\r\n\r\n")
# Every line of the body: an OBIS code (EasyMeter adds '*255'), one or more (values), CRLF;
# DSMR 2.2-3 put a gas reading's value on a line of its own. One C-level match checks the
# shape of the whole body; the lines are then split without regular expressions.
_OBIS = r"\d{1,3}-\d{1,3}:\d{1,3}\.\d{1,3}\.\d{1,3}(?:\*\d{1,3})?"
_LINES = re.compile(rf"(?:(?:{_OBIS})?(?:\([^()\r\n]*\))+\r\n)*")
_CRC = re.compile(rb"[0-9A-Fa-f]{1,4}")
_QUANTITY = re.compile(r"(\d{1,12})(?:\.(\d{1,9}))?\*(kWh|Wh|kW|W)")
_VOLT = re.compile(r"(\d{1,4}(?:\.\d{1,2})?)\*V")
_AMP = re.compile(r"(\d{1,4}(?:\.\d{1,3})?)\*A")
_TST = re.compile(r"(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})([SW])")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2}){0,96}")
_PLAIN_ID = re.compile(r"[\x21-\x7e]{0,96}")
_PRINTABLE = re.compile(rb"[\x21-\x7e]*")
_TARIFF_CODES = {kind: tuple(f"1-0:{kind}.8.{n}" for n in range(1, 5)) for kind in "12"}
_TOTAL_CODES = {kind: f"1-0:{kind}.8.0" for kind in "12"}
_SCALE = {"kWh": 1000, "Wh": 1, "kW": 1000, "W": 1}

# OBIS codes meters send that this parser knows and does not use.
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
        "1-0:1.4.0",  # Fluvius: average demand this quarter hour
        "1-0:1.6.0",  # Fluvius: peak demand this month
        "0-0:98.1.0",  # Fluvius: peak demand of the last 13 months
        "1-0:31.4.0",  # fuse threshold
        "1-0:96.5.5",  # Q3D: status
        "1-0:0.0.0",  # Q3D: ownership number
    }
    | {f"0-{n}:{code}" for n in range(1, 5) for code in ("24.1.0", "96.1.0", "24.2.1", "24.4.0")}
    | {f"0-{n}:{code}" for n in range(1, 5) for code in ("24.3.0", "24.2.3", "96.1.1", "96.3.10")}
    | {f"1-0:{q}.{k}.{t}" for q in range(3, 9) for k in (7, 8) for t in range(5)}  # reactive
    | {f"1-0:{q}.7.0" for q in (23, 24, 43, 44, 63, 64)}  # reactive power per phase
    | {f"1-0:{q}.7.0" for q in (9, 10, 13, 14, 33, 53, 73)}  # apparent power, factor, Hz
    | {"1-0:15.8.0", "1-0:51.4.0", "1-0:71.4.0", "1-1:31.4.0"}  # combined energy, fuses
    | {f"0-0:96.13.{n}" for n in range(2, 6)}  # Smarty: more text messages
)
_PHASES = {"32": "L1", "52": "L2", "72": "L3"}
_CURRENTS = {"31": "L1", "51": "L2", "71": "L3"}
_PHASE_IMPORT = {"21": "L1", "41": "L2", "61": "L3"}
_PHASE_EXPORT = {"22": "L1", "42": "L2", "62": "L3"}
# Where meters put their equipment id, the first found wins: hex-encoded text (DSMR,
# Fluvius; Smarty and E.ON Hungary on 0-0:42.0.0) or plain (Q3D, Iskra's serial number).
_IDS = (("0-0:96.1.1", True), ("0-0:42.0.0", True), ("0-0:96.1.255", False), ("0-0:96.1.0", False))


def _quantity(value: str, obis: str, unit: str) -> int:
    """'001581.123*kWh' -> 1581123 (Wh); '000000286*W' -> 286 (W); below 1 Wh/W dropped."""
    m = _QUANTITY.fullmatch(value)
    if m is None or m[3] != unit:
        raise P1Error("garbled", f"{obis}: {value!r} is not a value in {unit}")
    whole, frac, _ = m.groups()
    if frac is None:
        return int(whole) * _SCALE[unit]
    if len(frac) == 3 and unit[0] == "k":  # DSMR's 3 decimals of kWh or kW: the usual case
        return int(whole) * 1000 + int(frac)
    scale = _SCALE[unit]
    return int(whole) * scale + int(frac.ljust(9, "0")) * scale // 1_000_000_000


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


def _equipment(cosem: dict[str, str]) -> str:
    for obis, hexed in _IDS:
        value = cosem.get(obis, "")
        if not value:
            continue
        if not hexed:
            if not _PLAIN_ID.fullmatch(value):
                raise P1Error("garbled", f"{obis}: equipment id {value!r} is not printable")
            return value
        if not _HEX.fullmatch(value):
            raise P1Error("garbled", f"{obis}: equipment id is not hex-encoded")
        text = bytes.fromhex(value)
        # DSMR 4.2 meters (Kaifa) send ids that are not text: they stay in hex.
        return text.decode("ascii") if _PRINTABLE.fullmatch(text) else value.upper()
    return ""


def _check_crc(data: bytes, end: int, crc_text: bytes, variant: Variant) -> None:
    if not crc_text:
        if variant.crc:
            raise P1Error(
                "crc",
                "the telegram has no CRC; a meter that sends none (DSMR 2.2, 3, Q3D) must be "
                "enrolled with its variant",
            )
        return
    if not _CRC.fullmatch(crc_text):
        raise P1Error("garbled", f"CRC {crc_text!r} is not 1-4 hex digits")
    stated = int(crc_text, 16)
    actual = crc16(data[: end + 1])
    if actual != stated:
        raise P1Error("crc", f"CRC says {stated:04X}, telegram has {actual:04X}")


def _registers(cosem: dict[str, str], kind: str, unit: str) -> tuple[tuple[int, ...], int | None]:
    """The tariff registers (1-0:1.8.1, 1.8.2 …) and the total (1.8.0) of 'import' ('1')
    or 'export' ('2'), in Wh. Tariffs must start at 1 and have no gap; a total sent beside
    them must be their sum."""
    tariffs: list[int] = []
    codes = _TARIFF_CODES[kind]
    for obis in codes:
        if obis not in cosem:
            break
        tariffs.append(_quantity(cosem[obis], obis, unit))
    for obis in codes[len(tariffs) + 1 :]:
        if obis in cosem:
            raise P1Error("garbled", f"{obis} without {codes[len(tariffs)]}")
    total_obis = _TOTAL_CODES[kind]
    total = _quantity(cosem[total_obis], total_obis, unit) if total_obis in cosem else None
    if total is not None and tariffs and total != sum(tariffs):
        raise P1Error(
            "garbled", f"{total_obis} is {total} Wh, its tariffs add up to {sum(tariffs)}"
        )
    return tuple(tariffs), total


@dataclass
class _Lines:
    """What a telegram's lines say beyond the registers kept as text."""

    voltage: dict[str, float] = field(default_factory=dict)
    current: dict[str, float] = field(default_factory=dict)
    phase_import: dict[str, int] = field(default_factory=dict)
    phase_export: dict[str, int] = field(default_factory=dict)
    unknown: int = 0


def _lines(text: str) -> tuple[dict[str, str], dict[str, str], _Lines]:  # noqa: PLR0912 - flat
    """The registers kept as text (by OBIS code), the per-phase powers (to be read once the
    variant and so the unit is known) and the rest, from a checked body."""
    cosem: dict[str, str] = {}
    phase_power: dict[str, str] = {}
    out = _Lines()
    seen: set[str] = set()
    last = ""
    for line in text.split("\r\n")[:-1]:
        obis, _, value = line.partition("(")
        if not obis:  # the value of the line before (a DSMR 2.2-3 gas reading)
            if last in cosem or last in _HANDLERS:
                raise P1Error("garbled", f"{last}: a value on a line of its own")
            continue
        if obis[-1] == "5":  # EasyMeter's '*255'
            obis = obis.removesuffix("*255")
        if obis in seen:
            raise P1Error("garbled", f"{obis} appears twice")
        seen.add(obis)
        last = obis
        inner = value[:-1]
        if obis in _KNOWN:
            cosem[obis] = inner
            continue
        handler = _HANDLERS.get(obis)
        if handler is None:
            if obis not in _IGNORED:
                out.unknown += 1
            continue
        kind, name = handler
        if kind == "V":
            v = _VOLT.fullmatch(inner)
            if v is None:
                raise P1Error("garbled", f"{obis}: {inner!r} is not a voltage")
            out.voltage[name] = float(v[1])
        elif kind == "A":
            amps = _AMP.fullmatch(inner)
            if amps is None:
                raise P1Error("garbled", f"{obis}: {inner!r} is not a current")
            out.current[name] = float(amps[1])
        else:
            phase_power[obis] = inner
    return cosem, phase_power, out


def parse_telegram(data: bytes, variant: str = AUTO) -> Telegram:
    """Check and parse one whole telegram (from '/' to the CRLF after its CRC).

    ``variant`` is the meter's (:data:`gateway.energy.variants.VARIANTS`); ``auto`` takes
    the layout from the telegram and wants a CRC. Raises :class:`P1Error` with reason
    ``crc``, ``truncated`` or ``garbled``.
    """
    end = data.rfind(b"!")
    if not data.startswith(b"/") or end < 0:
        raise P1Error("truncated", "no '!' at the end")
    tail = data[end + 1 :]
    crlf = tail.find(b"\r\n")
    crc_text = tail[:crlf] if crlf >= 0 else tail
    if (crlf >= 0 and len(tail) != crlf + 2) or len(crc_text) > 4:
        raise P1Error("garbled", "bytes after the CRC")
    configured = VARIANTS[variant]
    _check_crc(data, end, crc_text, configured)
    body = data[: end + 1]
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
    cosem, phase_power, lines = _lines(text)
    layout = detect(ident[0].decode("ascii"), cosem) if variant == AUTO else variant
    spec = VARIANTS[layout]
    missing = [obis for obis in spec.required if obis not in cosem]
    if missing:
        raise P1Error("garbled", f"missing {', '.join(missing)} ({layout})")
    import_wh, import_total = _registers(cosem, "1", spec.energy)
    export_wh, export_total = _registers(cosem, "2", spec.energy)
    for obis, value in phase_power.items():
        kind, phase = _HANDLERS[obis]
        side = lines.phase_import if kind == "+P" else lines.phase_export
        side[phase] = _quantity(value, obis, spec.power)
    if not import_wh and import_total is None:
        raise P1Error("garbled", "missing 1-0:1.8.1 or 1-0:1.8.0 (energy imported)")
    tariff = cosem.get("0-0:96.14.0")
    if tariff is not None and not re.fullmatch(r"\d{4}", tariff):
        raise P1Error("garbled", f"tariff indicator {tariff!r} is not 4 digits")
    version = cosem.get("1-3:0.2.8", cosem.get("0-0:96.1.4", ""))
    if not re.fullmatch(r"\d{0,5}", version):
        raise P1Error("garbled", f"version {version!r} is not a number")
    meter_time = cosem.get("0-0:1.0.0")
    power_export = cosem.get("1-0:2.7.0")
    return Telegram(
        ident=ident[0][1:-4].decode("ascii"),
        version=version,
        meter_time_ms=None if meter_time is None else _meter_time(meter_time),
        equipment_id=_equipment(cosem),
        import_wh=import_wh,
        export_wh=export_wh,
        tariff=None if tariff is None else int(tariff),
        power_import_w=_quantity(cosem["1-0:1.7.0"], "1-0:1.7.0", spec.power),
        power_export_w=(
            0 if power_export is None else _quantity(power_export, "1-0:2.7.0", spec.power)
        ),
        voltage_v=lines.voltage,
        current_a=lines.current,
        phase_import_w=lines.phase_import,
        phase_export_w=lines.phase_export,
        unknown=lines.unknown,
        raw=bytes(data),
        import_total=import_total,
        export_total=export_total,
        variant=layout,
    )


# The lines kept as text and checked once the variant is known.
_KNOWN = frozenset(
    {
        "1-3:0.2.8",  # version (DSMR 4, 5)
        "0-0:96.1.4",  # version (Fluvius)
        "0-0:1.0.0",  # the meter's clock
        *(obis for obis, _ in _IDS),
        *(f"1-0:{kind}.8.{n}" for kind in (1, 2) for n in range(5)),
        "0-0:96.14.0",  # tariff indicator
        "1-0:1.7.0",  # power imported
        "1-0:2.7.0",  # power exported
    }
)
_HANDLERS: dict[str, tuple[str, str]] = {
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

    def __init__(self, max_telegram: int = MAX_TELEGRAM, variant: str = AUTO) -> None:
        if variant not in VARIANTS or VARIANTS[variant].encrypted:
            raise ValueError(f"{variant!r} is not a variant of plain P1 telegrams")
        self._buf = bytearray()
        self._max = max_telegram
        self._variant = variant
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
            crlf = buf.find(b"\r\n", bang, bang + 7)  # '!', up to 4 hex digits, CRLF
            if crlf < 0:
                if len(buf) < bang + 7:
                    return out
                raw = bytes(buf[: bang + 7])
                del buf[: bang + 7]
                out.append(self._reject("garbled", "no CRLF after the CRC", raw))
                continue
            raw = bytes(buf[: crlf + 2])
            del buf[: crlf + 2]
            try:
                telegram = parse_telegram(raw, self._variant)
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

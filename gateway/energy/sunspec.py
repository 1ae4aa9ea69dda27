"""SunSpec inverters, sans-IO: Modbus holding registers in, exact values out.

A SunSpec device lays its data out as a chain of *models* in its holding registers: the
marker ``SunS`` (0x5375 0x6E53) at a base address (40000, else 0 or 50000), then one model
after another, each an ID register, a length register (the registers that follow) and its
points, until the end marker (ID 0xFFFF). The first model is the common model 1
(manufacturer, model, options, version, serial number: 16/16/8/8/16 registers of ASCII);
an inverter's measurements are in model 101, 102 or 103 (single, split, three phase; one
layout of 50 registers), as integers with a scale factor each: AC power ``W`` (int16) times
10^``W_SF``, lifetime AC energy ``WH`` (acc32) times 10^``WH_SF``. A point the device does
not implement holds 0x8000 (int16, scale factors), 0xFFFF (uint16) or 0 (acc32). The float
models 111, 112 and 113 (60 registers) hold the same points as IEEE 754 float32 (high word
first) without scale factors; NaN is "not implemented" there.
(SunSpec Information Model Specification and the models' definitions, sunspec/models:
``model_1.json``, ``model_101.json`` to ``model_103.json``, ``model_111.json`` to
``model_113.json``.)

Nothing here reads the wire: :func:`discover` walks the chain through a ``read(address,
count)`` function the edge supplies (``gateway/transports/modbus.py``), bounded in models
and registers, and the decoders take the registers read. Whatever a device sends ends in
values or in a :class:`SunSpecRefused` with one of the :data:`REASONS`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MARKER = (0x5375, 0x6E53)  # "SunS"
BASES = (40000, 0, 50000)
END = 0xFFFF
COMMON = 1
INVERTERS = (101, 102, 103)
INVERTER_LENGTH = 50
FLOAT_INVERTERS = (111, 112, 113)  # the same points as float32, no scale factors
FLOAT_INVERTER_LENGTH = 60
MAX_VALUE = 2**53  # whole W and Wh beyond this are refused: past any inverter, and JSON's
COMMON_LENGTHS = (65, 66)  # 66 in the specification (with its pad); 65 in many devices
MAX_READ = 125  # registers in one Modbus read (function 3)
MAX_MODELS = 32  # models walked before the chain is given up as endless
MAX_MODEL_LENGTH = 1000  # registers a single model may claim
MAX_ADDRESS = 0xFFFF

_POW10: tuple[int, ...] = tuple(10**i for i in range(11))  # scale factors are -10..10

NOT_INT16 = 0x8000
NOT_UINT16 = 0xFFFF
NOT_ACC32 = 0

# The float models' offsets: W, WH and St.
_FW, _FWH, _FST = 20, 30, 46

# Offsets of points from the model's first point (after its ID and length registers).
_W, _W_SF, _WH, _WH_SF, _ST = 12, 13, 22, 24, 36
_MN, _MD, _VR, _SN = (0, 16), (16, 32), (40, 48), (48, 64)

REASONS = (
    "no_marker",  # no "SunS" at any base address
    "no_common",  # the first model is not the common model 1 of a known length
    "no_inverter",  # no model 101-103 or 111-113 before the end marker
    "bad_model",  # a model's length is 0, too long, or runs past the address space
    "too_many_models",  # more than MAX_MODELS before the end marker
    "bad_registers",  # the device answered with another number of registers than asked
    "not_implemented",  # W, WH or their scale factors hold the "not implemented" value
    "bad_scale",  # a scale factor outside -10..10
    "bad_value",  # W or WH not finite, negative lifetime energy, or beyond MAX_VALUE
    "wrong_inverter",  # another serial number than the one bound to this inverter
    "energy_backwards",  # lifetime energy lower than the last reading's
    "no_answer",  # the device did not answer within the timeout, or the link is down
    "modbus_error",  # the device answered with a Modbus exception
)


class SunSpecRefused(Exception):
    """What a device sent cannot be used; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Model:
    id: int
    address: int  # of its ID register
    length: int  # of its points (the length register's value)

    @property
    def points(self) -> int:
        return self.address + 2


@dataclass(frozen=True)
class Layout:
    """Where a device keeps what the gateway reads, found once by :func:`discover`."""

    base: int
    common: Model
    inverter: Model

    def reads(self) -> list[tuple[int, int]]:
        """The reads of one poll: (address, count), each at most MAX_READ registers.

        The common model's points and the inverter's are read in one request when they lie
        within MAX_READ registers of each other (a common model of 66 followed by the
        inverter is 120 registers), else in two.
        """
        first = (self.common.points, self.common.length)
        second = (self.inverter.points, self.inverter.length)
        start, end = first[0], second[0] + second[1]
        if second[0] >= start and end - start <= MAX_READ:
            return [(start, end - start)]
        return [first, second]

    def split(self, answers: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
        """The common model's and the inverter's points out of the answers to :meth:`reads`."""
        if len(answers) == 1:
            regs = list(answers[0])
            offset = self.inverter.points - self.common.points
            return regs[: self.common.length], regs[offset : offset + self.inverter.length]
        return list(answers[0]), list(answers[1])


@dataclass(frozen=True)
class Nameplate:
    """The common model's identity of the device."""

    manufacturer: str
    model: str
    version: str
    serial: str


@dataclass(frozen=True)
class InverterValues:
    """One reading of the inverter model, in whole units (truncated toward zero)."""

    power_w: int
    energy_wh: int
    state: int | None  # operating state (1 off … 8 standby), None if not implemented

    def as_json(self) -> dict[str, int | None]:
        return {"power_w": self.power_w, "energy_wh": self.energy_wh, "state": self.state}


Read = Callable[[int, int], Sequence[int]]


def _read(read: Read, address: int, count: int) -> list[int]:
    regs = list(read(address, count))
    if len(regs) != count or any(not 0 <= r <= 0xFFFF for r in regs):
        raise SunSpecRefused(
            "bad_registers", f"asked {count} registers at {address}, got {len(regs)}"
        )
    return regs


def find_base(read: Read, bases: Sequence[int] = BASES) -> int:
    """The first of ``bases`` holding the "SunS" marker (one read of two registers each)."""
    for base in bases:
        try:
            if tuple(_read(read, base, 2)) == MARKER:
                return base
        except SunSpecRefused as refusal:
            if refusal.reason == "no_answer":
                raise
            # an exception or a short answer at this base: try the next one
    raise SunSpecRefused("no_marker", f"no 'SunS' at {', '.join(map(str, bases))}")


def discover(read: Read, bases: Sequence[int] = BASES) -> Layout:
    """Find the marker and walk the models to the common and the first inverter model.

    At most one read per base plus MAX_MODELS reads, of two registers each (the model
    headers): a device cannot make it read on for ever or far.
    """
    base = find_base(read, bases)
    address = base + 2
    common: Model | None = None
    for _ in range(MAX_MODELS):
        if address + 2 > MAX_ADDRESS:
            raise SunSpecRefused("bad_model", f"the chain runs past register {MAX_ADDRESS}")
        model_id, length = _read(read, address, 2)
        if model_id == END:
            break
        if length == 0 or length > MAX_MODEL_LENGTH or address + 2 + length > MAX_ADDRESS:
            raise SunSpecRefused("bad_model", f"model {model_id} at {address}: length {length}")
        model = Model(model_id, address, length)
        if common is None:
            if model_id != COMMON or length not in COMMON_LENGTHS:
                raise SunSpecRefused(
                    "no_common", f"first model is {model_id} (length {length}), not 1"
                )
            common = model
        elif model_id in INVERTERS or model_id in FLOAT_INVERTERS:
            expected = INVERTER_LENGTH if model_id in INVERTERS else FLOAT_INVERTER_LENGTH
            if length != expected:
                raise SunSpecRefused("bad_model", f"inverter model {model_id}: length {length}")
            return Layout(base, common, model)
        address += 2 + length
    else:
        raise SunSpecRefused("too_many_models", f"no end marker within {MAX_MODELS} models")
    if common is None:
        raise SunSpecRefused("no_common", "the chain ends before any model")
    raise SunSpecRefused(
        "no_inverter", "no inverter model (101, 102, 103, 111, 112, 113) in the chain"
    )


def _text(regs: Sequence[int]) -> str:
    raw = b"".join(r.to_bytes(2, "big") for r in regs)
    return raw.split(b"\0", 1)[0].decode("ascii", "replace").strip()


def decode_common(points: Sequence[int]) -> Nameplate:
    """The common model's points (without ID and length) as its nameplate."""
    if len(points) not in COMMON_LENGTHS:
        raise SunSpecRefused("bad_registers", f"common model of {len(points)} registers")
    return Nameplate(
        manufacturer=_text(points[_MN[0] : _MN[1]]),
        model=_text(points[_MD[0] : _MD[1]]),
        version=_text(points[_VR[0] : _VR[1]]),
        serial=_text(points[_SN[0] : _SN[1]]),
    )


def _int16(value: int) -> int:
    return value - 0x10000 if value & 0x8000 else value


def scaled(value: int, scale: int) -> int:
    """``value`` times 10^``scale`` as a whole number, truncated toward zero (exact integers)."""
    if scale >= 0:
        return value * _POW10[scale]
    quotient = abs(value) // _POW10[-scale]
    return quotient if value >= 0 else -quotient


def _scale(points: Sequence[int], offset: int, name: str) -> int:
    raw = points[offset]
    if raw == NOT_INT16:
        raise SunSpecRefused("not_implemented", f"{name} is not implemented")
    scale = _int16(raw)
    if not -10 <= scale <= 10:
        raise SunSpecRefused("bad_scale", f"{name} = {scale}")
    return scale


def _bounded(name: str, value: int) -> int:
    if not -MAX_VALUE < value < MAX_VALUE:
        raise SunSpecRefused("bad_value", f"{name} = {value}")
    return value


def decode_inverter(points: Sequence[int], model: int = 103) -> InverterValues:
    """An inverter model's points (without ID and length) as values: 101, 102 or 103
    (integers and scale factors) or 111, 112 or 113 (float32)."""
    if model in FLOAT_INVERTERS:
        return _decode_float(points)
    if len(points) != INVERTER_LENGTH:
        raise SunSpecRefused("bad_registers", f"inverter model of {len(points)} registers")
    if points[_W] == NOT_INT16:
        raise SunSpecRefused("not_implemented", "W is not implemented")
    energy = points[_WH] << 16 | points[_WH + 1]
    if energy == NOT_ACC32:
        raise SunSpecRefused("not_implemented", "WH is not implemented (0)")
    state = points[_ST]
    return InverterValues(
        power_w=_bounded("W", scaled(_int16(points[_W]), _scale(points, _W_SF, "W_SF"))),
        energy_wh=_bounded("WH", scaled(energy, _scale(points, _WH_SF, "WH_SF"))),
        state=None if state == NOT_UINT16 else state,
    )


def _float32(points: Sequence[int], offset: int, name: str) -> float:
    value: float = struct.unpack(">f", struct.pack(">HH", points[offset], points[offset + 1]))[0]
    if math.isnan(value):
        raise SunSpecRefused("not_implemented", f"{name} is not implemented (NaN)")
    if math.isinf(value) or not -MAX_VALUE < value < MAX_VALUE:
        raise SunSpecRefused("bad_value", f"{name} = {value}")
    return value


def _decode_float(points: Sequence[int]) -> InverterValues:
    if len(points) != FLOAT_INVERTER_LENGTH:
        raise SunSpecRefused("bad_registers", f"float inverter model of {len(points)} registers")
    energy = _float32(points, _FWH, "WH")
    if energy < 0:
        raise SunSpecRefused("bad_value", f"WH = {energy}")
    state = points[_FST]
    return InverterValues(
        power_w=int(_float32(points, _FW, "W")),  # whole units, truncated toward zero
        energy_wh=int(energy),
        state=None if state == NOT_UINT16 else state,
    )


def poll(read: Read, layout: Layout) -> tuple[Nameplate, InverterValues]:
    """One poll: read the common and the inverter model's points, decode both."""
    answers = [_read(read, address, count) for address, count in layout.reads()]
    common, inverter = layout.split(answers)
    return decode_common(common), decode_inverter(inverter, layout.inverter.id)


def check_reading(
    nameplate: Nameplate,
    values: InverterValues,
    *,
    serial: str | None,
    last_energy_wh: int | None,
) -> None:
    """Refuse a reading from another inverter than the one bound, or with energy that went
    backwards (lifetime energy only grows)."""
    if serial is not None and nameplate.serial != serial:
        raise SunSpecRefused("wrong_inverter", f"serial {nameplate.serial!r}, bound to {serial!r}")
    if last_energy_wh is not None and values.energy_wh < last_energy_wh:
        raise SunSpecRefused("energy_backwards", f"{values.energy_wh} Wh after {last_energy_wh} Wh")

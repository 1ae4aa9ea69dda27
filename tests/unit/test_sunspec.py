"""The SunSpec decoder on register maps laid out here from the SunSpec models' definitions
(sunspec/models: model_1.json, model_103.json, model_113.json): the marker, the bounded
model walk, the common and inverter models (integer and float), scale factors, "not
implemented", and whatever a device sends."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.energy import sunspec
from gateway.energy.sunspec import (
    InverterValues,
    Layout,
    Model,
    Nameplate,
    SunSpecRefused,
    check_reading,
    decode_inverter,
    discover,
    poll,
    scaled,
)


def text(value: str, registers: int) -> list[int]:
    raw = value.encode().ljust(registers * 2, b"\0")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, registers * 2, 2)]


def common(serial: str = "SN-1", length: int = 66) -> list[int]:
    points = text("Maker", 16) + text("Inverter X", 16) + text("", 8) + text("2.1", 8)
    points += [*text(serial, 16), 1, 0]
    return [1, length, *points[:length]]


def inverter(
    *,
    model: int = 103,
    w: int = 2500,
    w_sf: int = 0,
    wh: int = 12_345_678,
    wh_sf: int = 0,
    state: int = 4,
) -> list[int]:
    points = [0xFFFF] * 50
    points[12], points[13] = w & 0xFFFF, w_sf & 0xFFFF  # W (int16), W_SF (sunssf)
    points[22], points[23] = wh >> 16 & 0xFFFF, wh & 0xFFFF  # WH (acc32, high word first)
    points[24] = wh_sf & 0xFFFF  # WH_SF
    points[36] = state  # St
    return [model, 50, *points]


def device(*models: list[int], base: int = 40000, end: bool = True) -> dict[int, int]:
    regs = [0x5375, 0x6E53]  # "SunS"
    for m in models:
        regs += m
    if end:
        regs += [0xFFFF, 0]
    return dict(enumerate(regs, base))


class Reader:
    """A device's registers behind ``read(address, count)``, counting what is asked;
    an address it does not hold is a Modbus exception (illegal data address)."""

    def __init__(self, regs: dict[int, int]) -> None:
        self.regs = regs
        self.reads: list[tuple[int, int]] = []

    def __call__(self, address: int, count: int) -> list[int]:
        self.reads.append((address, count))
        values = [self.regs.get(a) for a in range(address, address + count)]
        if None in values:
            raise SunSpecRefused("modbus_error", f"exception 2 at {address}")
        return [v for v in values if v is not None]


def test_a_three_phase_inverter_is_found_and_read_in_one_request() -> None:
    read = Reader(device(common(), inverter(w=2500, wh=12_345_678)))
    layout = discover(read)
    assert layout == Layout(40000, Model(1, 40002, 66), Model(103, 40070, 50))
    assert layout.reads() == [(40004, 118)]  # common's points to the inverter's end
    read.reads.clear()
    nameplate, values = poll(read, layout)
    assert read.reads == [(40004, 118)]
    assert nameplate == Nameplate("Maker", "Inverter X", "2.1", "SN-1")
    assert values == InverterValues(power_w=2500, energy_wh=12_345_678, state=4)


@pytest.mark.parametrize("base", [0, 50000])
def test_the_marker_is_also_looked_for_at_0_and_50000(base: int) -> None:
    layout = discover(Reader(device(common(), inverter(model=101), base=base)))
    assert layout.base == base and layout.inverter.id == 101


def test_models_between_common_and_inverter_are_skipped_and_reads_split_when_far() -> None:
    nameplate_120 = [120, 26, *([0] * 26)]
    big = [64000, 100, *([7] * 100)]  # a vendor model
    read = Reader(device(common(length=65), nameplate_120, big, inverter(model=102)))
    layout = discover(read)
    assert layout.common.length == 65 and layout.inverter.id == 102
    assert layout.inverter.address == 40002 + 67 + 28 + 102
    assert layout.reads() == [(40004, 65), (layout.inverter.address + 2, 50)]
    nameplate, values = poll(read, layout)
    assert nameplate.serial == "SN-1" and values.power_w == 2500


@pytest.mark.parametrize(
    ("value", "scale", "expected"),
    [
        (2500, 0, 2500),
        (250, 1, 2500),
        (25, 2, 2500),
        (25001, -1, 2500),  # truncated toward zero
        (-25001, -1, -2500),
        (12345, -3, 12),
        (1, 10, 10**10),
        (0xFFFFFFFF, 3, 4_294_967_295_000),  # acc32 at its top, in kWh: exact
    ],
)
def test_scale_factors_give_exact_whole_units(value: int, scale: int, expected: int) -> None:
    assert scaled(value, scale) == expected


def test_negative_power_and_scale_factors_are_twos_complement() -> None:
    values = decode_inverter(inverter(w=-30, w_sf=-1, wh=987_654, wh_sf=2)[2:])
    assert values.power_w == -3 and values.energy_wh == 98_765_400


@pytest.mark.parametrize(
    ("points", "reason"),
    [
        (inverter(w=-32768), "not_implemented"),  # W = 0x8000
        (inverter(w_sf=-32768), "not_implemented"),  # W_SF = 0x8000
        (inverter(wh=0), "not_implemented"),  # acc32's "not implemented" is 0
        (inverter(wh_sf=-32768), "not_implemented"),
        (inverter(w_sf=11), "bad_scale"),
        (inverter(wh_sf=-11), "bad_scale"),
    ],
)
def test_not_implemented_and_impossible_values_are_refused(points: list[int], reason: str) -> None:
    with pytest.raises(SunSpecRefused) as refused:
        decode_inverter(points[2:])
    assert refused.value.reason == reason


def test_an_unimplemented_state_is_none() -> None:
    assert decode_inverter(inverter(state=0xFFFF)[2:]).state is None


@pytest.mark.parametrize(
    ("regs", "reason"),
    [
        (device(common(), inverter()) | {40001: 0x6E54}, "no_marker"),  # "SunT"
        ({}, "no_marker"),
        (device(inverter()), "no_common"),  # the first model is not model 1
        (device(common(length=20)), "no_common"),  # a common model of no known length
        (device(), "no_common"),  # the chain ends at once
        (device(common()), "no_inverter"),
        (device(common(), [160, 0]), "bad_model"),  # a model of length 0
        (device(common(), [160, 65000], end=False), "bad_model"),  # longer than any model
        (device(common(), [103, 52, *([0] * 52)]), "bad_model"),  # inverter of wrong length
        (device(common(), *([[64000, 1, 0]] * 40)), "too_many_models"),
        (device(common(), [64000, 900, *([0] * 900)], base=64600, end=False), "bad_model"),
    ],
)
def test_a_device_that_is_not_a_sunspec_inverter_is_refused(
    regs: dict[int, int], reason: str
) -> None:
    with pytest.raises(SunSpecRefused) as refused:
        discover(Reader(regs), bases=(40000, 0, 50000, 64600))
    assert refused.value.reason == reason


def test_a_short_answer_is_refused() -> None:
    layout = discover(Reader(device(common(), inverter())))
    with pytest.raises(SunSpecRefused) as refused:
        poll(lambda address, count: [0] * (count - 1), layout)
    assert refused.value.reason == "bad_registers"
    with pytest.raises(SunSpecRefused) as refused:
        poll(lambda address, count: [0x10000] * count, layout)
    assert refused.value.reason == "bad_registers"


def test_no_answer_stops_the_search_for_the_marker() -> None:
    asked: list[int] = []

    def silent(address: int, count: int) -> list[int]:
        asked.append(address)
        raise SunSpecRefused("no_answer", "timeout")

    with pytest.raises(SunSpecRefused) as refused:
        discover(silent)
    assert refused.value.reason == "no_answer" and asked == [40000]


def test_another_serial_and_energy_going_backwards_are_refused() -> None:
    plate = Nameplate("Maker", "X", "1", "SN-2")
    values = InverterValues(100, 5000, 4)
    check_reading(plate, values, serial=None, last_energy_wh=None)
    check_reading(plate, values, serial="SN-2", last_energy_wh=5000)  # unchanged is fine
    with pytest.raises(SunSpecRefused) as refused:
        check_reading(plate, values, serial="SN-1", last_energy_wh=None)
    assert refused.value.reason == "wrong_inverter"
    with pytest.raises(SunSpecRefused) as refused:
        check_reading(plate, values, serial="SN-2", last_energy_wh=5001)
    assert refused.value.reason == "energy_backwards"


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.integers(40000, 40400), st.integers(0, 0xFFFF), max_size=400).map(
        lambda d: {40000: 0x5375, 40001: 0x6E53, 40002: 1, 40003: 66} | d
    ),
    st.booleans(),
)
def test_whatever_a_device_holds_the_walk_is_bounded(regs: dict[int, int], marker: bool) -> None:
    if marker:
        regs |= {40000: 0x5375, 40001: 0x6E53}
    read = Reader(regs)
    try:
        layout = discover(read)
        poll(read, layout)
    except SunSpecRefused as refused:
        assert refused.reason in sunspec.REASONS
    assert len(read.reads) <= len(sunspec.BASES) + sunspec.MAX_MODELS + 2
    assert all(count <= sunspec.MAX_READ for _, count in read.reads)


def float_inverter(*, model: int = 113, w: float = 2500.75, wh: float = 1.5e7) -> list[int]:
    """The float models' layout (model_111.json … model_113.json): W at 20, WH at 30, St 46."""
    points = [0] * 60

    def put(offset: int, value: float) -> None:
        high, low = struct.unpack(">HH", struct.pack(">f", value))
        points[offset], points[offset + 1] = high, low

    for offset in range(0, 46, 2):
        put(offset, math.nan)  # what the device does not implement
    put(20, w)
    put(30, wh)
    points[46], points[47] = 4, 0xFFFF
    return [model, 60, *points]


def test_a_float_inverter_model_is_found_and_read_in_two_requests() -> None:
    read = Reader(device(common(), float_inverter(w=-12.9, wh=16_777_216.0)))
    layout = discover(read)
    assert layout.inverter == Model(113, 40070, 60)
    assert layout.reads() == [(40004, 66), (40072, 60)]  # 128 registers: more than one read
    nameplate, values = poll(read, layout)
    assert nameplate.serial == "SN-1"
    assert values == InverterValues(power_w=-12, energy_wh=16_777_216, state=4)
    assert discover(Reader(device(common(), float_inverter(model=111)))).inverter.id == 111


@pytest.mark.parametrize(
    ("points", "reason"),
    [
        (float_inverter(w=math.nan), "not_implemented"),
        (float_inverter(wh=math.nan), "not_implemented"),
        (float_inverter(w=math.inf), "bad_value"),
        (float_inverter(wh=-1.0), "bad_value"),
        (float_inverter(wh=1e30), "bad_value"),
        (inverter(wh=0xFFFFFFFF, wh_sf=10), "bad_value"),  # past what SQLite and JSON hold
        (float_inverter()[:-1], "bad_registers"),
    ],
)
def test_float_and_out_of_range_values_are_refused(points: list[int], reason: str) -> None:
    with pytest.raises(SunSpecRefused) as refused:
        decode_inverter(points[2:], points[0])
    assert refused.value.reason == reason


def test_a_float_model_of_another_length_is_refused() -> None:
    with pytest.raises(SunSpecRefused) as refused:
        discover(Reader(device(common(), [113, 50, *([0] * 50)])))
    assert refused.value.reason == "bad_model"

"""DSMR 5.0 P1: CRC, parsing exact to the standard, and a stream with faults mixed in."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.energy.p1 import (
    P1Error,
    P1Splitter,
    Rejected,
    Telegram,
    crc16,
    format_telegram,
    parse_telegram,
)

EXAMPLE = (Path(__file__).parents[1] / "vectors" / "dsmr" / "v5-example.txt").read_bytes()


def lines(import1: str = "000123.456", export1: str = "000010.000") -> list[str]:
    return [
        "1-3:0.2.8(50)",
        "0-0:1.0.0(240615120000S)",
        "0-0:96.1.1(4530303334303037)",
        f"1-0:1.8.1({import1}*kWh)",
        "1-0:1.8.2(000200.001*kWh)",
        f"1-0:2.8.1({export1}*kWh)",
        "1-0:2.8.2(000000.500*kWh)",
        "0-0:96.14.0(0001)",
        "1-0:1.7.0(00.250*kW)",
        "1-0:2.7.0(01.500*kW)",
        "1-0:32.7.0(231.0*V)",
        "1-0:31.7.0(002*A)",
    ]


def test_crc16_is_crc16_arc():
    assert crc16(b"123456789") == 0xBB3D  # the catalogue's check value
    assert crc16(b"") == 0
    assert crc16(b"/test\r\n!") == 0xEA36


def test_published_example_telegram_checks_and_parses():
    t = parse_telegram(EXAMPLE)
    assert t.ident == "ISk5\\2MT382-1000"
    assert t.version == "50"
    assert t.equipment_id == "K8EG004046395507"
    assert t.meter_time_ms == 1483381202000  # 2017-01-02 19:20:02 CET
    assert t.import_wh == (4426, 2399) and t.export_wh == (2444, 0)
    assert t.tariff == 2 and t.power_import_w == 244 and t.power_export_w == 0
    assert t.voltage_v == {"L1": 230.0, "L2": 230.0, "L3": 229.0}
    assert t.current_a == {"L1": 0.48, "L2": 0.44, "L3": 0.86}
    assert t.phase_import_w == {"L1": 70, "L2": 32, "L3": 142}
    assert t.unknown == 0


def test_summer_time_and_exact_values():
    t = parse_telegram(format_telegram(lines()))
    assert t.meter_time_ms == 1718445600000  # 2024-06-15 12:00 CEST = 10:00 UTC
    assert t.import_wh == (123456, 200001) and t.export_wh == (10000, 500)
    assert t.power_export_w == 1500 and t.total_export_wh == 10500


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (EXAMPLE.replace(b"4.426", b"4.427"), "crc"),
        (EXAMPLE[:-8] + b"!6EEF\r\n", "crc"),
        (format_telegram([*lines(), "garbage line"]), "garbled"),
        (format_telegram(lines(import1="12x.456")), "garbled"),
        (format_telegram([*lines()[1:-2], "1-0:1.8.1(000001.000*kWh)"]), "garbled"),
        (format_telegram([*lines()[:3], *lines()[4:]]), "garbled"),  # a register missing
        (EXAMPLE[:200], "truncated"),
    ],
)
def test_bad_telegrams_are_refused_with_a_reason(raw, reason):
    with pytest.raises(P1Error) as caught:
        parse_telegram(raw)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "line", ["1-0:1.8.1(000001.000*kWh)", "1-0:32.7.0(230.0*V)", "1-0:99.1.0(1)"]
)
def test_a_line_twice_is_refused_whichever_it_is(line):
    with pytest.raises(P1Error, match=f"{line.split('(')[0]} appears twice") as caught:
        parse_telegram(format_telegram([*lines(), line, line]))
    assert caught.value.reason == "garbled"


def test_unknown_obis_lines_are_skipped_and_counted():
    t = parse_telegram(format_telegram([*lines(), "1-0:99.1.0(42)", "0-0:96.99.9(x)"]))
    assert t.unknown == 2 and t.import_wh[0] == 123456


def test_stream_with_noise_and_corruption_mixed_in():
    good = format_telegram(lines())
    bad_crc = good.replace(b"123.456", b"123.457")
    truncated = good[:120]
    garbled = format_telegram([*lines(), "1-0:1.8.1 (broken)"])
    stream = b"\x00\xff noise" + good + bad_crc + truncated + good + b"junk" + garbled + good
    splitter = P1Splitter()
    out: list[Telegram | Rejected] = []
    for i in range(0, len(stream), 13):
        out += splitter.feed(stream[i : i + 13])
    assert [type(x).__name__ for x in out].count("Telegram") == 3
    assert splitter.counts["telegrams"] == 3
    assert splitter.counts["crc"] == 1
    assert splitter.counts["truncated"] == 1
    assert splitter.counts["garbled"] == 1
    assert splitter.counts["noise_bytes"] >= len(b"\x00\xff noise") + 4


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_never_crash_and_never_become_readings(noise, chunk):
    splitter = P1Splitter()
    out = []
    for i in range(0, len(noise), chunk):
        out += splitter.feed(noise[i : i + chunk])
    assert not any(isinstance(x, Telegram) for x in out)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=2000), st.integers(min_value=0, max_value=255))
def test_any_single_byte_flip_is_caught(position, xor):
    good = format_telegram(lines())
    position %= len(good) - 2  # the final CRLF is outside the checksum
    flipped = bytearray(good)
    flipped[position] ^= xor or 1
    splitter = P1Splitter()
    out = splitter.feed(bytes(flipped) + good)
    telegrams = [x for x in out if isinstance(x, Telegram)]
    assert telegrams and all(t.raw == good for t in telegrams)

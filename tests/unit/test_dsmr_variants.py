"""Every DSMR meter variant: the published telegrams (tests/vectors/dsmr/README.md) parsed
exactly, cross-checked against dsmr-parser (the library Home Assistant reads meters with),
and the variant rules: no CRC only where the variant has none, required lines, units."""

from __future__ import annotations

from copy import deepcopy
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path

import pytest
from dsmr_parser import telegram_specifications as specs
from dsmr_parser.parsers import TelegramParser
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.energy.p1 import P1Error, P1Splitter, Rejected, Telegram, crc16, parse_telegram
from gateway.energy.variants import VARIANTS, detect

VECTORS = Path(__file__).parents[1] / "vectors" / "dsmr"


def vector(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def _spec(name: str) -> dict:
    spec = deepcopy(getattr(specs, name))
    spec["general_global_cipher"] = False  # the T210-D-R's telegram, once decrypted
    return spec


# file, the variant a meter is enrolled with, what auto makes of it (None: refused, no CRC),
# dsmr-parser's specification, and the exact values: import tariffs, import total, export
# tariffs, export total, power in, power out (Wh, W), equipment id, meter time (ms).
CASES = [
    ("v2.2.txt", "dsmr2.2", None, "V2_2",
     (1001, 1001), 2002, (1001, 1001), 2002, 1010, 0, "00000000000000", None),
    ("v3.txt", "dsmr3", None, "V3",
     (12345678, 12345678), 24691356, (12345678, 12345678), 24691356, 1190, 0,
     "K8EG004046395507", None),
    ("v4.2.txt", "dsmr4", "dsmr4", "V4",
     (1581123, 1435706), 3016829, (0, 0), 0, 2027, 0,
     "3960221976967177082151037881335713", 1479067077000),
    ("v5-example.txt", "dsmr5", "dsmr5", "V5",
     (4426, 2399), 6825, (2444, 0), 2444, 244, 0, "K8EG004046395507", 1483381202000),
    ("v5-unpadded-crc.txt", "dsmr5", "dsmr5", "V5",
     (4426, 2399), 6825, (2444, 0), 2444, 244, 0, "K8EG004046395507", 1483381222000),
    ("fluvius-v171.txt", "fluvius", "fluvius", "BELGIUM_FLUVIUS",
     (34, 15758), 15792, (0, 11), 11, 0, 0, "1SAG3101021605", 1589284449000),
    ("eon-hu.txt", "eon-hu", "eon-hu", "EON_HUNGARY",
     (47719, 125921, 0, 0), 173640, (401829, 225348, 0, 0), 627177, 0, 2601,
     "SAG3082200002160", 1690204050000),
    ("iskra-ie.txt", "iskra-ie", "iskra-ie", "ISKRA_IE",
     (10181, 10182), 20363, (10281, 10282), 20563, 170, 270, "09610", None),
    ("sagemcom-t210.txt", "sagemcom-t210", "sagemcom-t210", "SAGEMCOM_T210_D_R",
     (5017120, 1528646), 6545766, (0, 58), 58, 286, 0, "", 1665064214000),
    ("q3d-b1024.txt", "q3d", None, "Q3D",
     (), 52185782, (), 19949322, 2124, 0, "1ESY1313002565", None),
    ("q3d-a1004.txt", "q3d", None, "Q3D",
     (), 32549506, (), 0, 1688, 0, "1ESY1336001560", None),
    ("sweden-aidon.txt", "sweden", "sweden", "SWEDEN",
     (), 6619795, (), 0, 345, 0, "", 1667335520000),
    ("smarty-plain.txt", "smarty-plain", "smarty-plain", "LUXEMBOURG_SMARTY",
     (), 273764, (), 112743030, 0, 897, "SAG1030700012701", 1775231671000),
]  # fmt: skip


CASES_BY_NAME = {case[0]: case[1] for case in CASES}


def only_telegram(raw: bytes, variant: str) -> Telegram:
    splitter = P1Splitter(variant=variant)
    out = splitter.feed(raw)
    assert [type(x) for x in out] == [Telegram], out
    return out[0]  # type: ignore[return-value]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_variants_telegram_parses_exactly(case):
    name, variant, auto, _, imp, imp_total, exp, exp_total, p_in, p_out, equipment, when = case
    t = only_telegram(vector(name), variant)
    assert t.variant == variant
    assert (t.import_wh, t.total_import_wh, t.export_wh, t.total_export_wh) == (
        imp,
        imp_total,
        exp,
        exp_total,
    )
    assert (t.power_import_w, t.power_export_w) == (p_in, p_out)
    assert t.equipment_id == equipment and t.meter_time_ms == when
    if auto is None:  # a meter without CRC is never taken for one by auto
        [refused] = P1Splitter().feed(vector(name))
        assert isinstance(refused, Rejected) and refused.reason == "crc", refused
        assert "no CRC" in refused.detail
    else:
        assert parse_telegram(vector(name)).variant == auto


def _floor(value: Decimal, unit: str) -> int:
    scaled = value * 1000 if unit in ("kWh", "kW") else value
    return int(scaled.to_integral_value(rounding=ROUND_FLOOR))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_dsmr_parser_reads_the_same_values(case):
    """dsmr-parser (Decimal arithmetic, its own regular expressions and CRC) against ours."""
    name, variant, _, spec, *_ = case
    theirs = TelegramParser(_spec(spec)).parse(vector(name).decode("latin-1"), throw_ex=True)
    ours = only_telegram(vector(name), variant)
    pairs = {
        "ELECTRICITY_USED_TARIFF_1": ours.import_wh[:1],
        "ELECTRICITY_USED_TARIFF_2": ours.import_wh[1:2],
        "ELECTRICITY_DELIVERED_TARIFF_1": ours.export_wh[:1],
        "ELECTRICITY_DELIVERED_TARIFF_2": ours.export_wh[1:2],
        "ELECTRICITY_IMPORTED_TOTAL": (ours.total_import_wh,),
        "ELECTRICITY_EXPORTED_TOTAL": (ours.total_export_wh,),
        "CURRENT_ELECTRICITY_USAGE": (ours.power_import_w,),
        "CURRENT_ELECTRICITY_DELIVERY": (ours.power_export_w,),
    }
    compared = 0
    for attribute, value in pairs.items():
        theirs_object = getattr(theirs, attribute, None)
        if theirs_object is None or not value:
            continue
        assert _floor(theirs_object.value, theirs_object.unit) == value[0], attribute
        compared += 1
    assert compared >= 2, f"dsmr-parser read only {compared} of our registers"


def test_the_published_crcs_are_ours_and_dsmr_parsers():
    for name in ("v4.2.txt", "v5-example.txt", "fluvius-v171.txt", "sagemcom-t210.txt"):
        raw = vector(name)
        end = raw.rindex(b"!")
        assert crc16(raw[: end + 1]) == int(raw[end + 1 : end + 5], 16), name
        assert TelegramParser.crc16(raw[: end + 1].decode()) == crc16(raw[: end + 1])


def test_a_no_crc_telegram_of_a_crc_variant_is_refused():
    raw = vector("v5-example.txt")
    stripped = raw[: raw.rindex(b"!") + 1] + b"\r\n"
    for variant in ("auto", "dsmr5", "fluvius", "smarty-plain"):
        with pytest.raises(P1Error) as caught:
            parse_telegram(stripped, variant)
        assert caught.value.reason == "crc"
    assert parse_telegram(stripped, "dsmr3").import_wh == (4426, 2399)  # weaker, on purpose


def test_a_crc_sent_by_a_no_crc_variant_is_still_checked():
    raw = vector("v5-example.txt").replace(b"!6EEE", b"!6EEF")
    with pytest.raises(P1Error) as caught:
        parse_telegram(raw, "dsmr3")
    assert caught.value.reason == "crc"


def test_the_configured_variant_decides_what_must_be_there():
    # Iskra's telegram (no clock, no version) is fine as itself, not as a DSMR 5.0 meter's.
    with pytest.raises(P1Error, match=r"missing 1-3:0\.2\.8, 0-0:1\.0\.0.*\(dsmr5\)"):
        parse_telegram(vector("iskra-ie.txt"), "dsmr5")
    with pytest.raises(P1Error, match=r"missing .*0-0:42\.0\.0"):
        parse_telegram(vector("fluvius-v171.txt"), "smarty-plain")


def reseal(raw: bytes, old: bytes, new: bytes) -> bytes:
    body = raw[: raw.rindex(b"!") + 1].replace(old, new)
    assert old in raw
    return body + b"%04X\r\n" % crc16(body)


@pytest.mark.parametrize(
    ("name", "old", "new", "why"),
    [
        ("v5-example.txt", b"1-0:1.8.2(", b"1-0:1.8.3(", "missing 1-0:1.8.2"),
        (
            "smarty-plain.txt",
            b"1-0:2.8.0(",
            b"1-0:1.8.2(000001.000*kWh)\r\n1-0:2.8.0(",
            "1-0:1.8.2 without 1-0:1.8.1",
        ),
        ("sagemcom-t210.txt", b"1-0:1.8.0(006545766", b"1-0:1.8.0(006545767", "add up"),
        ("eon-hu.txt", b"1-0:2.8.0(000627.177", b"1-0:2.8.0(000627.178", "add up"),
        ("v5-example.txt", b"(000004.426*kWh)", b"(000004.426*Wh)", "not a value in"),
        ("v5-example.txt", b"(00.244*kW)", b"(00.244*kWh)", "not a value in"),
        ("sagemcom-t210.txt", b"(000000286*W)", b"(000.286*kW)", "not a value in W"),
        ("sagemcom-t210.txt", b"(000000286*W)", b"(-00000286*W)", "not a value in"),
        ("v4.2.txt", b"(02.027*kW)", b"(02.027*kW)(1)", "not a value in"),
    ],
)
def test_registers_that_do_not_add_up_or_have_wrong_units_are_refused(name, old, new, why):
    with pytest.raises(P1Error, match=why) as caught:
        parse_telegram(reseal(vector(name), old, new), CASES_BY_NAME[name])
    assert caught.value.reason == "garbled"


def test_units_are_normalised_exactly():
    kwh = parse_telegram(reseal(vector("v5-example.txt"), b"000004.426*kWh", b"123456.789*kWh"))
    assert kwh.import_wh[0] == 123_456_789
    wh = parse_telegram(reseal(vector("sagemcom-t210.txt"), b"006545766*Wh", b"006545766*Wh"))
    assert wh.total_import_wh == 6_545_766
    # Q3D's tenths of a mWh are dropped, never rounded up.
    q3d = only_telegram(vector("q3d-b1024.txt"), "q3d")
    assert q3d.total_import_wh == 52_185_782 and q3d.power_import_w == 2124
    assert "import_total_wh" in q3d.values() and "import_t1_wh" not in q3d.values()


def test_detection_rules():
    assert detect("/FLU5\\253769484_A", {"0-0:96.1.4": "50217"}) == "fluvius"
    assert detect("/ESY5Q3DB1024 V3.04", {}) == "q3d"
    assert detect("/X", {"1-0:1.8.0": "000000001*Wh"}) == "sagemcom-t210"
    assert detect("/X", {"0-0:42.0.0": "", "1-0:1.8.1": ""}) == "eon-hu"
    assert detect("/X", {"0-0:42.0.0": ""}) == "smarty-plain"
    assert detect("/X", {"1-3:0.2.8": "42"}) == "dsmr4"
    assert detect("/X", {"1-3:0.2.8": "50"}) == "dsmr5"
    assert detect("/ADN9 6534", {"1-0:1.8.0": "00006619.795*kWh"}) == "sweden"
    assert detect("/X", {}) == "iskra-ie"
    assert {v.name for v in VARIANTS.values() if not v.crc} == {"dsmr2.2", "dsmr3", "q3d"}


def test_every_variant_in_one_stream_with_trailing_noise():
    """Q3D's gateway adds lines and 0xFF bytes after '!': noise, counted, not a telegram."""
    splitter = P1Splitter(variant="q3d")
    stream = vector("q3d-b1024.txt") + vector("q3d-a1004.txt")
    out = []
    for i in range(0, len(stream), 7):
        out += splitter.feed(stream[i : i + 7])
    assert [t.equipment_id for t in out if isinstance(t, Telegram)] == [
        "1ESY1313002565",
        "1ESY1336001560",
    ]
    assert splitter.counts["noise_bytes"] == 2 * 47


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from(["dsmr3", "q3d", "sagemcom-t210"]))
def test_arbitrary_bytes_never_become_readings_whatever_the_variant(noise, variant):
    splitter = P1Splitter(variant=variant)
    out = splitter.feed(b"/ABC5x\r\n\r\n" + noise) + splitter.feed(noise + b"!\r\n")
    assert not any(isinstance(x, Telegram) for x in out)

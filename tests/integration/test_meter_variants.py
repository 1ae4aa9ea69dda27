"""Every DSMR variant end to end: simulated meters of each kind on real pty pairs, the real
``didgw run`` reading them all, their readings on the record with the Wh and W that
dsmr-parser (an independent parser) reads in the same telegrams; an encrypted Smarty
meter with the wrong key and a meter without CRC enrolled as ``auto`` refused, nothing of
theirs recorded, the refusals counted in ``didgw status``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from copy import deepcopy
from decimal import ROUND_FLOOR
from pathlib import Path

import pytest
from anvil import free_port
from dsmr_parser import telegram_specifications as specs
from dsmr_parser.parsers import TelegramParser
from gateway_process import GatewayProcess
from meters import SIM, Meters, enroll_variant, register_household
from support import Run, wait_until

from gateway.chain.store import ChainStore
from gateway.db import connect
from gateway.identity import offline_resolver, verify_jws

pytestmark = pytest.mark.integration

# variant: dsmr-parser's specification of its (decrypted) telegrams
VARIANTS = {
    "dsmr2.2": "V2_2",
    "dsmr3": "V3",
    "dsmr4": "V4",
    "dsmr5": "V5",
    "fluvius": "BELGIUM_FLUVIUS",
    "eon-hu": "EON_HUNGARY",
    "iskra-ie": "ISKRA_IE",
    "sagemcom-t210": "SAGEMCOM_T210_D_R",
    "q3d": "Q3D",
    "sweden": "SWEDEN",
    "smarty-plain": "LUXEMBOURG_SMARTY",
    "smarty": "LUXEMBOURG_SMARTY",
    "sagemcom-t210-encrypted": "SAGEMCOM_T210_D_R",
}
KEY = "000102030405060708090A0B0C0D0E0F"
T210_KEYS = KEY + "\n" + "101112131415161718191A1B1C1D1E1F"
TELEGRAM = re.compile(rb"/[^!]*![0-9A-F]{0,4}\r\n")


def readings(state: Path, did: str) -> list[dict]:
    store = ChainStore(connect(state / "didgw.db"))
    try:
        tokens = [e.payload for e in store.entries() if e.kind == "vouched_reading"]
    finally:
        store.close()
    bodies = [
        json.loads(
            verify_jws(
                t, resolver=offline_resolver(), relationship="assertionMethod", now=time.time()
            ).payload
        )
        for t in tokens
    ]
    return [b for b in bodies if b["did"] == did]


def theirs(echo: Path, spec: str) -> set[tuple[int, int]]:
    """(import Wh, power in W) of each telegram the meter sent, as dsmr-parser reads them."""
    specification = deepcopy(getattr(specs, spec))
    specification["general_global_cipher"] = False
    parser = TelegramParser(specification)
    seen = set()
    for raw in TELEGRAM.findall(echo.read_bytes()):
        t = parser.parse(raw.decode("latin-1"), throw_ex=True)
        total = getattr(t, "ELECTRICITY_IMPORTED_TOTAL", None)
        parts = [total] if total else [t.ELECTRICITY_USED_TARIFF_1, t.ELECTRICITY_USED_TARIFF_2]
        power = t.CURRENT_ELECTRICITY_USAGE
        seen.add((sum(_wh(p.value, p.unit) for p in parts), _wh(power.value, power.unit)))
    return seen


def _wh(value, unit: str) -> int:
    scaled = value * 1000 if unit in ("kWh", "kW") else value
    return int(scaled.to_integral_value(rounding=ROUND_FLOOR))


def ours(body: dict) -> tuple[int, int]:
    values = body["values"]
    if "import_total_wh" in values:
        total = values["import_total_wh"]["value"]
    else:
        total = sum(v["value"] for k, v in values.items() if re.fullmatch(r"import_t\d_wh", k))
    return total, values["power_import_w"]["value"]


def test_every_variant_through_a_pty_onto_the_record(
    didgw: Run, meters: Meters, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    assert didgw("init", "--state-dir", str(state)).returncode == 0
    household = register_household(didgw, state, tmp_path, "house")
    key_file = tmp_path / "meter.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    t210_file = tmp_path / "t210.keys"
    t210_file.write_text(T210_KEYS + "\n")
    t210_file.chmod(0o600)
    wrong = tmp_path / "wrong.key"
    wrong.write_text("F" * 32 + "\n")
    wrong.chmod(0o600)
    dids: dict[str, str] = {}
    sims = []
    for variant in [*VARIANTS, "smarty-wrong-key", "auto-fed-dsmr3"]:
        enrolled = {"smarty-wrong-key": "smarty", "auto-fed-dsmr3": "auto"}.get(variant, variant)
        link = tmp_path / f"tty-{variant}"
        dids[variant] = enroll_variant(didgw, state, household, variant, link, variant=enrolled)
        sent = {"smarty-wrong-key": "smarty", "auto-fed-dsmr3": "dsmr3"}.get(variant, variant)
        args = ["--variant", sent, "--rate", "5", "--speed", "60", "--seed", str(len(sims) + 1)]
        args += ["--echo", str(tmp_path / f"{variant}.sent")]
        if sent == "smarty":
            args += ["--key-file", str(wrong if variant == "smarty-wrong-key" else key_file)]
        if sent == "sagemcom-t210-encrypted":
            args += ["--key-file", str(t210_file)]
        sims.append((link, args))
    # The keys: from a file (the meter's own), from standard input (the T210-D-R's two).
    for variant in ("smarty", "smarty-wrong-key"):
        out = didgw(
            "meter", "key", dids[variant], "--file", str(key_file), "--state-dir", str(state)
        )
        assert out.returncode == 0, out.stderr
        assert KEY not in out.stdout + out.stderr  # never echoed
    out = didgw(
        "meter", "key", dids["sagemcom-t210-encrypted"], "--state-dir", str(state), input=T210_KEYS
    )
    assert out.returncode == 0, out.stderr
    for variant in ("smarty", "sagemcom-t210-encrypted"):
        kept = next((state / "keys" / "meters").glob(f"{dids[variant][-16:]}.dlms"))
        assert kept.stat().st_mode & 0o777 == 0o600
    for link, args in sims:
        meters.start(link, *args)
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[mqtt]\nenabled = false\n[meter]\nenabled = true\nrecord_every_seconds = 0.0\n"
        f"[metrics]\nport = {free_port()}\n"
    )
    gateway = GatewayProcess(state, None, config)
    gateway.start()
    try:
        wait_until(
            lambda: all(len(readings(state, dids[v])) >= 3 for v in VARIANTS),
            "3 readings on the record from every variant",
            30,
            details=lambda: {v: len(readings(state, dids[v])) for v in VARIANTS},
        )
        status = didgw("status", "--state-dir", str(state), "--config", str(config))
        assert re.search(r"refused: .*decrypt [1-9]", status.stdout), status.stdout
        assert re.search(r"refused: .*crc [1-9]", status.stdout), status.stdout
    finally:
        assert gateway.stop() == 0, gateway.output
    for variant, spec in VARIANTS.items():
        bodies = readings(state, dids[variant])
        sent = theirs(tmp_path / f"{variant}.sent", spec)
        assert bodies and {ours(b) for b in bodies} <= sent, variant
        assert {b["variant"] for b in bodies} == {variant}
        if variant in ("smarty", "sagemcom-t210-encrypted"):
            counters = [b["frame_counter"] for b in bodies]
            assert counters == sorted(set(counters)), counters
    # Nothing of the refused meters on the record; their refusals counted, by reason.
    assert readings(state, dids["smarty-wrong-key"]) == []
    assert readings(state, dids["auto-fed-dsmr3"]) == []
    counts = {
        did: json.loads(found)
        for did, found in re.findall(r"meter (did:key:\S+): (\{.*?\})", gateway.output)
    }
    assert counts[dids["smarty-wrong-key"]]["decrypt"] > 0
    assert counts[dids["smarty-wrong-key"]]["telegrams"] == 0
    assert counts[dids["auto-fed-dsmr3"]]["crc"] > 0
    # Warned of, once per power of ten: not once a second for ever.
    warnings = re.findall(r"telegram rejected \(decrypt, (\d+) so far\)", gateway.output)
    assert warnings and set(warnings) <= {"1", "10", "100"}, warnings
    assert didgw("chain", "verify", "--state-dir", str(state)).returncode == 0


def test_meter_keys_are_refused_when_shared_or_malformed(didgw: Run, tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert didgw("init", "--state-dir", str(state)).returncode == 0
    household = register_household(didgw, state, tmp_path, "house")
    smarty = enroll_variant(didgw, state, household, "lu", tmp_path / "tty0", variant="smarty")
    plain = enroll_variant(didgw, state, household, "nl", tmp_path / "tty1", variant="dsmr5")
    listed = json.loads(didgw("meter", "list", "--json", "--state-dir", str(state)).stdout)
    assert {m["did"]: m["variant"] for m in listed} == {smarty: "smarty", plain: "dsmr5"}
    shared = tmp_path / "shared.key"
    shared.write_text(KEY + "\n")
    shared.chmod(0o644)
    out = didgw("meter", "key", smarty, "--file", str(shared), "--state-dir", str(state))
    assert out.returncode != 0 and "group or others" in out.stderr and KEY not in out.stderr
    for bad, why in (
        ("00" * 15, "32 hex digits"),
        ("zz" * 16, "32 hex digits"),
        ("00" * 5000, "32 hex digits"),
        (KEY + "\n" + KEY, "takes one key"),
    ):
        out = didgw("meter", "key", smarty, "--state-dir", str(state), input=bad)
        assert out.returncode != 0 and why in out.stderr, out.stderr
        assert bad[:32] not in out.stderr
    out = didgw("meter", "key", plain, "--state-dir", str(state), input=KEY)
    assert out.returncode != 0 and "not encrypted" in out.stderr
    assert not list((state / "keys" / "meters").glob("*.dlms"))
    # A meter whose key is missing, or was made readable by others, stops the start.
    config = tmp_path / "gateway.toml"
    config.write_text("[mqtt]\nenabled = false\n[meter]\nenabled = true\n")
    run = didgw("run", "--state-dir", str(state), "--config", str(config))
    assert run.returncode != 0 and "does not exist" in run.stdout + run.stderr
    assert didgw("meter", "key", smarty, "--state-dir", str(state), input=KEY).returncode == 0
    [kept] = (state / "keys" / "meters").glob("*.dlms")
    os.chmod(kept, 0o640)
    run = didgw("run", "--state-dir", str(state), "--config", str(config))
    assert run.returncode != 0 and "group or others" in run.stdout + run.stderr


def test_meter_read_opens_encrypted_captures_with_the_right_key_only(
    didgw: Run, tmp_path: Path
) -> None:
    key = tmp_path / "meter.key"
    key.write_text(KEY + "\n")
    key.chmod(0o600)
    wrong = tmp_path / "wrong.key"
    wrong.write_text("0" * 32 + "\n")
    wrong.chmod(0o600)
    capture = tmp_path / "smarty.bin"
    subprocess.run(
        [sys.executable, str(SIM), "--variant", "smarty", "--key-file", str(key), "--count", "3",
         "--rate", "0", "--out", str(capture)],
        check=True,
    )  # fmt: skip
    base = ("meter", "read", "--file", str(capture), "--variant", "smarty", "--key-file")
    ok = didgw(*base, str(key))
    assert ok.returncode == 0 and ok.stdout.count("ok  smarty  ") == 3, ok.stdout + ok.stderr
    refused = didgw(*base, str(wrong))
    assert refused.returncode == 1 and refused.stdout.count("REJECTED (decrypt)") == 3
    assert KEY not in ok.stdout + ok.stderr + refused.stdout + refused.stderr
    plain = didgw("meter", "read", "--file", str(capture))  # taken for plain telegrams: none
    assert plain.returncode == 1 and "ok " not in plain.stdout

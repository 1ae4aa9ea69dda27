"""Meter telegrams per second, per DSMR variant: the gateway's splitter and parser (and, for
the encrypted ones, AES-GCM) on telegrams from firmware-sim/p1meter.py, beside dsmr-parser
(Home Assistant's parser, when installed) on the same telegrams.

Last line: one JSON object, ``{"telegrams_per_s": {variant: n}, "dsmr_parser_per_s":
{variant: n}}``. A P1 port sends 1 telegram a second (10 for DSMR 2.2-4): a gateway reading
a few meters needs a few per second; the target here is >= 1,000/s per variant on a Pi 4,
so one core serves hundreds of meters. ``--quick`` runs in about 20 seconds.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

import argparse
import json
import re
import subprocess
import tempfile
import time
from copy import deepcopy
from pathlib import Path

from gateway.energy.dlms_frames import EncryptedSplitter
from gateway.energy.p1 import P1Splitter, Telegram

ROOT = Path(__file__).parents[1]
KEY = "000102030405060708090A0B0C0D0E0F"
AUTH = "101112131415161718191A1B1C1D1E1F"
VARIANTS = [
    "dsmr2.2", "dsmr3", "dsmr4", "dsmr5", "fluvius", "eon-hu", "iskra-ie", "sagemcom-t210",
    "q3d", "sweden", "smarty-plain", "smarty", "sagemcom-t210-encrypted",
]  # fmt: skip
SPECS = {
    "dsmr2.2": "V2_2", "dsmr3": "V3", "dsmr4": "V4", "dsmr5": "V5", "fluvius": "BELGIUM_FLUVIUS",
    "eon-hu": "EON_HUNGARY", "iskra-ie": "ISKRA_IE", "sagemcom-t210": "SAGEMCOM_T210_D_R",
    "q3d": "Q3D", "sweden": "SWEDEN", "smarty-plain": "LUXEMBOURG_SMARTY",
}  # fmt: skip


def telegrams(variant: str, count: int, work: Path) -> bytes:
    out = work / f"{variant}.bin"
    keys = work / "keys"
    keys.write_text(KEY + ("\n" + AUTH if variant == "sagemcom-t210-encrypted" else "") + "\n")
    subprocess.run(
        [sys.executable, str(ROOT / "firmware-sim" / "p1meter.py"), "--variant", variant,
         "--count", str(count), "--rate", "0", "--speed", "60", "--out", str(out),
         "--key-file", str(keys), "--start", "2024-06-15T06:00"],
        check=True,
    )  # fmt: skip
    return out.read_bytes()


def ours(variant: str, stream: bytes) -> tuple[float, int]:
    splitter: P1Splitter | EncryptedSplitter
    if variant in ("smarty", "sagemcom-t210-encrypted"):
        auth = bytes.fromhex(AUTH) if variant != "smarty" else None
        splitter = EncryptedSplitter(variant, bytes.fromhex(KEY), auth)
    else:
        splitter = P1Splitter(variant=variant)
    start = time.perf_counter()
    good = 0
    for i in range(0, len(stream), 4096):  # as a serial read returns them, in chunks
        good += sum(isinstance(x, Telegram) for x in splitter.feed(stream[i : i + 4096]))
    return time.perf_counter() - start, good


def theirs(variant: str, stream: bytes) -> float | None:
    try:
        from dsmr_parser import telegram_specifications
        from dsmr_parser.parsers import TelegramParser
    except ImportError:
        return None
    if variant not in SPECS:
        return None
    spec = deepcopy(getattr(telegram_specifications, SPECS[variant]))
    spec["general_global_cipher"] = False
    parser = TelegramParser(spec)
    texts = [t.decode("latin-1") for t in re.findall(rb"/[^!]*![0-9A-F]{0,4}\r\n", stream)]
    start = time.perf_counter()
    for text in texts:
        parser.parse(text)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    count = 1_000 if args.quick else 10_000
    rates: dict[str, int] = {}
    reference: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            stream = telegrams(variant, count, Path(tmp))
            seconds, good = ours(variant, stream)
            assert good == count, f"{variant}: {good} of {count} telegrams accepted"
            rates[variant] = int(count / seconds)
            line = f"{variant:24} {rates[variant]:7,} telegrams/s"
            slow = theirs(variant, stream)
            if slow is not None:
                reference[variant] = int(count / slow)
                line += f"   dsmr-parser {reference[variant]:6,}/s"
            print(line, file=sys.stderr)
    print(json.dumps({"telegrams_per_s": rates, "dsmr_parser_per_s": reference}))


if __name__ == "__main__":
    main()

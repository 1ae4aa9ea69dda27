#!/usr/bin/env python3
"""A simulated DSMR smart meter writing P1 telegrams to a serial line, a file or stdout.

A household's load (a base, a morning and an evening peak) and a roof of solar panels
(a sine from 06:00 to 20:00) on a clock that may run faster than real time; what the
house does not use of its solar power is exported, what the panels do not cover is
imported, and the four energy registers count it exactly (Wh). Shares no code with
gateway/ (the CRC and the telegram format are written out here, from the standard).

Examples:
  python firmware-sim/p1meter.py --count 10 --out telegrams.txt
  python firmware-sim/p1meter.py --pty /tmp/meter0 --speed 600 --start 2024-06-15T10:00
  python firmware-sim/p1meter.py --port /dev/ttyUSB1 --rate 1
  python firmware-sim/p1meter.py --variant fluvius --count 3
  python firmware-sim/p1meter.py --variant smarty --key-file smarty.key --pty /tmp/meter1

--variant NAME writes that variant's telegrams (DSMR 2.2, 3, 4, 5, Fluvius, E.ON Hungary,
Iskra IE, Sagemcom T210-D-R, EasyMeter Q3D, Sweden's H1 port, Luxembourg Smarty …: its own
writer for each, from the published examples); the encrypted ones (smarty,
sagemcom-t210-encrypted) are sealed with AES-GCM (pycryptodome) under the key in --key-file.

--pty LINK makes a pseudo-terminal pair, points LINK at its slave side (open LINK as the
serial port) and writes to its master side. --corrupt F damages a fraction F of the
telegrams (a flipped byte, a cut, line noise) to exercise a reader's checks.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path


def crc16(data: bytes) -> int:
    """CRC-16/ARC (poly 0x8005 reflected, init 0), as DSMR 5.0 specifies."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def kwh(wh: int) -> str:
    return f"{wh // 1000:06d}.{wh % 1000:03d}*kWh"


def kw(w: int) -> str:
    return f"{w // 1000:02d}.{w % 1000:03d}*kW"


class House:
    def __init__(self, seed: int, solar_peak_w: int, load_scale: float) -> None:
        self.rnd = random.Random(seed)  # noqa: S311 - a simulation
        self.solar_peak_w = solar_peak_w
        self.load_scale = load_scale
        self.registers = [  # Wh: import t1, t2, export t1, t2; start from a plausible reading
            self.rnd.randint(1_000_000, 9_000_000),
            self.rnd.randint(1_000_000, 9_000_000),
            self.rnd.randint(100_000, 900_000),
            0,
        ]
        self._carry = [0.0, 0.0, 0.0, 0.0]
        self.equipment = f"E00{seed:014d}"[-16:]

    def power(self, when: datetime) -> tuple[int, int]:
        hour = when.hour + when.minute / 60 + when.second / 3600
        load = (
            300 + 1200 * math.exp(-((hour - 7.5) ** 2)) + 1800 * math.exp(-((hour - 19) ** 2) / 2)
        )
        load = load * self.load_scale * (1 + 0.05 * self.rnd.uniform(-1, 1))
        solar = (
            self.solar_peak_w * max(0.0, math.sin(math.pi * (hour - 6) / 14))
            if 6 < hour < 20
            else 0
        )
        net = load - solar
        return (int(net), 0) if net >= 0 else (0, int(-net))

    def advance(self, when: datetime, seconds: float) -> tuple[int, int]:
        imp, exp = self.power(when)
        tariff = 0 if 7 <= when.hour < 23 and when.weekday() < 5 else 1  # t2 = normal, t1 = low
        tariff = 1 - tariff  # DSMR: tariff 1 low, tariff 2 normal
        for index, watts in ((tariff, imp), (2 + tariff, exp)):
            self._carry[index] += watts * seconds / 3600
            whole = int(self._carry[index])
            self.registers[index] += whole
            self._carry[index] -= whole
        return imp, exp

    def telegram(self, when: datetime, variant: str = "dsmr5") -> bytes:
        """One telegram of the meter's variant (its layout, units and CRC or none)."""
        imp, exp = self.power(when)
        summer = 3 < when.month < 11
        local = when + timedelta(hours=2 if summer else 1)
        r = Reading(
            stamp=f"{local:%y%m%d%H%M%S}{'S' if summer else 'W'}",
            registers=list(self.registers),
            imp=imp,
            exp=exp,
            tariff=2 if 7 <= local.hour < 23 else 1,
            volts=[230.0 + self.rnd.uniform(-3, 3) for _ in range(3)],
            equipment=self.equipment,
        )
        ident, lines, crc, trailer = WRITERS[PLAIN.get(variant, variant)](r)
        body = ("/" + ident + "\r\n\r\n" + "".join(f"{line}\r\n" for line in lines) + "!").encode()
        return body + (f"{crc16(body):04X}" if crc else "").encode() + b"\r\n" + trailer


@dataclass
class Reading:
    """What the meter measured, for a writer to put in its variant's form."""

    stamp: str  # YYMMDDhhmmssX, local time
    registers: list[int]  # Wh: import t1, t2, export t1, t2
    imp: int  # W
    exp: int
    tariff: int
    volts: list[float]
    equipment: str

    @property
    def hex_id(self) -> str:
        return self.equipment.encode().hex().upper()


def kwh2(wh: int) -> str:  # DSMR 2.2 and 3: 5 digits, 3 decimals
    return f"{wh // 1000:05d}.{wh % 1000:03d}*kWh"


def _dsmr5(r: Reading, version: str = "50") -> tuple[str, list[str], bool, bytes]:
    imp, exp = r.imp, r.exp
    lines = [
        f"1-3:0.2.8({version})",
        f"0-0:1.0.0({r.stamp})",
        f"0-0:96.1.1({r.hex_id})",
        f"1-0:1.8.1({kwh(r.registers[0])})",
        f"1-0:1.8.2({kwh(r.registers[1])})",
        f"1-0:2.8.1({kwh(r.registers[2])})",
        f"1-0:2.8.2({kwh(r.registers[3])})",
        f"0-0:96.14.0({r.tariff:04d})",
        f"1-0:1.7.0({kw(imp)})",
        f"1-0:2.7.0({kw(exp)})",
        "0-0:96.7.21(00004)",
        "0-0:96.7.9(00002)",
        "1-0:99.97.0(0)(0-0:96.7.19)",
        *(f"1-0:{code}.32.0(00000)" for code in (32, 52, 72)),
        *(f"1-0:{code}.7.0({v:05.1f}*V)" for code, v in zip((32, 52, 72), r.volts, strict=True)),
        *(f"1-0:{code}.7.0({int(max(imp, exp) / 690):03d}*A)" for code in (31, 51, 71)),
        *(f"1-0:{code}.7.0({kw(imp // 3)})" for code in (21, 41, 61)),
        *(f"1-0:{code}.7.0({kw(exp // 3)})" for code in (22, 42, 62)),
        "0-1:24.1.0(003)",
        "0-1:96.1.0(3232323241424344313233343536373839)",
        f"0-1:24.2.1({r.stamp})(01234.567*m3)",
    ]
    return "XMX5LGF0010466", lines, True, b""


def _dsmr4(r: Reading) -> tuple[str, list[str], bool, bytes]:
    _, lines, _, _ = _dsmr5(r, "42")
    return "KFM5KAIFA-METER", [line for line in lines if "*V)" not in line], True, b""


def _dsmr3(r: Reading, old: bool = False) -> tuple[str, list[str], bool, bytes]:
    # Power with 2 decimals of kW (10 W steps); DSMR 2.2 writes 4 digits before the point.
    width = 4 if old else 3
    lines = [
        f"0-0:96.1.1({r.hex_id})",
        *(f"1-0:{code}({kwh2(wh)})" for code, wh in zip(REGISTERS, r.registers, strict=True)),
        f"0-0:96.14.0({r.tariff:04d})",
        f"1-0:1.7.0({r.imp // 1000:0{width}d}.{r.imp % 1000 // 10:02d}*kW)",
        f"1-0:2.7.0({r.exp // 1000:0{width}d}.{r.exp % 1000 // 10:02d}*kW)",
        "0-0:17.0.0(016*A)",
        "0-0:96.3.10(1)",
        "0-0:96.13.1()",
        "0-0:96.13.0()",
        "0-1:96.1.0(3232323241424344313233343536373839)",
        "0-1:24.1.0(03)",
        f"0-1:24.3.0({r.stamp[:12]})(00)(60)(1)(0-1:24.2.1)(m3)",
        "(01234.567)",  # DSMR 2.2-3: the gas reading on a line of its own
        "0-1:24.4.0(1)",
    ]
    return "ISk5\\2MT382-1000", lines, False, b""


def _fluvius(r: Reading) -> tuple[str, list[str], bool, bytes]:
    lines = [
        "0-0:96.1.4(50217)",
        f"0-0:96.1.1({r.hex_id})",
        f"0-0:1.0.0({r.stamp})",
        *(f"1-0:{code}({kwh(wh)})" for code, wh in zip(REGISTERS, r.registers, strict=True)),
        f"1-0:1.4.0({kw(r.imp)})",
        f"1-0:1.6.0({r.stamp})({kw(r.imp)})",
        "0-0:98.1.0(1)(1-0:1.6.0)(1-0:1.6.0)(240101000000W)(231215183000W)(04.318*kW)",
        f"0-0:96.14.0({r.tariff:04d})",
        f"1-0:1.7.0({kw(r.imp)})",
        f"1-0:2.7.0({kw(r.exp)})",
        *(f"1-0:{code}.7.0({v:05.1f}*V)" for code, v in zip((32, 52, 72), r.volts, strict=True)),
        "0-0:96.3.10(1)",
        "0-0:17.0.0(999.9*kW)",
        "1-0:31.4.0(999*A)",
        "0-0:96.13.0()",
        "0-1:24.1.0(003)",
        "0-1:96.1.1(37464C4F32313139303333373333)",
        f"0-1:24.2.3({r.stamp})(00112.384*m3)",
    ]
    return "FLU5\\253769484_A", lines, True, b""


def _eon_hu(r: Reading) -> tuple[str, list[str], bool, bytes]:
    imp, exp = r.registers[:2], r.registers[2:]
    lines = [
        f"0-0:1.0.0({r.stamp})",
        f"0-0:42.0.0({r.hex_id})",
        "0-0:96.1.0(383930303832323030303032313630)",
        f"0-0:96.14.0({r.tariff:04d})",
        f"1-0:1.8.0({kwh(sum(imp))})",
        *(f"1-0:1.8.{n}({kwh(wh)})" for n, wh in enumerate([*imp, 0, 0], 1)),
        f"1-0:2.8.0({kwh(sum(exp))})",
        *(f"1-0:2.8.{n}({kwh(wh)})" for n, wh in enumerate([*exp, 0, 0], 1)),
        "1-0:3.8.0(000000.123*kvarh)",
        *(f"1-0:{code}.7.0({v:05.1f}*V)" for code, v in zip((32, 52, 72), r.volts, strict=True)),
        "1-0:14.7.0(50.00*Hz)",
        f"1-0:1.7.0({kw(r.imp)})",
        f"1-0:2.7.0({kw(r.exp)})",
    ]
    return "SAG5\\253830000_A", lines, True, b""


def _iskra_ie(r: Reading) -> tuple[str, list[str], bool, bytes]:
    lines = [
        f"0-0:96.1.0({r.equipment[-5:]})",
        *(f"1-0:{code}({kwh(wh)})" for code, wh in zip(REGISTERS, r.registers, strict=True)),
        f"0-0:96.14.0({r.tariff:04d})",
        f"1-0:1.7.0({kw(r.imp)})",
        f"1-0:2.7.0({kw(r.exp)})",
        *(f"1-0:{code}.7.0({v:05.1f}*V)" for code, v in zip((32, 52, 72), r.volts, strict=True)),
        "0-0:96.3.10(1)",
        "0-0:96.13.0()",
        "0-0:96.1.1()",
    ]
    return "ISK5\\2M550E-1011", lines, True, b""


def _t210(r: Reading) -> tuple[str, list[str], bool, bytes]:
    imp, exp = r.registers[:2], r.registers[2:]
    lines = [
        "1-3:0.2.8(50)",
        f"0-0:1.0.0({r.stamp})",
        f"1-0:1.8.0({sum(imp):09d}*Wh)",
        *(f"1-0:1.8.{n}({wh:09d}*Wh)" for n, wh in enumerate(imp, 1)),
        f"1-0:1.7.0({r.imp:09d}*W)",
        f"1-0:2.8.0({sum(exp):09d}*Wh)",
        *(f"1-0:2.8.{n}({wh:09d}*Wh)" for n, wh in enumerate(exp, 1)),
        f"1-0:2.7.0({r.exp:09d}*W)",
        "1-0:3.8.0(000000747*varh)",
        "1-0:4.7.0(000000166*var)",
    ]
    return "EST5\\253710000_A", lines, True, b""


def _q3d(r: Reading) -> tuple[str, list[str], bool, bytes]:
    def seven(wh: int) -> str:  # kWh with 7 decimals, as the Q3D counts
        return f"{wh // 1000:08d}.{wh % 1000:03d}5309*kWh"

    lines = [
        "1-0:0.0.0*255(0272031312565)",
        f"1-0:1.8.0*255({seven(r.registers[0] + r.registers[1])})",
        f"1-0:2.8.0*255({seven(r.registers[2] + r.registers[3])})",
        *(f"1-0:{code}.7.0*255({r.imp // 3:06d}.{r.imp % 100:02d}*W)" for code in (21, 41, 61)),
        f"1-0:1.7.0*255({r.imp:06d}.{r.imp % 100:02d}*W)",
        "1-0:96.5.5*255(80)",
        f"0-0:96.1.255*255({r.equipment[:14]})",
    ]
    # The COM-1 Ethernet gateway in front of a Q3D adds a line and padding after '!'.
    return "ESY5Q3DB1024 V3.04", lines, False, b"  25803103\r\n" + b"\xff" * 33 + b"\r\n"


def _sweden(r: Reading) -> tuple[str, list[str], bool, bytes]:
    def kw4(w: int) -> str:  # the H1 port: 4 digits of kW, 8 of kWh
        return f"{w // 1000:04d}.{w % 1000:03d}*kW"

    def kwh8(wh: int) -> str:
        return f"{wh // 1000:08d}.{wh % 1000:03d}*kWh"

    lines = [
        f"0-0:1.0.0({r.stamp})",
        f"1-0:1.8.0({kwh8(r.registers[0] + r.registers[1])})",
        f"1-0:2.8.0({kwh8(r.registers[2] + r.registers[3])})",
        "1-0:3.8.0(00003137.803*kVArh)",
        f"1-0:1.7.0({kw4(r.imp)})",
        f"1-0:2.7.0({kw4(r.exp)})",
        "1-0:4.7.0(0000.132*kVAr)",
        *(f"1-0:{code}.7.0({kw4(r.imp // 3)})" for code in (21, 41, 61)),
        *(f"1-0:{code}.7.0({v:05.1f}*V)" for code, v in zip((32, 52, 72), r.volts, strict=True)),
        *(f"1-0:{code}.7.0({max(r.imp, r.exp) / 690:05.1f}*A)" for code in (31, 51, 71)),
    ]
    return "ADN9 6534", lines, True, b""


def _smarty(r: Reading) -> tuple[str, list[str], bool, bytes]:
    lines = [
        "1-3:0.2.8(42)",
        f"0-0:1.0.0({r.stamp})",
        f"0-0:42.0.0({r.hex_id})",
        f"1-0:1.8.0({kwh(r.registers[0] + r.registers[1])})",
        f"1-0:2.8.0({kwh(r.registers[2] + r.registers[3])})",
        "1-0:3.8.0(000462.590*kvarh)",
        f"1-0:1.7.0({kw(r.imp)})",
        f"1-0:2.7.0({kw(r.exp)})",
        "1-1:31.4.0(040*A)(-040*A)",
        *(f"1-0:{code}.7.0({v:05.1f}*V)" for code, v in zip((32, 52, 72), r.volts, strict=True)),
        "0-1:24.1.0(003)",
        f"0-1:24.2.1({r.stamp})(14239.771*m3)",
    ]
    return "Lux5\\253663629_D", lines, True, b""


REGISTERS = ("1.8.1", "1.8.2", "2.8.1", "2.8.2")
WRITERS = {
    "dsmr2.2": lambda r: _dsmr3(r, old=True),
    "dsmr3": _dsmr3,
    "dsmr4": _dsmr4,
    "dsmr5": _dsmr5,
    "fluvius": _fluvius,
    "eon-hu": _eon_hu,
    "iskra-ie": _iskra_ie,
    "sagemcom-t210": _t210,
    "q3d": _q3d,
    "sweden": _sweden,
    "smarty-plain": _smarty,
}
# Encrypted variants: the plain telegram inside, sealed by Sealer.
PLAIN = {"smarty": "smarty-plain", "sagemcom-t210-encrypted": "sagemcom-t210"}
VARIANTS = (*WRITERS, *PLAIN)
#: Smarty's authentication key, the same for every meter (Luxmetering P1 spec 1.1.3, 3.2.5).
SMARTY_AK = bytes.fromhex("00112233445566778899AABBCCDDEEFF")


class Sealer:
    """Wraps telegrams in DLMS general-global-cipher frames, as Smarty and the T210-D-R do:
    AES-128-GCM (pycryptodome), nonce = system title + invocation counter, AAD = 0x30 +
    the authentication key, a 12-byte tag."""

    def __init__(self, key_file: str, variant: str, counter: int, title: bytes) -> None:
        lines = Path(key_file).read_text().split()
        self.key = bytes.fromhex(lines[0])
        self.auth = bytes.fromhex(lines[1]) if variant != "smarty" else SMARTY_AK
        self.counter = counter
        self.title = title

    def seal(self, telegram: bytes) -> bytes:
        from Crypto.Cipher import AES  # pycryptodome: only when a meter encrypts

        ic = self.counter.to_bytes(4, "big")
        self.counter += 1
        cipher = AES.new(self.key, AES.MODE_GCM, nonce=self.title + ic, mac_len=12)
        cipher.update(b"\x30" + self.auth)
        ciphertext, tag = cipher.encrypt_and_digest(telegram)
        body = b"\x30" + ic + ciphertext + tag
        return b"\xdb\x08" + self.title + b"\x82" + len(body).to_bytes(2, "big") + body


def corrupt(data: bytes, rnd: random.Random) -> bytes:
    kind = rnd.choice(["flip", "cut", "noise"])
    if kind == "flip":
        b = bytearray(data)
        b[rnd.randrange(1, len(b) - 8)] ^= 0x20
        return bytes(b)
    if kind == "cut":
        return data[: rnd.randrange(20, len(data) - 10)]
    return bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 40))) + data


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0912, PLR0915 - a script
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--pty", help="make a pty pair; LINK points at its slave side")
    out.add_argument("--port", help="write to this serial device")
    out.add_argument("--out", help="write to this file ('-': stdout, the default)")
    parser.add_argument("--count", type=int, help="telegrams to write, then stop")
    parser.add_argument(
        "--rate", type=float, default=1.0, help="telegrams per real second (0: as fast as possible)"
    )
    parser.add_argument(
        "--speed", type=float, default=1.0, help="simulated seconds per real second"
    )
    parser.add_argument("--start", help="simulated start time, ISO 8601 UTC [default: now]")
    parser.add_argument("--seed", type=int, default=1, help="household (meter) number")
    parser.add_argument("--solar-peak-w", type=int, default=5000)
    parser.add_argument("--load-scale", type=float, default=1.0)
    parser.add_argument("--corrupt", type=float, default=0.0, help="fraction of damaged telegrams")
    parser.add_argument(
        "--variant", default="dsmr5", choices=VARIANTS, help="the meter's DSMR variant"
    )
    parser.add_argument(
        "--key-file",
        help="encrypted variants: the meter's key (32 hex digits; the T210-D-R's "
        "authentication key on a second line)",
    )
    parser.add_argument(
        "--frame-counter", type=int, default=1, help="encrypted variants: the first frame's counter"
    )
    parser.add_argument(
        "--echo", help="append each plain telegram to this file too (what the meter measured)"
    )
    args = parser.parse_args(argv)
    sealer = None
    if args.variant in PLAIN:
        if not args.key_file:
            parser.error(f"--variant {args.variant} needs --key-file")
        sealer = Sealer(args.key_file, args.variant, args.frame_counter, b"SIM" + bytes(5))
    echo = open(args.echo, "ab") if args.echo else None  # noqa: SIM115
    house = House(args.seed, args.solar_peak_w, args.load_scale)
    rnd = random.Random(args.seed + 1000)  # noqa: S311
    sim = (
        datetime.fromisoformat(args.start).replace(tzinfo=UTC) if args.start else datetime.now(UTC)
    )
    step = args.speed / args.rate if args.rate else args.speed
    link = None
    if args.pty:
        master, slave = os.openpty()
        link = args.pty
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.ttyname(slave), link)
        write = lambda data: os.write(master, data)  # noqa: E731
        print(f"pty {os.ttyname(slave)} -> {link}", file=sys.stderr, flush=True)
    elif args.port:
        fd = os.open(args.port, os.O_WRONLY | os.O_NOCTTY)
        write = lambda data: os.write(fd, data)  # noqa: E731
    else:
        stream = sys.stdout.buffer if not args.out or args.out == "-" else open(args.out, "wb")  # noqa: SIM115
        write = stream.write
    sent = 0
    next_at = time.monotonic()
    try:
        while args.count is None or sent < args.count:
            house.advance(sim, step)
            sim += timedelta(seconds=step)
            data = house.telegram(sim, args.variant)
            if echo:
                echo.write(data)
                echo.flush()
            if sealer:
                data = sealer.seal(data)
            if args.corrupt and rnd.random() < args.corrupt:
                data = corrupt(data, rnd)
            write(data)
            sent += 1
            if args.rate:
                next_at += 1 / args.rate
                time.sleep(max(0.0, next_at - time.monotonic()))
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        if link and os.path.islink(link):
            os.unlink(link)
        if not (args.pty or args.port):
            write(b"")
            if args.out and args.out != "-":
                stream.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

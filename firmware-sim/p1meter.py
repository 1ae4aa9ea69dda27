#!/usr/bin/env python3
"""A simulated DSMR 5.0 smart meter writing P1 telegrams to a serial line, a file or stdout.

A household's load (a base, a morning and an evening peak) and a roof of solar panels
(a sine from 06:00 to 20:00) on a clock that may run faster than real time; what the
house does not use of its solar power is exported, what the panels do not cover is
imported, and the four energy registers count it exactly (Wh). Shares no code with
gateway/ (the CRC and the telegram format are written out here, from the standard).

Examples:
  python firmware-sim/p1meter.py --count 10 --out telegrams.txt
  python firmware-sim/p1meter.py --pty /tmp/meter0 --speed 600 --start 2024-06-15T10:00
  python firmware-sim/p1meter.py --port /dev/ttyUSB1 --rate 1

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
from datetime import UTC, datetime, timedelta


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

    def telegram(self, when: datetime) -> bytes:
        imp, exp = self.power(when)
        summer = 3 < when.month < 11
        local = when + timedelta(hours=2 if summer else 1)
        tariff = 2 if 7 <= local.hour < 23 else 1
        volts = [230.0 + self.rnd.uniform(-3, 3) for _ in range(3)]
        lines = [
            "1-3:0.2.8(50)",
            f"0-0:1.0.0({local:%y%m%d%H%M%S}{'S' if summer else 'W'})",
            f"0-0:96.1.1({self.equipment.encode().hex().upper()})",
            f"1-0:1.8.1({kwh(self.registers[0])})",
            f"1-0:1.8.2({kwh(self.registers[1])})",
            f"1-0:2.8.1({kwh(self.registers[2])})",
            f"1-0:2.8.2({kwh(self.registers[3])})",
            f"0-0:96.14.0({tariff:04d})",
            f"1-0:1.7.0({kw(imp)})",
            f"1-0:2.7.0({kw(exp)})",
            "0-0:96.7.21(00004)",
            "0-0:96.7.9(00002)",
            "1-0:99.97.0(0)(0-0:96.7.19)",
            *(f"1-0:{code}.32.0(00000)" for code in (32, 52, 72)),
            *(f"1-0:{code}.7.0({v:05.1f}*V)" for code, v in zip((32, 52, 72), volts, strict=True)),
            *(f"1-0:{code}.7.0({int(max(imp, exp) / 690):03d}*A)" for code in (31, 51, 71)),
            *(f"1-0:{code}.7.0({kw(imp // 3)})" for code in (21, 41, 61)),
            *(f"1-0:{code}.7.0({kw(exp // 3)})" for code in (22, 42, 62)),
            "0-1:24.1.0(003)",
            "0-1:96.1.0(3232323241424344313233343536373839)",
            f"0-1:24.2.1({local:%y%m%d%H%M%S}{'S' if summer else 'W'})(01234.567*m3)",
        ]
        body = ("/XMX5LGF0010466\r\n\r\n" + "".join(f"{line}\r\n" for line in lines) + "!").encode()
        return body + f"{crc16(body):04X}\r\n".encode()


def corrupt(data: bytes, rnd: random.Random) -> bytes:
    kind = rnd.choice(["flip", "cut", "noise"])
    if kind == "flip":
        b = bytearray(data)
        b[rnd.randrange(1, len(b) - 8)] ^= 0x20
        return bytes(b)
    if kind == "cut":
        return data[: rnd.randrange(20, len(data) - 10)]
    return bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 40))) + data


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - a script
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
    args = parser.parse_args(argv)
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
            data = house.telegram(sim)
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

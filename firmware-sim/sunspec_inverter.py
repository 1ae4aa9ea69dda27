#!/usr/bin/env python3
"""A simulated SunSpec solar inverter: a Modbus server on TCP or, as RTU, on a pty.

It serves holding registers (function 3; anything else gets exception 1, an address out
of its map exception 2) laid out as the SunSpec Information Model says: "SunS" at 40000,
the common model 1 (66 registers: manufacturer, model, options, version, serial number,
device address, pad), the three-phase inverter model 103 (50 registers: AC power W with
W_SF, lifetime energy WH as acc32 with WH_SF, operating state …; or with --float its
float32 twin, model 113 of 60 registers) and the end marker 0xFFFF. Its power follows a
solar day (a sine from 06:00 to 20:00 of a clock that may run faster, --speed) or stays at
--power W; its lifetime energy counts it exactly (Wh).

Shares no code with gateway/: Modbus TCP (MBAP header) and RTU (CRC-16/MODBUS, poly
0xA001 reflected, init 0xFFFF, low byte first) are written out here, from the Modbus
Application Protocol and Serial Line specifications.

Examples:
  python firmware-sim/sunspec_inverter.py --tcp 127.0.0.1:1502
  python firmware-sim/sunspec_inverter.py --pty /tmp/inverter0 --unit 3 --serial SIM-0001
  python firmware-sim/sunspec_inverter.py --tcp 127.0.0.1:1502 --power 2500 --fault backwards

Faults (--fault): bad_marker ("SunX" instead of "SunS"), no_inverter (the common model and
the end marker only), backwards (lifetime energy goes down by 1 kWh at each read of it),
huge_model (the first model after the common one claims 65,000 registers), endless (a
chain of 1-register models without an end), garbage (RTU: random bytes instead of answers;
TCP: random bytes then the connection closed), flood (random bytes without end from the
first request on), silent (never answers).
--serial-file F: the serial number is read from F at every request (a swapped inverter).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import select
import socket
import struct
import sys
import threading
import time
import tty
from datetime import UTC, datetime

BASE = 40000
FAULTS = (
    "bad_marker", "no_inverter", "backwards", "huge_model", "endless", "garbage", "flood",
    "silent",
)  # fmt: skip


def crc16_modbus(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def text(value: str, registers: int) -> list[int]:
    raw = value.encode("ascii")[: registers * 2].ljust(registers * 2, b"\0")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


class Inverter:
    """The register map and the physics behind it."""

    def __init__(self, args: argparse.Namespace, unit: int) -> None:
        self.args = args
        self.unit = unit
        self.fault = args.fault
        self.start = time.monotonic()
        self.clock0 = (
            datetime.fromisoformat(args.start).replace(tzinfo=UTC).timestamp()
            if args.start
            else time.time()
        )
        self.energy_wh = float(args.energy_wh)
        self.last = time.monotonic()
        self.lock = threading.Lock()
        self.reads = 0

    def serial(self) -> str:
        if self.args.serial_file:
            try:
                with open(self.args.serial_file, encoding="ascii") as f:
                    return f.read().strip()
            except OSError:
                pass
        if len(self.args.unit) > 1:  # several inverters on one line: told apart by unit
            return f"{self.args.serial}-{self.unit}"
        return str(self.args.serial)

    def power_w(self) -> int:
        if self.args.power is not None:
            return int(self.args.power)
        now = self.clock0 + (time.monotonic() - self.start) * self.args.speed
        hour = datetime.fromtimestamp(now, UTC).hour + (now % 3600) / 3600
        return int(self.args.peak * max(0.0, math.sin(math.pi * (hour - 6) / 14)))

    def advance(self) -> int:
        now = time.monotonic()
        power = self.power_w()
        self.energy_wh += power * (now - self.last) * self.args.speed / 3600
        self.last = now
        return power

    def registers(self) -> dict[int, int]:
        with self.lock:
            power = self.advance()
            self.reads += 1
            energy = int(self.energy_wh)
            if self.fault == "backwards":
                energy = max(1, energy - 1000 * self.reads)
        regs = list(text("SunX" if self.fault == "bad_marker" else "SunS", 2))
        common = [1, 66]
        common += text(self.args.manufacturer, 16) + text(self.args.model, 16)
        common += text("", 8) + text("1.0.0", 8) + text(self.serial(), 16)
        common += [self.unit, 0]
        regs += common
        if self.fault == "huge_model":
            regs += [160, 65000]
            return dict(enumerate(regs, BASE))
        if self.fault == "endless":
            for i in range(2000):
                regs += [64000 + i % 100, 1, 0]
            return dict(enumerate(regs, BASE))
        if self.fault != "no_inverter" and self.args.float:
            regs += self.float_model(power, energy)
        elif self.fault != "no_inverter":
            # W_SF 0, WH_SF 0; volts with V_SF -1, current with A_SF -2, Hz with -2.
            amps = int(power / 3 / 230 * 100)
            model = [103, 50]
            model += [amps * 3, amps, amps, amps, 0xFFFE]  # A, AphA-C, A_SF -2
            model += [4000, 4000, 4000, 2300, 2300, 2300, 0xFFFF]  # PPV, PhV, V_SF -1
            model += [power & 0xFFFF, 0]  # W, W_SF
            model += [5000, 0xFFFE]  # Hz 50.00
            model += [0x8000, 0x8000, 0x8000, 0x8000, 0x8000, 0x8000]  # VA, VAr, PF: n/i
            model += [energy >> 16 & 0xFFFF, energy & 0xFFFF, 0]  # WH acc32, WH_SF
            model += [0xFFFF, 0x8000, 0xFFFF, 0x8000, 0x8000, 0x8000]  # DC: not implemented
            model += [350, 0x8000, 0x8000, 0x8000, 0xFFFF]  # TmpCab 35.0, Tmp_SF -1
            model += [4 if power > 0 else 2, 0xFFFF]  # St: MPPT or sleeping; StVnd n/i
            model += [0] * 12  # events
            if len(model) != 52:
                raise RuntimeError(f"model 103 laid out as {len(model)} registers")
            regs += model
        regs += [0xFFFF, 0]
        return dict(enumerate(regs, BASE))

    @staticmethod
    def float_model(power: int, energy: int) -> list[int]:
        """Model 113: the points of 103 as float32 (high word first), NaN where not modelled."""
        values = [math.nan] * 23
        values[10] = float(power)  # W
        values[11] = 50.0  # Hz
        values[15] = float(energy)  # WH
        values[19] = 35.0  # TmpCab
        model = [113, 60]
        for value in values:
            model += struct.unpack(">HH", struct.pack(">f", value))
        model += [4 if power > 0 else 2, 0xFFFF] + [0] * 12  # St, StVnd, events
        if len(model) != 62:
            raise RuntimeError(f"model 113 laid out as {len(model)} registers")
        return model

    def answer(self, pdu: bytes) -> bytes | None:
        """The response PDU to a request PDU; None: no answer (silent)."""
        if self.fault == "silent":
            return None
        function = pdu[0]
        if function != 3 or len(pdu) != 5:
            return bytes([function | 0x80, 1])
        address, count = struct.unpack(">HH", pdu[1:5])
        if not 1 <= count <= 125:
            return bytes([0x83, 3])
        regs = self.registers()
        values = [regs.get(a) for a in range(address, address + count)]
        if any(v is None for v in values):
            return bytes([0x83, 2])
        return bytes([3, 2 * count]) + b"".join(struct.pack(">H", v or 0) for v in values)


class Bus:
    """The inverters on one line (or behind one TCP port), by unit id."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.inverters = {unit: Inverter(args, unit) for unit in args.unit}
        self.fault = args.fault

    def answer(self, unit: int, pdu: bytes) -> bytes | None:
        """None: no answer (another unit on the line, or silent)."""
        if unit == 255 and len(self.inverters) == 1:  # TCP's "no particular unit"
            unit = next(iter(self.inverters))
        inverter = self.inverters.get(unit)
        return None if inverter is None or not pdu else inverter.answer(pdu)


def serve_tcp(inverter: Bus, host: str, port: int) -> None:
    server = socket.create_server((host, port))
    print(f"listening on {host}:{server.getsockname()[1]}", flush=True)

    def client(conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while True:
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                while len(buffer) >= 7:
                    tid, proto, length, unit = struct.unpack(">HHHB", buffer[:7])
                    if proto != 0 or not 2 <= length <= 254:
                        return  # not Modbus TCP: hang up
                    if len(buffer) < 6 + length:
                        break
                    pdu, buffer = buffer[7 : 6 + length], buffer[6 + length :]
                    if inverter.fault == "garbage":
                        conn.sendall(os.urandom(64))
                        return
                    if inverter.fault == "flood":
                        while True:  # until the client hangs up
                            try:
                                conn.sendall(os.urandom(65536))
                            except OSError:
                                return
                    answer = inverter.answer(unit, pdu)
                    if answer is not None:
                        header = struct.pack(">HHHB", tid, 0, len(answer) + 1, unit)
                        conn.sendall(header + answer)

    while True:
        conn, _ = server.accept()
        threading.Thread(target=client, args=(conn,), daemon=True).start()


def serve_rtu(inverter: Bus, fd: int) -> None:
    """A read request is 8 bytes and is answered as soon as its CRC checks; anything else
    is a frame once the line has been silent for 3.5 characters (a few ms at pty speed)."""
    gap = max(0.005, 3.5 * 11 / next(iter(inverter.inverters.values())).args.baud)
    buffer = b""
    while True:
        ready, _, _ = select.select([fd], [], [], gap if buffer else None)
        if ready:
            try:
                buffer += os.read(fd, 512)
            except OSError:
                time.sleep(0.05)  # no one has the other side open yet
                continue
            if len(buffer) < 8 or crc16_modbus(buffer[:6]) != int.from_bytes(buffer[6:8], "little"):
                if len(buffer) < 512:
                    continue
                buffer = b""  # noise: a slave stays silent
                continue
            frame, buffer = buffer[:8], buffer[8:]
        else:
            frame, buffer = buffer, b""
            if len(frame) < 4 or crc16_modbus(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
                continue  # damaged or partial: a slave stays silent
        if inverter.fault == "garbage":
            os.write(fd, os.urandom(random.randint(1, 300)))  # noqa: S311 - a simulation
            continue
        if inverter.fault == "flood":  # bytes without end, whatever is asked
            flood(fd)
        answer = inverter.answer(frame[0], frame[1:-2])
        if answer is None or frame[0] == 0:
            continue
        body = bytes([frame[0]]) + answer
        os.write(fd, body + crc16_modbus(body).to_bytes(2, "little"))


def flood(fd: int) -> None:
    while True:
        try:
            os.write(fd, os.urandom(4096))
        except OSError:
            time.sleep(0.001)  # the line's buffer is full: the reader is behind


def open_pty(link: str) -> int:
    master, slave = os.openpty()
    tty.setraw(master)
    name = os.ttyname(slave)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(name, link)
    return master


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", metavar="HOST:PORT", help="Modbus TCP server (port 0: any)")
    where.add_argument("--pty", metavar="LINK", help="Modbus RTU on a new pty; LINK → its slave")
    p.add_argument(
        "--unit",
        type=int,
        action="append",
        help="Modbus unit id (default 1); again for more inverters on the line, whose serial "
        "numbers then end in -UNIT",
    )
    p.add_argument("--baud", type=int, default=9600, help="RTU: the line's speed, for timing")
    p.add_argument("--serial", default="SIM-INV-0001", help="serial number (common model SN)")
    p.add_argument("--serial-file", help="read the serial number from this file at each read")
    p.add_argument("--manufacturer", default="didgw-sim")
    p.add_argument("--model", default="SunSpec 103 simulator")
    p.add_argument("--power", type=int, help="constant AC power in W (default: a solar day)")
    p.add_argument("--peak", type=int, default=4000, help="the solar day's peak power, W")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    p.add_argument("--start", help="simulated clock's start, ISO (UTC); default now")
    p.add_argument("--energy-wh", type=int, default=12_345_678, help="lifetime energy at start")
    p.add_argument("--float", action="store_true", help="serve model 113 (float32), not 103")
    p.add_argument("--fault", choices=FAULTS)
    args = p.parse_args()
    args.unit = args.unit or [1]
    inverter = Bus(args)
    try:
        if args.tcp:
            host, _, port = args.tcp.rpartition(":")
            serve_tcp(inverter, host or "127.0.0.1", int(port))
        else:
            fd = open_pty(args.pty)
            print(f"RTU on {args.pty}", flush=True)
            serve_rtu(inverter, fd)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

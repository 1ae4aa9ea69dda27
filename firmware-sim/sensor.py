#!/usr/bin/env python3
"""A simulated sensor (or a fleet of them) that talks to a didgw gateway over MQTT.

It authenticates with its DID, publishes signed readings, keeps every reading on disk until
the gateway acknowledges it, and says what it does on stdout. See firmware-sim/README.md.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

# The script's own directory is first on sys.path, so the device module is found by name.
from device import (
    PASSPHRASE_ENV,
    AuthRefused,
    Device,
    DeviceError,
    Fleet,
    Trust,
    parse_broker_url,
)

EPILOG = """\
Example:
  didgw did new -o dev.pem                       # or let the sensor create dev.pem
  didgw device register did:key:z6Mk... --name "sim 1" --kind sensor
  python firmware-sim/sensor.py --broker 127.0.0.1:1883 --key dev.pem --state dev-state \
      --rate 1 --count 10                    # on the broker's machine: plain MQTT
  python firmware-sim/sensor.py --broker mqtts://192.168.1.10:8884 \
      --account-broker mqtts://192.168.1.10:8883 --tls-pin AB:CD:... \
      --key dev.pem --state dev-state --rate 1 --count 10     # TLS; the pin: didgw tls show

  python firmware-sim/sensor.py --key dev.pem --state dev-state --print-did
  python firmware-sim/sensor.py --state fleet --fleet 100 --rate 0.2   # DIDs in fleet/dids.txt

exit status: 0 when every reading sent was accepted, 1 when something was refused or not
acknowledged in time, 2 for a usage error. The key passphrase, if any, is read from
$DIDGW_KEY_PASSPHRASE (the variable `didgw did new` uses).
"""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    passphrase = os.environ.get(PASSPHRASE_ENV)
    options: dict[str, Any] = {
        "prefix": args.prefix,
        "gateway_did": args.gateway_did,
        "passphrase": passphrase.encode() if passphrase else None,
        "max_inflight": args.max_inflight,
        "timeout": args.timeout,
        "account_broker": args.account_broker,
    }
    try:
        parse_broker_url(args.broker)
        if args.account_broker:
            parse_broker_url(args.account_broker)
        if args.tls_ca or args.tls_pin:  # one for the whole fleet: the pin is checked once
            options["tls"] = Trust(args.tls_ca, args.tls_pin)
        if args.fleet:
            return _run_fleet(args, options)
        return _run_device(args, options)
    except DeviceError as exc:
        _say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sensor.py",
        description="Simulated didgw sensor: DID authentication over MQTT, signed readings.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--broker",
        default="127.0.0.1:1883",
        metavar="URL",
        help="where the device authenticates: mqtts://HOST[:PORT] (TLS, port 8883 by default), "
        "HOST:PORT (TLS on 8883 and 8884), or mqtt://HOST[:PORT]; plain MQTT only to this "
        "machine [default: 127.0.0.1:1883]",
    )
    parser.add_argument(
        "--account-broker",
        metavar="URL",
        help="the broker's accounts listener, where the device connects once authenticated, "
        "as --broker (e.g. mqtts://HOST:8883, with the same --tls-ca or --tls-pin) "
        "[default: --broker]",
    )
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument(
        "--tls-ca", type=Path, help="the broker's CA certificate (didgw tls show --pem): TLS"
    )
    trust.add_argument(
        "--tls-pin",
        metavar="SHA256",
        help="or the SHA-256 fingerprint of that certificate (didgw tls show): TLS",
    )
    parser.add_argument(
        "--key",
        type=Path,
        help="Ed25519 PKCS#8 PEM key; created (0600) if missing [default: STATE/key.pem]",
    )
    parser.add_argument(
        "--state", type=Path, required=True, help="directory for the device's queue and seq"
    )
    parser.add_argument("--rate", type=float, default=1.0, help="readings per second per device")
    parser.add_argument("--count", type=int, help="readings per device, then wait for acks, exit")
    parser.add_argument("--gateway-did", help="accept only this gateway (did:key)")
    parser.add_argument("--prefix", default="didgw", help="topic prefix [default: didgw]")
    parser.add_argument(
        "--fleet", type=int, metavar="N", help="run N devices (at most 150) in STATE/dev-*/"
    )
    parser.add_argument(
        "--type",
        dest="reading_type",
        choices=("energy", "environment"),
        default="energy",
        help="what to simulate [default: energy]",
    )
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=1000,
        help="readings awaiting an ack, at most (1 to 1024)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per network step")
    parser.add_argument("--print-did", action="store_true", help="print the DID and exit")
    parser.add_argument("--quiet", action="store_true", help="do not print every reading")
    return parser


_PRINT_LOCK = threading.Lock()  # device threads print too: one whole line at a time


def _say(message: str) -> None:
    with _PRINT_LOCK:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


class Meter:
    """Plausible values: an energy meter with a solar day curve, or a room climate sensor."""

    def __init__(self, reading_type: str, seed: str) -> None:
        self.reading_type = reading_type
        self.random = random.Random(seed)  # noqa: S311 - simulated measurements, not secrets
        self.import_kwh = round(self.random.uniform(100, 5000), 3)

    def values(self) -> dict[str, Any]:
        hour = time.localtime().tm_hour + time.localtime().tm_min / 60
        if self.reading_type == "environment":
            temperature = 20 + 2 * math.sin(hour / 24 * 2 * math.pi) + self.random.gauss(0, 0.2)
            return {
                "temperature_c": {"value": round(temperature, 2), "unit": "Cel"},
                "humidity_pct": {"value": round(self.random.uniform(35, 55), 1), "unit": "%"},
            }
        power = max(0.0, 300 + self.random.gauss(0, 50))
        self.import_kwh = round(self.import_kwh + power / 3_600_000, 6)
        return {
            "import_kwh": {"value": self.import_kwh, "unit": "kWh"},
            "power_w": {"value": round(power), "unit": "W"},
        }


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _run_device(args: argparse.Namespace, options: dict[str, Any]) -> int:
    key = args.key or args.state / "key.pem"

    def on_ack(ack: dict[str, Any]) -> None:
        if args.quiet:
            return
        if ack.get("status") == "accepted":
            _say(f"reading {ack.get('seq')} accepted (record entry {ack.get('entry')})")
        else:
            _say(f"reading {ack.get('seq')} {ack.get('status')}: {ack.get('reason')}")

    log = None if args.print_did else _say  # --print-did prints the DID alone
    device = Device(
        args.broker, key_path=key, state_dir=args.state, log=log, on_ack=on_ack, **options
    )
    with device:
        if args.print_did:
            print(device.did)
            return 0
        _say(f"device {device.did}")
        _say(f"key {key}, state {args.state / 'device.db'}, seq so far {device.outbox.last_seq}")
        if device.pending():
            _say(f"{device.pending()} readings from an earlier run wait to be sent")
        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            device.start(retry=True)  # without broker or gateway: queue, keep trying
        except AuthRefused as exc:
            _say(f"error: {exc}")
            return 1
        meter = Meter(args.reading_type, device.did)
        interval = 1 / args.rate if args.rate > 0 else 0
        sent = 0
        next_at = time.monotonic()
        try:
            while args.count is None or sent < args.count:
                seq = device.publish_reading(args.reading_type, meter.values())
                sent += 1
                if not args.quiet:
                    _say(f"reading {seq} published ({device.pending()} awaiting ack)")
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
            _say(f"waiting for the acks of {device.pending()} readings")
            done = device.wait_acked(max(args.timeout, 3 * device.ack_timeout))
        except KeyboardInterrupt:
            _say(f"stopping; {device.pending()} readings stay queued in {args.state}")
            return 130
        _say(_summary(device.stats, device.pending()))
        return 0 if done and not device.stats["refused"] else 1


def _run_fleet(args: argparse.Namespace, options: dict[str, Any]) -> int:
    if args.key is not None:
        _say("note: --key is ignored with --fleet; each device has STATE/dev-NNNN/key.pem")
    log = None if args.print_did else _say
    with Fleet(args.fleet, args.broker, state_dir=args.state, log=log, **options) as fleet:
        if args.print_did:
            print("\n".join(fleet.dids))
            return 0
        _say(f"{len(fleet.devices)} devices; their DIDs are in {args.state / 'dids.txt'}")
        signal.signal(signal.SIGTERM, _on_sigterm)
        started = time.monotonic()
        failures = fleet.start(timeout=max(args.timeout, 30.0))
        _say(
            f"{len(fleet.devices) - len(failures)} connected in {time.monotonic() - started:.1f} s"
            + (f", {len(failures)} failed and keep retrying" if failures else "")
        )
        meters = {d.did: Meter(args.reading_type, d.did) for d in fleet.devices}
        interval = 1 / args.rate if args.rate > 0 else 0
        rounds, next_at, report_at = 0, time.monotonic(), time.monotonic() + 5
        try:
            while args.count is None or rounds < args.count:
                fleet.publish_round(args.reading_type, lambda d: meters[d.did].values())
                rounds += 1
                next_at += interval
                if time.monotonic() >= report_at:
                    report_at += 5
                    _say(
                        f"{fleet.connected()} connected; {_summary(fleet.stats(), fleet.pending())}"
                    )
                time.sleep(max(0.0, next_at - time.monotonic()))
            _say(f"waiting for the acks of {fleet.pending()} readings")
            done = fleet.wait_acked(max(args.timeout, 90.0))
        except KeyboardInterrupt:
            _say(f"stopping; {fleet.pending()} readings stay queued")
            return 130
        stats = fleet.stats()
        _say(_summary(stats, fleet.pending()))
        return 0 if done and not stats["refused"] else 1


def _summary(stats: dict[str, int], pending: int) -> str:
    return (
        f"published {stats['published']}, sent {stats['sent']} (+{stats['resent']} again), "
        f"accepted {stats['accepted']}, refused {stats['refused']}, pending {pending}, "
        f"authentications {stats['auths']}"
    )


if __name__ == "__main__":
    sys.exit(main())

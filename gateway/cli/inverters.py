"""``didgw inverter …``: solar inverters over SunSpec Modbus (TCP or RTU), vouched for."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from gateway.cli._base import CommandTree, actor, change_options, open_gateway, print_json


def _spec(args: argparse.Namespace) -> Any:
    from gateway.energy.modbus_link import LinkSpec

    return LinkSpec(args.link, args.unit, args.baud, args.parity).check()


def cmd_inverter_read(args: argparse.Namespace) -> int:
    from gateway.cli._base import load_config
    from gateway.energy import sunspec
    from gateway.transports.modbus import ModbusLink

    spec = _spec(args)
    link = ModbusLink(spec, timeout=args.timeout or load_config(args).inverter.timeout_seconds)
    good = 0
    try:
        layout = sunspec.discover(link.read)
        if not args.json:
            print(
                f"SunSpec at {layout.base}: common model at {layout.common.address}, "
                f"inverter model {layout.inverter.id} at {layout.inverter.address}"
            )
        for i in range(args.count):
            if i:
                time.sleep(args.every)
            nameplate, values = sunspec.poll(link.read, layout)
            good += 1
            if args.json:
                print(json.dumps({**values.as_json(), "nameplate": nameplate.__dict__}), flush=True)
            else:
                print(
                    f"ok  {nameplate.manufacturer} {nameplate.model} serial {nameplate.serial}  "
                    f"power {values.power_w} W  lifetime {values.energy_wh} Wh",
                    flush=True,
                )
    except sunspec.SunSpecRefused as refusal:
        if args.json:
            print(json.dumps({"refused": refusal.reason, "detail": refusal.detail}))
        else:
            print(f"REFUSED ({refusal.reason}): {refusal.detail}")
    finally:
        link.close()
    return 0 if good == args.count else 1


def cmd_inverter_enroll(args: argparse.Namespace) -> int:
    from gateway.energy.inverter import enroll
    from gateway.identity import keystore

    spec = _spec(args)
    with open_gateway(args) as gateway:
        passphrase = keystore.read_passphrase(gateway.config.keys.passphrase_file, os.environ)
        inverter = enroll(
            gateway.db,
            gateway.registry,
            state_dir=gateway.state_dir,
            gateway=gateway.signer(os.environ),
            household=args.household,
            name=args.name,
            spec=spec,
            serial=args.serial,
            actor=actor(args),
            now=time.time(),
            passphrase=passphrase,
        )
    print(f"enrolled inverter {inverter.did} (vouched by this gateway) on {spec.describe()}")
    print(f"bound to {inverter.household}: entry {inverter.binding_entry}")
    print(f"its key: {inverter.key_file}")
    return 0


def cmd_inverter_list(args: argparse.Namespace) -> int:
    from gateway.energy.inverter import inverters, latest_readings

    with open_gateway(args) as gateway:
        rows = []
        for inv in inverters(gateway.db):
            latest = {r.inverter: r for r in latest_readings(gateway.db.conn, inv.household)}
            last = latest.get(inv.did)
            rows.append({**inv.__dict__, "latest": None if last is None else last.__dict__})
    if args.json:
        print_json(rows)
    for row in [] if args.json else rows:
        last = row["latest"]
        now = "no reading yet" if last is None else f"{last['power_w']} W, {last['energy_wh']} Wh"
        print(
            f"{row['did']}  household {row['household']}  {row['link']} unit {row['unit']}  "
            f"serial {row['serial'] or '(first seen)'}  {now}"
        )
    return 0


def _link_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--link", required=True, help="tcp://HOST:PORT (Modbus TCP) or a serial device (RTU)"
    )
    p.add_argument("--unit", type=int, default=1, help="Modbus unit id (default 1)")
    p.add_argument("--baud", type=int, default=9600, help="RTU: baud rate (default 9600)")
    p.add_argument("--parity", default="N", choices=["N", "E", "O"], help="RTU: parity (N)")


def register(tree: CommandTree) -> None:
    group = tree.group("inverter", "solar inverters over SunSpec Modbus (TCP or RTU), vouched for")
    p = tree.command(
        "read",
        cmd_inverter_read,
        "check that an inverter is readable: its SunSpec layout, then its power and energy",
        "didgw inverter read --link tcp://192.168.1.50:502 --unit 1 --count 3",
        group=group,
    )
    _link_options(p)
    p.add_argument("--count", type=int, default=1, help="polls (default 1)")
    p.add_argument("--every", type=float, default=1.0, help="seconds between polls")
    p.add_argument("--timeout", type=float, help="seconds per request ([inverter])")
    p.add_argument("--json", action="store_true", help="one JSON object per poll")
    p = tree.command(
        "enroll",
        cmd_inverter_enroll,
        "give a household's inverter a did:key held by this gateway and bind it on the record",
        "didgw inverter enroll --household did:key:z6Mk... --name Roof "
        "--link tcp://192.168.1.50:502 --unit 1",
        group=group,
    )
    p.add_argument("--household", required=True, metavar="DID")
    p.add_argument("--name", required=True)
    _link_options(p)
    p.add_argument("--serial", help="its serial number (default: the first one read)")
    change_options(p, reason_required=False)
    p = tree.command(
        "list", cmd_inverter_list, "enrolled inverters", "didgw inverter list", group=group
    )
    p.add_argument("--json", action="store_true")

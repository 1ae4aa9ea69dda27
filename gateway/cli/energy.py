"""``didgw meter …`` and ``didgw market …``: the smart meter and the local market."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from gateway.cli._base import CommandTree, actor, change_options, open_gateway, print_json, when
from gateway.energy.variants import VARIANTS


def cmd_meter_read(args: argparse.Namespace) -> int:
    from gateway.energy.dlms_frames import EncryptedSplitter
    from gateway.energy.meter import MeterError, parse_dlms_keys
    from gateway.energy.p1 import P1Splitter, Telegram
    from gateway.energy.variants import VARIANTS
    from gateway.files import read_secret

    splitter: P1Splitter | EncryptedSplitter
    if VARIANTS[args.variant].encrypted:
        if not args.key_file:
            raise MeterError(f"a {args.variant} meter's telegrams need --key-file")
        data = read_secret(args.key_file, "meter key file", MeterError, max_bytes=1024)
        splitter = EncryptedSplitter(args.variant, *parse_dlms_keys(data, args.variant))
    else:
        splitter = P1Splitter(variant=args.variant)
    shown = 0

    def show(chunk: bytes) -> None:
        nonlocal shown
        for item in splitter.feed(chunk):
            shown += 1
            if isinstance(item, Telegram):
                if args.json:
                    print(json.dumps(item.as_json()), flush=True)
                else:
                    clock = "-" if item.meter_time_ms is None else when(item.meter_time_ms / 1000)
                    print(
                        f"ok  {item.variant}  {item.equipment_id or '-'}  {clock}  "
                        f"import {item.total_import_wh} Wh  export {item.total_export_wh} Wh  "
                        f"power +{item.power_import_w} W / -{item.power_export_w} W",
                        flush=True,
                    )
            elif args.json:
                print(json.dumps({"rejected": item.reason, "detail": item.detail}), flush=True)
            else:
                print(f"REJECTED ({item.reason}): {item.detail}", flush=True)

    if args.file:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        show(data)
    else:
        _read_port(args, show, lambda: shown)
    print(f"summary: {json.dumps(splitter.counts)}", file=sys.stderr)
    return 0 if splitter.counts["telegrams"] else 1


def _read_port(args: argparse.Namespace, show: Any, count: Any) -> None:
    import threading

    from gateway.cli._base import load_config
    from gateway.transports.serial import SerialReader, SerialSettings

    m = load_config(args).meter
    lock = threading.Lock()

    def locked(chunk: bytes) -> None:
        with lock:
            show(chunk)

    reader = SerialReader(
        args.port,
        SerialSettings(m.baudrate, m.bytesize, m.parity, m.stopbits, m.read_timeout, 1.0),
        locked,
    )
    reader.start()
    deadline = time.monotonic() + args.seconds
    try:
        while time.monotonic() < deadline and (not args.count or count() < args.count):
            time.sleep(0.05)
    finally:
        reader.stop()


def cmd_meter_enroll(args: argparse.Namespace) -> int:
    from gateway.energy.meter import enroll
    from gateway.identity import keystore

    with open_gateway(args) as gateway:
        passphrase = keystore.read_passphrase(gateway.config.keys.passphrase_file, os.environ)
        meter = enroll(
            gateway.db,
            gateway.registry,
            state_dir=gateway.state_dir,
            gateway_did=gateway.did,
            household=args.household,
            name=args.name,
            port=args.port,
            actor=actor(args),
            now=time.time(),
            passphrase=passphrase,
            variant=args.variant,
        )
    print(f"enrolled meter {meter.did} (vouched by this gateway) on {meter.port}")
    print(f"its key: {meter.key_file}")
    spec = VARIANTS[args.variant]
    print(f"variant {spec.name}: {spec.title}; its port speaks {spec.serial} (see [meter])")
    if spec.encrypted:
        print(f"its telegrams are encrypted: give it its key with didgw meter key {meter.did}")
    return 0


def cmd_meter_key(args: argparse.Namespace) -> int:
    from gateway.energy.meter import MeterError, set_dlms_keys
    from gateway.files import read_secret

    if args.file:  # refused when group or others may read it, as any secret
        data = read_secret(args.file, "meter key file", MeterError, max_bytes=1024)
    else:
        data = sys.stdin.buffer.read(1025)
        if len(data) > 1024:
            raise MeterError("a meter key is 32 hex digits; standard input holds far more")
    with open_gateway(args) as gateway:
        device = gateway.registry.find(args.meter)
        if device is None or device.kind != "meter":
            raise MeterError(f"{args.meter} is not an enrolled meter")
        variant = str(device.metadata.get("variant", "auto"))
        path = set_dlms_keys(gateway.state_dir, args.meter, variant, data)
    print(f"kept the key of {variant} meter {args.meter} in {path} (0600)")
    print("restart the gateway to read the meter with it")
    return 0


def cmd_meter_list(args: argparse.Namespace) -> int:
    from gateway.energy.meter import meters

    with open_gateway(args) as gateway:
        rows = []
        for m in meters(gateway.db):
            device = gateway.registry.find(m.did)
            variant = device.metadata.get("variant", "auto") if device is not None else "auto"
            rows.append({**m.__dict__, "variant": variant})
    if args.json:
        print_json(rows)
    for row in [] if args.json else rows:
        print(
            f"{row['did']}  household {row['household']}  port {row['port']}  "
            f"variant {row['variant']}"
        )
    return 0


def _market(gateway: Any) -> Any:
    from gateway.market.service import Market
    from gateway.service import market_settings

    settings = market_settings(gateway.config)
    return Market(gateway.db, gateway.registry, gateway.resolver, None, settings)


def _interval(text: str | None, interval_ms: int, *, default_next: bool) -> int | None:
    from datetime import datetime

    from gateway.errors import DidgwError

    now = int(time.time() * 1000)
    current = now - now % interval_ms
    if text is None:
        return current + interval_ms if default_next else None
    if text == "next":
        return current + interval_ms
    if text.lstrip("+").isdigit() and text.startswith("+"):
        return current + int(text[1:]) * interval_ms
    if text.isdigit():
        return int(text)
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        raise DidgwError(
            f"interval {text!r}: give 'next', '+N' (N intervals ahead), Unix ms or ISO 8601"
        ) from None


def _order(side: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        from gateway.identity import keystore
        from gateway.identity.signing import Signer, sign_jws
        from gateway.market.orders import ORDER_TYP

        passphrase = keystore.read_passphrase("", os.environ)
        signer = Signer.for_did_key(keystore.load_private_key(Path(args.key), passphrase))
        with open_gateway(args) as gateway:
            market = _market(gateway)
            interval_ms = market.settings.interval_ms
            now = int(time.time() * 1000)
            body = {
                "did": signer.did,
                "seq": args.seq or now,
                "ts": now,
                "side": side,
                "interval": _interval(args.interval, interval_ms, default_next=True),
                "wh": args.wh,
                "price": args.price,
            }
            token = sign_jws(json.dumps(body).encode(), signer, headers={"typ": ORDER_TYP})
            _, answer = market.submit(token.encode(), now, topic_did=signer.did)
        if answer["status"] != "accepted":
            print(f"didgw: order refused: {answer['reason']}", file=sys.stderr)
            return 1
        print(
            f"{side} order {body['seq']} for interval {body['interval']} accepted as entry "
            f"{answer['entry']}"
        )
        return 0

    return run


def cmd_market_book(args: argparse.Namespace) -> int:
    with open_gateway(args) as gateway:
        market = _market(gateway)
        interval = _interval(args.interval, market.settings.interval_ms, default_next=True) or 0
        book = market.book(interval)
    rows = [
        {"household": o.id.household, "seq": o.id.seq, "side": o.side, "wh": o.wh, "price": o.price}
        for o in sorted(book, key=lambda o: (o.side, o.price, o.id))
    ]
    if args.json:
        print_json({"interval": interval, "orders": rows})
        return 0
    print(f"interval {interval} ({when(interval / 1000)}): {len(rows)} orders")
    for r in rows:
        print(
            f"  {r['side']:4}  {r['wh']:>8} Wh  at {r['price']:>5} m€/kWh  "
            f"{r['household']}#{r['seq']}"
        )
    return 0


def cmd_market_trades(args: argparse.Namespace) -> int:
    with open_gateway(args) as gateway:
        market = _market(gateway)
        interval = _interval(args.interval, market.settings.interval_ms, default_next=False)
        trades = market.trades(interval)
    if args.json:
        print_json(trades)
        return 0
    for t in trades:
        print(
            f"interval {t['interval']} #{t['index']}: {t['wh']} Wh at {t['price']} m€/kWh  "
            f"{t['seller']}#{t['offer_seq']} -> {t['buyer']}#{t['bid_seq']}  "
            f"(entry {t['entry']})"
        )
    return 0


def cmd_market_statement(args: argparse.Namespace) -> int:
    with open_gateway(args) as gateway:
        market = _market(gateway)
        interval = _interval(args.interval, market.settings.interval_ms, default_next=False)
        statements = market.statements(args.household, interval)
    if args.json:
        print_json(statements)
        return 0
    for s in statements:
        print(
            f"interval {s['interval']} (entry {s['entry']}): sold {s['sold_wh']} Wh, bought "
            f"{s['bought_wh']} Wh at {s['price']} m€/kWh; metered export {s['export_wh']} Wh, "
            f"import {s['import_wh']} Wh; net {s['net'] / 1e6:+.6f} EUR "
            f"(market {s['market']}, shortfall {s['shortfall']}, feed-in {s['feed_in']}, "
            f"grid import {s['grid_import']}, unused {s['unused']} µ€)"
        )
    return 0


def register(tree: CommandTree) -> None:
    meter = tree.group(
        "meter", "smart meters on a serial line (DSMR P1, every variant), vouched for"
    )
    p = tree.command(
        "read",
        cmd_meter_read,
        "check that a meter is readable: print each telegram, or why it was rejected",
        "didgw meter read --port /dev/ttyUSB0 --count 5",
        group=meter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--port", help="serial device (settings from [meter])")
    source.add_argument("--file", help="file of raw telegrams ('-': standard input)")
    p.add_argument("--json", action="store_true", help="one JSON object per telegram")
    p.add_argument("--count", type=int, default=0, help="stop after N telegrams (port)")
    p.add_argument("--seconds", type=float, default=10.0, help="stop after S seconds (port)")
    p.add_argument(
        "--variant", default="auto", choices=list(VARIANTS), help="the meter's DSMR variant"
    )
    p.add_argument("--key-file", help="an encrypted meter's key file (0600; see meter key)")
    p = tree.command(
        "enroll",
        cmd_meter_enroll,
        "give a household's meter a did:key held by this gateway, registered as vouched",
        "didgw meter enroll --household did:key:z6Mk... --name 'P1 meter' --port /dev/ttyUSB0",
        group=meter,
    )
    p.add_argument("--household", required=True, metavar="DID")
    p.add_argument("--name", required=True)
    p.add_argument("--port", required=True, help="serial device the meter is on")
    p.add_argument(
        "--variant",
        default="auto",
        choices=list(VARIANTS),
        help="the meter's DSMR variant (docs/market.md); auto: from its telegrams, CRC required",
    )
    change_options(p, reason_required=False)
    p = tree.command(
        "key",
        cmd_meter_key,
        "keep an encrypted meter's key (Smarty, T210-D-R), read from a 0600 file or stdin",
        "didgw meter key did:key:z6Mk... --file smarty.key",
        group=meter,
    )
    p.add_argument("meter", metavar="DID", help="the enrolled meter")
    p.add_argument("--file", help="file with the key (32 hex digits; never on the command line)")
    p = tree.command("list", cmd_meter_list, "enrolled meters", "didgw meter list", group=meter)
    p.add_argument("--json", action="store_true")

    market = tree.group("market", "the local solar-surplus market")
    for side, verb in (("sell", "offer"), ("buy", "bid")):
        p = tree.command(
            verb,
            _order(side),
            f"sign and place a {side} order with the household's own key",
            f"didgw market {verb} --key house.pem --wh 1500 --price 120 --interval next",
            group=market,
        )
        p.add_argument("--key", required=True, help="the household's Ed25519 PKCS#8 PEM key")
        p.add_argument("--wh", type=int, required=True, help="quantity in Wh")
        p.add_argument("--price", type=int, required=True, help="limit in milli-euro per kWh")
        p.add_argument("--interval", help="next (default), +N, Unix ms or ISO 8601 start")
        p.add_argument("--seq", type=int, help="order number (default: now in ms)")
    p = tree.command(
        "book",
        cmd_market_book,
        "the orders of an interval",
        "didgw market book --interval next",
        group=market,
    )
    p.add_argument("--interval")
    p.add_argument("--json", action="store_true")
    p = tree.command(
        "trades",
        cmd_market_trades,
        "trades (of one interval)",
        "didgw market trades",
        group=market,
    )
    p.add_argument("--interval")
    p.add_argument("--json", action="store_true")
    p = tree.command(
        "statement",
        cmd_market_statement,
        "a household's settlement statements",
        "didgw market statement did:key:z6Mk... --interval 1700000000000",
        group=market,
    )
    p.add_argument("household", metavar="HOUSEHOLD")
    p.add_argument("--interval")
    p.add_argument("--json", action="store_true")

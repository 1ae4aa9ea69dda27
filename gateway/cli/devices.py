"""``didgw device …``: the device registry, the facility manager's job."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from gateway.cli._base import (
    CommandTree,
    Handler,
    actor,
    change_options,
    open_gateway,
    print_json,
    when,
)

if TYPE_CHECKING:
    from gateway.registry import AuditRecord, Device


def _print_device(device: Device, history: list[AuditRecord]) -> None:
    rows = [
        ("DID", device.did),
        ("name", device.name),
        ("kind", device.kind),
        ("status", device.status.value),
        ("owner", device.owner or "-"),
        ("topics", ", ".join(device.topics) or "-"),
        ("capabilities", ", ".join(device.capabilities) or "-"),
        ("metadata", ", ".join(f"{k}={v}" for k, v in device.metadata.items()) or "-"),
        ("registered", when(device.created_at)),
        ("changed", when(device.updated_at)),
    ]
    if device.replaces:
        rows.append(("replaces", device.replaces))
    if device.replaced_by:
        rows.append(("replaced by", device.replaced_by))
    for label, value in rows:
        print(f"{label:>13}: {value}")
    print("      history:")
    for record in history:
        print(f"  {when(record.ts)}  {record.action:<9} by {record.actor}: {record.reason}")


def cmd_device_register(args: argparse.Namespace) -> int:
    from gateway.errors import RegistryError

    metadata: dict[str, str] = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RegistryError(f"--meta takes KEY=VALUE, got {item!r}")
        metadata[key] = value
    with open_gateway(args) as gateway:
        device = gateway.registry.register(
            args.did,
            name=args.name,
            kind=args.kind,
            owner=args.owner,
            topics=args.topic,
            capabilities=args.capability,
            metadata=metadata,
            actor=actor(args),
            reason=args.reason or "registered",
            now=time.time(),
        )
    print(f"registered {device.did} as {device.name!r} ({device.kind}, {device.status.value})")
    return 0


def cmd_device_import(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from gateway.errors import RegistryError
    from gateway.registry.bulk import MAX_FILE_BYTES, ImportRefused, register_file

    path = Path(args.file)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # one byte more tells the parser it is too big
    except OSError as exc:
        raise RegistryError(f"cannot read {path}: {exc.strerror}") from None
    with open_gateway(args) as gateway:
        try:
            parsed, devices = register_file(
                gateway.registry,
                data,
                actor=actor(args),
                reason=args.reason or "imported",
                now=time.time(),
                dry_run=args.dry_run,
            )
        except ImportRefused as refused:
            found = refused.parsed
            for problem in found.problems:
                print(f"{path}:{problem}", file=sys.stderr)
            hidden = found.problem_count - len(found.problems)
            if hidden:
                print(f"{path}: … and {hidden} more problems", file=sys.stderr)
            print(
                f"didgw: error: {found.problem_count} problem(s) in {path}; nothing was registered",
                file=sys.stderr,
            )
            return 1
    if args.dry_run:
        print(f"{path}: {len(parsed.rows)} devices, no problems (dry run: nothing registered)")
    else:
        print(f"registered {len(devices)} devices from {path} (sha256 {parsed.digest})")
    return 0


def cmd_device_list(args: argparse.Namespace) -> int:
    from gateway.registry import Status

    with open_gateway(args) as gateway:
        devices = gateway.registry.devices(Status(args.status) if args.status else None)
    if args.json:
        print_json([d.to_json() for d in devices])
        return 0
    if not devices:
        print("no devices registered" + (f" with status {args.status}" if args.status else ""))
        return 0
    print(f"{'STATUS':<10} {'KIND':<10} {'NAME':<24} DID")
    for d in devices:
        print(f"{d.status.value:<10} {d.kind:<10} {d.name[:24]:<24} {d.did}")
    return 0


def cmd_device_show(args: argparse.Namespace) -> int:
    with open_gateway(args) as gateway:
        device = gateway.registry.get(args.did)
        history = gateway.registry.history(args.did)
    if args.json:
        print_json({**device.to_json(), "history": [r.to_json() for r in history]})
    else:
        _print_device(device, history)
    return 0


def _transition(action: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        with open_gateway(args) as gateway:
            device = getattr(gateway.registry, action)(
                args.did, actor=actor(args), reason=args.reason, now=time.time()
            )
        print(f"{device.did}: {device.status.value}")
        return 0

    return run


def cmd_device_rotate(args: argparse.Namespace) -> int:
    with open_gateway(args) as gateway:
        device = gateway.registry.rotate(
            args.old_did, args.new_did, actor=actor(args), reason=args.reason, now=time.time()
        )
    print(f"{args.old_did}: revoked, replaced by {device.did}")
    print(f"{device.did}: {device.status.value} as {device.name!r}")
    return 0


def register(tree: CommandTree) -> None:
    device = tree.group("device", "the device registry: register, inspect, suspend, revoke, rotate")
    p = tree.command(
        "register",
        cmd_device_register,
        "register a device by its DID",
        "didgw device register did:key:z6Mk... --name 'roof PV inverter' --kind inverter "
        "--owner did:key:z6Mk... --topic site/roof/pv --meta vendor=acme",
        group=device,
    )
    p.add_argument("did", metavar="DID")
    p.add_argument("--name", required=True, help="a name people recognise")
    p.add_argument(
        "--kind",
        required=True,
        help="sensor, meter, inverter, battery, charger, actuator, controller, household or other",
    )
    p.add_argument("--owner", metavar="DID", help="DID of the person or household that owns it")
    p.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="FILTER",
        help="MQTT topic filter recorded with the device, for people and integrations to "
        "read (repeatable); the broker grants a device only its own topics whatever this says",
    )
    p.add_argument(
        "--capability",
        action="append",
        default=[],
        metavar="NAME",
        help="what it can do, e.g. reading, setpoint (repeatable)",
    )
    p.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="free metadata (repeatable)",
    )
    change_options(p, reason_required=False)
    p = tree.command(
        "import",
        cmd_device_import,
        "register every device of a CSV or JSON file, or none if any row has a problem",
        "didgw device import devices.csv --dry-run",
        group=device,
    )
    p.add_argument(
        "file",
        metavar="FILE",
        help="CSV with a header row (did, name, kind; optional owner, metadata as "
        "key=value;key=value or a JSON object) or a JSON array of such objects",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="only check the file and print its problems"
    )
    change_options(p, reason_required=False)
    p = tree.command(
        "list",
        cmd_device_list,
        "list registered devices",
        "didgw device list --status active --json",
        group=device,
    )
    p.add_argument("--status", choices=["active", "suspended", "revoked"])
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p = tree.command(
        "show",
        cmd_device_show,
        "show one device and its audit trail",
        "didgw device show did:key:z6Mk...",
        group=device,
    )
    p.add_argument("did", metavar="DID")
    p.add_argument("--json", action="store_true", help="print JSON")
    for action, text in (
        ("suspend", "stop a device temporarily"),
        ("resume", "let a suspended device connect again"),
        ("revoke", "remove a device for good; its DID can never come back"),
    ):
        p = tree.command(
            action,
            _transition(action),
            text,
            f"didgw device {action} did:key:z6Mk... --reason 'meter replaced'",
            group=device,
        )
        p.add_argument("did", metavar="DID")
        change_options(p, reason_required=True)
    p = tree.command(
        "rotate",
        cmd_device_rotate,
        "move a device to a new DID (new key); the old DID is revoked and linked",
        "didgw device rotate did:key:z6MkOLD... did:key:z6MkNEW... --reason 'key rotation'",
        group=device,
    )
    p.add_argument("old_did", metavar="OLD_DID")
    p.add_argument("new_did", metavar="NEW_DID")
    change_options(p, reason_required=True)

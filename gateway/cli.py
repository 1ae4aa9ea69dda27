"""The ``didgw`` command: each subcommand is a few lines over a library call.

Start-up must stay fast (``didgw --help`` well under 0.3 s on a Pi), so this
module imports only the standard library at the top; each command imports
what it needs when it runs. Exit status: 0 done, 1 refused (the message says
why), 2 usage error.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.registry import AuditRecord, Device
    from gateway.service import Gateway

Handler = Callable[[argparse.Namespace], int]

DESCRIPTION = """\
didgw: DID authentication gateway for the IoT edge.

Devices and people are identified by DIDs; the gateway keeps the registry of
who may connect and checks every signature they send.
"""


# -- helpers ---------------------------------------------------------------


def _config(args: argparse.Namespace) -> Config:
    from gateway.config import find_config, load_config

    return load_config(find_config(args.config, os.environ))


def _state_dir(args: argparse.Namespace, config: Config) -> Path:
    from gateway.config import state_dir

    return state_dir(config, args.state_dir, os.environ)


def _open(args: argparse.Namespace) -> Gateway:
    from gateway.service import open_gateway

    config = _config(args)
    return open_gateway(config, _state_dir(args, config))


def _actor(args: argparse.Namespace) -> str:
    return str(args.by or f"local:{getpass.getuser()}")


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


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
        ("registered", _when(device.created_at)),
        ("changed", _when(device.updated_at)),
    ]
    if device.replaces:
        rows.append(("replaces", device.replaces))
    if device.replaced_by:
        rows.append(("replaced by", device.replaced_by))
    for label, value in rows:
        print(f"{label:>13}: {value}")
    print("      history:")
    for record in history:
        print(f"  {_when(record.ts)}  {record.action:<9} by {record.actor}: {record.reason}")


# -- commands --------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from gateway.service import init_gateway

    config = _config(args)
    result = init_gateway(config, _state_dir(args, config), os.environ)
    if result.created_key:
        how = (
            "encrypted with the configured passphrase"
            if result.encrypted
            else "unencrypted, mode 0600"
        )
        print(f"Initialised gateway in {result.state_dir}")
        print(f"Gateway key: {result.state_dir / 'keys' / 'gateway.pem'} ({how})")
    else:
        print(f"Gateway already initialised in {result.state_dir}; ", end="")
        print("existing key kept, not overwritten.")
    if result.migrations:
        print(f"Database schema: applied {', '.join(result.migrations)}")
    print(f"Gateway DID: {result.did}")
    return 0


def cmd_did_new(args: argparse.Namespace) -> int:
    from gateway.identity import keystore
    from gateway.identity.signing import Signer

    config = _config(args)
    passphrase = keystore.read_passphrase(
        args.passphrase_file or config.keys.passphrase_file, os.environ
    )
    key = keystore.generate_key()
    signer = Signer.for_did_key(key)
    out = Path(args.out or f"{signer.kid.rpartition('#')[2]}.pem")
    keystore.write_private_key(out, key, passphrase)
    if args.json:
        print(json.dumps({"did": signer.did, "kid": signer.kid, "key_file": str(out)}))
    else:
        print(signer.did)
        print(
            f"key written to {out} (mode 0600{', encrypted' if passphrase else ''})",
            file=sys.stderr,
        )
    return 0


def cmd_did_resolve(args: argparse.Namespace) -> int:
    from gateway.identity.document import check_did_syntax

    if check_did_syntax(args.did) == "key":
        from gateway.identity import offline_resolver

        resolution = offline_resolver().resolve(args.did, now=time.time())
    else:
        from gateway.errors import StateError
        from gateway.service import build_resolver

        try:  # an initialised gateway keeps what it fetched; otherwise resolve without a cache
            gateway = _open(args)
        except StateError:
            resolution = build_resolver(_config(args)).resolve(args.did, now=time.time())
        else:
            try:
                resolution = gateway.resolver.resolve(args.did, now=time.time())
            finally:
                gateway.close()
    if args.json:
        _print_json(
            {
                "didDocument": resolution.document,
                "didResolutionMetadata": resolution.metadata(),
                "didDocumentMetadata": {},
            }
        )
    else:
        _print_json(resolution.document)
        if resolution.stale:
            print(
                f"note: {args.did} served from a stale cache (source unreachable)", file=sys.stderr
            )
    return 0


def cmd_device_register(args: argparse.Namespace) -> int:
    from gateway.errors import RegistryError

    metadata: dict[str, str] = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RegistryError(f"--meta takes KEY=VALUE, got {item!r}")
        metadata[key] = value
    gateway = _open(args)
    try:
        device = gateway.registry.register(
            args.did,
            name=args.name,
            kind=args.kind,
            owner=args.owner,
            topics=args.topic,
            capabilities=args.capability,
            metadata=metadata,
            actor=_actor(args),
            reason=args.reason or "registered",
            now=time.time(),
        )
    finally:
        gateway.close()
    print(f"registered {device.did} as {device.name!r} ({device.kind}, {device.status.value})")
    return 0


def cmd_device_list(args: argparse.Namespace) -> int:
    from gateway.registry import Status

    gateway = _open(args)
    try:
        devices = gateway.registry.devices(Status(args.status) if args.status else None)
    finally:
        gateway.close()
    if args.json:
        _print_json([d.to_json() for d in devices])
        return 0
    if not devices:
        print("no devices registered" + (f" with status {args.status}" if args.status else ""))
        return 0
    print(f"{'STATUS':<10} {'KIND':<10} {'NAME':<24} DID")
    for d in devices:
        print(f"{d.status.value:<10} {d.kind:<10} {d.name[:24]:<24} {d.did}")
    return 0


def cmd_device_show(args: argparse.Namespace) -> int:
    gateway = _open(args)
    try:
        device = gateway.registry.get(args.did)
        history = gateway.registry.history(args.did)
    finally:
        gateway.close()
    if args.json:
        _print_json({**device.to_json(), "history": [r.to_json() for r in history]})
    else:
        _print_device(device, history)
    return 0


def _transition(action: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        gateway = _open(args)
        try:
            device = getattr(gateway.registry, action)(
                args.did, actor=_actor(args), reason=args.reason, now=time.time()
            )
        finally:
            gateway.close()
        print(f"{device.did}: {device.status.value}")
        return 0

    return run


def cmd_device_rotate(args: argparse.Namespace) -> int:
    gateway = _open(args)
    try:
        device = gateway.registry.rotate(
            args.old_did, args.new_did, actor=_actor(args), reason=args.reason, now=time.time()
        )
    finally:
        gateway.close()
    print(f"{args.old_did}: revoked, replaced by {device.did}")
    print(f"{device.did}: {device.status.value} as {device.name!r}")
    return 0


def cmd_config_example(args: argparse.Namespace) -> int:
    from gateway.config import render_example

    print(render_example(), end="")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    config = _config(args)
    print(f"ok: {config.source}")
    print(f"state directory: {_state_dir(args, config)}")
    return 0


# -- parser ----------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("gateway options")
    group.add_argument(
        "--state-dir",
        metavar="DIR",
        help="state directory (default: $DIDGW_STATE_DIR, [gateway] state_dir, "
        "$STATE_DIRECTORY, ~/.local/state/didgw)",
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $DIDGW_CONFIG, $CONFIGURATION_DIRECTORY/gateway.toml, "
        "/etc/didgw/gateway.toml, else built-in defaults)",
    )
    return common


def _change_options(parser: argparse.ArgumentParser, *, reason_required: bool) -> None:
    parser.add_argument("--reason", required=reason_required, help="why (kept in the audit trail)")
    parser.add_argument("--by", metavar="WHO", help="who makes the change (default: local:<user>)")


def build_parser() -> argparse.ArgumentParser:
    from gateway import __version__

    common = _common()
    parser = argparse.ArgumentParser(
        prog="didgw",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example:\n  didgw init && didgw device list\n\n"
        "Run 'didgw COMMAND --help' for each command.",
    )
    parser.add_argument("--version", action="version", version=f"didgw {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        handler: Handler,
        help_text: str,
        example: str,
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common],
            epilog=f"Example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(func=handler)
        return sub

    def add_group(name: str, help_text: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        return sub.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)

    add(
        commands,
        "init",
        cmd_init,
        "create the state directory, the gateway key and DID, and the database",
        "didgw init --state-dir /var/lib/didgw",
    )

    did = add_group("did", "make and resolve DIDs")
    p = add(
        did,
        "new",
        cmd_did_new,
        "generate an Ed25519 did:key; the private key goes to a new 0600 file",
        "didgw did new -o sensor-7.pem",
    )
    p.add_argument(
        "-o", "--out", metavar="FILE", help="key file to create (default: <multikey>.pem)"
    )
    p.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help="encrypt the key with the passphrase in FILE (or set $DIDGW_KEY_PASSPHRASE)",
    )
    p.add_argument("--json", action="store_true", help="print did, kid and key file as JSON")
    p = add(
        did,
        "resolve",
        cmd_did_resolve,
        "print the DID document of a DID (did:key, did:web, others via a universal resolver)",
        "didgw did resolve did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
    )
    p.add_argument("did", metavar="DID")
    p.add_argument(
        "--json",
        action="store_true",
        help="print a DID resolution result (document and resolution metadata)",
    )

    device = add_group("device", "the device registry: register, inspect, suspend, revoke, rotate")
    p = add(
        device,
        "register",
        cmd_device_register,
        "register a device by its DID",
        "didgw device register did:key:z6Mk... --name 'roof PV inverter' --kind inverter "
        "--owner did:key:z6Mk... --topic site/roof/pv --meta vendor=acme",
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
        help="MQTT topic filter it may use (repeatable)",
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
    _change_options(p, reason_required=False)
    p = add(
        device,
        "list",
        cmd_device_list,
        "list registered devices",
        "didgw device list --status active --json",
    )
    p.add_argument("--status", choices=["active", "suspended", "revoked"])
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p = add(
        device,
        "show",
        cmd_device_show,
        "show one device and its audit trail",
        "didgw device show did:key:z6Mk...",
    )
    p.add_argument("did", metavar="DID")
    p.add_argument("--json", action="store_true", help="print JSON")
    for action, text in (
        ("suspend", "stop a device temporarily"),
        ("resume", "let a suspended device connect again"),
        ("revoke", "remove a device for good; its DID can never come back"),
    ):
        p = add(
            device,
            action,
            _transition(action),
            text,
            f"didgw device {action} did:key:z6Mk... --reason 'meter replaced'",
        )
        p.add_argument("did", metavar="DID")
        _change_options(p, reason_required=True)
    p = add(
        device,
        "rotate",
        cmd_device_rotate,
        "move a device to a new DID (new key); the old DID is revoked and linked",
        "didgw device rotate did:key:z6MkOLD... did:key:z6MkNEW... --reason 'key rotation'",
    )
    p.add_argument("old_did", metavar="OLD_DID")
    p.add_argument("new_did", metavar="NEW_DID")
    _change_options(p, reason_required=True)

    config = add_group("config", "the configuration file")
    add(
        config,
        "example",
        cmd_config_example,
        "print a config file listing every key with its default",
        "didgw config example > /etc/didgw/gateway.toml",
    )
    add(
        config,
        "check",
        cmd_config_check,
        "validate the config file and say which one is used",
        "didgw config check --config /etc/didgw/gateway.toml",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from gateway.errors import DidgwError

    try:
        return int(args.func(args))
    except DidgwError as exc:
        print(f"didgw: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0

"""``didgw tls …``: the broker's TLS certificate, from the gateway's own certificate authority."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli._base import CommandTree, load_config, print_json, state_dir, when

if TYPE_CHECKING:
    from gateway.ops.tls import Issued


def _passphrase(args: argparse.Namespace) -> bytes | None:
    from gateway.identity import keystore

    return keystore.read_passphrase(load_config(args).keys.passphrase_file, os.environ)


def _report(issued: Issued) -> None:
    from gateway.identity import certs

    if issued.cert is None:  # not reached: with no certificate, a new one is issued
        return
    until = when(issued.cert.not_valid_after_utc.timestamp())
    if issued.reason is None:
        print(f"not due: the broker certificate is valid until {until}")
        return
    print(f"issued the broker certificate ({issued.reason})")
    print(f"  for: {certs.names_of(issued.cert)}")
    print(f"  valid until: {until}")
    print(f"  written to: {issued.directory / 'broker.crt'}, {issued.directory / 'broker.key'}")
    print(f"  devices trust the CA with SHA-256 fingerprint {issued.ca_fingerprint}")
    if issued.reloaded is not None:
        print(f"  mosquitto (pid {issued.reloaded}) told to load it (SIGHUP)")
    else:
        print(
            "  mosquitto was not told ([tls] broker_pid_file is empty): systemctl reload mosquitto",
            file=sys.stderr,
        )


def cmd_tls_issue(args: argparse.Namespace) -> int:
    from gateway.errors import ConfigError
    from gateway.identity import certs
    from gateway.ops.tls import issue_broker

    config = load_config(args)
    if not args.name and not args.ip:
        raise ConfigError(
            "give the names (--name) or addresses (--ip) devices use to reach the broker; "
            "localhost, 127.0.0.1 and ::1 are added to them"
        )
    names = certs.parse_names(args.name, args.ip)
    issued = issue_broker(
        config, state_dir(args, config), _passphrase(args), now=time.time(), names=names, force=True
    )
    _report(issued)
    return 0


def cmd_tls_renew(args: argparse.Namespace) -> int:
    from gateway.ops.tls import issue_broker

    config = load_config(args)
    issued = issue_broker(
        config, state_dir(args, config), _passphrase(args), now=time.time(), force=args.force
    )
    _report(issued)
    return 0


def cmd_tls_show(args: argparse.Namespace) -> int:
    from gateway.identity import certs
    from gateway.ops.tls import broker_dir, ca_cert_path, read_broker_cert, read_ca_cert

    config = load_config(args)
    state = state_dir(args, config)
    ca = read_ca_cert(state)
    if args.pem:
        sys.stdout.buffer.write(certs.to_pem(ca))
        return 0
    broker = read_broker_cert(config, state)
    renew_from = None
    if broker is not None:
        renew_from = broker.not_valid_after_utc.timestamp() - config.tls.renew_before_days * 86400
    info: dict[str, Any] = {
        "ca_file": str(ca_cert_path(state)),
        "ca_sha256": certs.fingerprint(ca),
        "ca_valid_until": when(ca.not_valid_after_utc.timestamp()),
        "broker_file": str(broker_dir(config, state) / "broker.crt"),
        "broker_names": str(certs.names_of(broker)) if broker is not None else None,
        "broker_valid_until": (
            when(broker.not_valid_after_utc.timestamp()) if broker is not None else None
        ),
        "broker_renewal_from": when(renew_from),
        "broker_issued_by_ca": certs.issued_by(broker, ca) if broker is not None else None,
    }
    if args.json:
        print_json(info)
        return 0
    print(f"certificate authority: {info['ca_file']} (valid until {info['ca_valid_until']})")
    print(f"  SHA-256 fingerprint: {info['ca_sha256']}")
    print("  devices trust this: give them the file, or the fingerprint (--tls-pin)")
    if broker is None:
        print(f"broker certificate: none yet in {Path(info['broker_file']).parent}")
        print("  issue it: didgw tls issue --name NAME --ip ADDRESS")
        return 0
    print(f"broker certificate: {info['broker_file']}")
    print(f"  for: {info['broker_names']}")
    print(
        f"  valid until: {info['broker_valid_until']} (renewed from {info['broker_renewal_from']})"
    )
    if not info["broker_issued_by_ca"]:
        print("  NOT issued by this certificate authority: devices will refuse it", file=sys.stderr)
        return 1
    return 0


def register(tree: CommandTree) -> None:
    tls = tree.group(
        "tls", "the broker's TLS certificate, from the gateway's certificate authority"
    )
    p = tree.command(
        "issue",
        cmd_tls_issue,
        "issue the broker's certificate for the names and addresses devices use to reach it "
        "(loopback is always added), signed by the gateway's certificate authority",
        "didgw tls issue --name gateway.local --ip 192.168.1.10",
        group=tls,
        on_state=False,  # root: it writes the broker's files, as the broker's user
    )
    p.add_argument(
        "--name", action="append", default=[], metavar="HOST", help="a DNS name (repeat for more)"
    )
    p.add_argument(
        "--ip", action="append", default=[], metavar="ADDRESS", help="an IP address (repeat)"
    )
    p = tree.command(
        "renew",
        cmd_tls_renew,
        "issue the broker's certificate again, same names, when it expires within [tls] "
        "renew_before_days (systemd/didgw-tls-renew.timer runs this daily)",
        "didgw tls renew --config /etc/didgw/gateway.toml",
        group=tls,
        on_state=False,  # root: it writes the broker's files, as the broker's user
    )
    p.add_argument("--force", action="store_true", help="renew now, whenever it expires")
    p = tree.command(
        "show",
        cmd_tls_show,
        "print the certificate authority's SHA-256 fingerprint (what devices pin) and the "
        "broker certificate's names and expiry",
        "didgw tls show",
        group=tls,
        on_state=False,  # root: it writes the broker's files, as the broker's user
    )
    p.add_argument("--pem", action="store_true", help="print the CA certificate (PEM) only")
    p.add_argument("--json", action="store_true", help="print the same as JSON")

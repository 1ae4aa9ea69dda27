"""``didgw init`` and ``didgw did …``: the gateway's own identity, and DIDs for devices."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli._base import CommandTree, load_config, open_gateway, print_json, state_dir

if TYPE_CHECKING:
    from gateway.config import Config


def cmd_init(args: argparse.Namespace) -> int:
    from gateway.service import init_gateway

    config = load_config(args)
    result = init_gateway(config, state_dir(args, config), os.environ)
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
    if result.created_ledger_key:
        print(f"Ledger account key: {result.state_dir / 'keys' / 'ledger.pem'} (created)")
    print(f"Ledger account: {result.ledger_address}")
    _init_tls(config, result.state_dir, result.did)
    print(f"Gateway DID: {result.did}")  # last: scripts read it from the end
    return 0


def _init_tls(config: Config, state: Path, did: str) -> None:
    """The TLS certificate authority devices pin (made once, never replaced)."""
    from gateway.identity import certs, keystore
    from gateway.ops.tls import CA_KEY_FILE, ensure_ca

    passphrase = keystore.read_passphrase(config.keys.passphrase_file, os.environ)
    ca, created = ensure_ca(state, passphrase, common_name=f"didgw CA {did[-12:]}", now=time.time())
    if created:
        print(f"TLS certificate authority: {state / CA_KEY_FILE} (created)")
    print(f"TLS CA SHA-256 fingerprint: {certs.fingerprint(ca)}")


def cmd_did_new(args: argparse.Namespace) -> int:
    from gateway.identity import keystore
    from gateway.identity.signing import Signer

    config = load_config(args)
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
        encrypted = ", encrypted" if passphrase else ""
        print(f"key written to {out} (mode 0600{encrypted})", file=sys.stderr)
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
            gateway = open_gateway(args)
        except StateError:
            resolution = build_resolver(load_config(args)).resolve(args.did, now=time.time())
        else:
            try:
                resolution = gateway.resolver.resolve(args.did, now=time.time())
            finally:
                gateway.close()
    if args.json:
        print_json(
            {
                "didDocument": resolution.document,
                "didResolutionMetadata": resolution.metadata(),
                "didDocumentMetadata": {},
            }
        )
    else:
        print_json(resolution.document)
        if resolution.stale:
            print(
                f"note: {args.did} served from a stale cache (source unreachable)", file=sys.stderr
            )
    return 0


def register(tree: CommandTree) -> None:
    tree.command(
        "init",
        cmd_init,
        "create the state directory, the gateway key and DID, the database, and the TLS "
        "certificate authority that devices pin",
        "didgw init --state-dir /var/lib/didgw",
    )
    did = tree.group("did", "make and resolve DIDs")
    p = tree.command(
        "new",
        cmd_did_new,
        "generate an Ed25519 did:key; the private key goes to a new 0600 file",
        "didgw did new -o sensor-7.pem",
        group=did,
        on_state=False,
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
    p = tree.command(
        "resolve",
        cmd_did_resolve,
        "print the DID document of a DID (did:key, did:web, others via a universal resolver)",
        "didgw did resolve did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
        group=did,
    )
    p.add_argument("did", metavar="DID")
    p.add_argument(
        "--json", action="store_true", help="print a DID resolution result (document and metadata)"
    )

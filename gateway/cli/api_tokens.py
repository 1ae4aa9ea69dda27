"""``didgw api-token …``: tokens for the JSON API (docs/api.md): create, list, revoke."""

from __future__ import annotations

import argparse
import sys
import time

from gateway.cli._base import CommandTree, actor, open_gateway, print_json, when

ROLE_HELP = (
    "operator: everything the API offers; facility-manager: the devices, read and change; "
    "reader: everything, read only"
)


def cmd_create(args: argparse.Namespace) -> int:
    import secrets

    from gateway.auth.api_tokens import ApiTokens, parse_duration

    now_ms = int(time.time() * 1000)
    expires = now_ms + parse_duration(args.expires) if args.expires else None
    with open_gateway(args) as gateway:
        secret, token = ApiTokens(gateway.db, gateway_did=gateway.did).create(
            args.name,
            args.role,
            by=actor(args),
            now_ms=now_ms,
            expires_ms=expires,
            random_bytes=secrets.token_bytes,
        )
    until = f", expires {when(expires / 1000)}" if expires else ", does not expire"
    print(
        f"created API token {token.name!r} ({token.role}{until}); it is shown once, below:",
        file=sys.stderr,
    )
    print(secret)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from gateway.auth.api_tokens import ApiTokens

    now_ms = int(time.time() * 1000)
    with open_gateway(args) as gateway:
        tokens = ApiTokens(gateway.db, gateway_did=gateway.did).tokens()
    if args.json:
        print_json([t.to_json(now_ms) for t in tokens])
        return 0
    if not tokens:
        print("no API tokens")
        return 0
    print(f"{'NAME':<20} {'ROLE':<16} {'STATE':<8} {'CREATED':<20} {'EXPIRES':<20} LAST USED")
    for t in tokens:
        expires = when(t.expires_ms / 1000) if t.expires_ms else "never"
        used = when(t.last_used_ms / 1000) if t.last_used_ms else "never"
        print(
            f"{t.name:<20} {t.role:<16} {t.state(now_ms):<8} {when(t.created_ms / 1000):<20} "
            f"{expires:<20} {used}"
        )
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from gateway.auth.api_tokens import ApiTokens

    with open_gateway(args) as gateway:
        token = ApiTokens(gateway.db, gateway_did=gateway.did).revoke(
            args.name, by=actor(args), now_ms=int(time.time() * 1000)
        )
    print(f"revoked API token {token.name!r} ({token.role})")
    return 0


def register(tree: CommandTree) -> None:
    group = tree.group("api-token", "tokens for the JSON API: create, list, revoke")
    p = tree.command(
        "create",
        cmd_create,
        "create a token and print it once (only its hash is kept)",
        "didgw api-token create billing --role reader --expires 90d",
        group=group,
    )
    p.add_argument("name", metavar="NAME", help="a name for the token (unique, never reused)")
    p.add_argument(
        "--role", required=True, choices=["operator", "facility-manager", "reader"], help=ROLE_HELP
    )
    p.add_argument("--expires", metavar="DURATION", help="e.g. 90d, 12h, 2w (default: never)")
    p.add_argument("--by", metavar="WHO", help="who makes the change (default: local:<user>)")
    p = tree.command(
        "list",
        cmd_list,
        "list tokens: name, role, state, times (never the token)",
        "didgw api-token list",
        group=group,
    )
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p = tree.command(
        "revoke",
        cmd_revoke,
        "end a token for good",
        "didgw api-token revoke billing",
        group=group,
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--by", metavar="WHO", help="who makes the change (default: local:<user>)")

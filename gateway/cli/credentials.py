"""``didgw cred …``: issue, offer (OpenID4VCI), list, suspend, resume, revoke and verify
credentials; present one (wallet side)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gateway.cli._base import (
    CommandTree,
    Handler,
    actor,
    change_options,
    open_gateway,
    print_json,
    when,
)

MAX_FILE_BYTES = 64 * 1024


def read_credential_file(path: Path) -> tuple[str, Any]:
    """("vc", the JSON) or ("sd-jwt", the text) from a file; refuse anything else."""
    from gateway.errors import CredentialError

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CredentialError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise CredentialError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CredentialError(f"{path} is not UTF-8 text") from None
    if text.startswith("{"):
        try:
            return "vc", json.loads(text)
        except ValueError as exc:
            raise CredentialError(f"{path} is not valid JSON: {exc}") from None
    if "~" in text:
        return "sd-jwt", text
    raise CredentialError(f"{path} holds neither a JSON credential nor an SD-JWT")


def _claims(items: list[str]) -> dict[str, str]:
    from gateway.errors import CredentialError

    claims: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CredentialError(f"--claim takes KEY=VALUE, got {item!r}")
        if key in claims:
            raise CredentialError(f"--claim {key} given twice")
        claims[key] = value
    return claims


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[Callable[[str], object]]:
    """Where a command's text goes: stdout, or a new 0600 file (credentials hold personal
    data), made before anything is issued, removed if nothing is; never overwritten."""
    from gateway.errors import CredentialError
    from gateway.files import private_file

    if path is None:
        yield lambda text: sys.stdout.write(_line(text))
        return
    exists = f"{path} exists; not overwritten, nothing issued"
    with private_file(path, error=CredentialError, exists=exists) as out:
        yield lambda text: out.write(_line(text).encode())
    print(f"written to {path} (mode 0600)", file=sys.stderr)


def _line(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def cmd_cred_issue(args: argparse.Namespace) -> int:
    import secrets

    claims = _claims(args.claim)
    with _output(args.output) as write:
        with open_gateway(args) as gateway:
            issued = gateway.issuer().issue(
                args.type,
                args.subject,
                claims,
                fmt=args.format,
                signer=gateway.signer(os.environ),
                now=time.time(),
                random_bytes=secrets.token_bytes,
            )
        write(issued.text)
    print(f"issued {issued.record.id} ({issued.record.type}, {args.format})", file=sys.stderr)
    return 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> int:
    """``90s``, ``10m``, ``1h``, ``2d`` → seconds."""
    from gateway.errors import CredentialError

    number, unit = text[:-1], text[-1:]
    if unit not in _UNITS or not number.isdigit() or int(number) == 0:
        raise CredentialError(f"--expires takes a number and a unit (s, m, h, d), got {text!r}")
    return int(number) * _UNITS[unit]


def cmd_cred_offer(args: argparse.Namespace) -> int:
    import secrets

    from gateway.credentials import oid4vci
    from gateway.credentials.offers import CredentialOffers

    claims = _claims(args.claim)
    expires = _duration(args.expires)
    with open_gateway(args) as gateway:
        base_url = gateway.config.http.base_url()
        offer = CredentialOffers(gateway.db).create(
            args.type,
            claims,
            now_ms=int(time.time() * 1000),
            expires_seconds=expires,
            random_bytes=secrets.token_bytes,
        )
    uri = oid4vci.offer_uri(base_url, offer.offer_id)
    if args.json:
        until = when(offer.expires_ms / 1000)
        print_json({"kind": offer.kind, "uri": uri, "pin": offer.pin, "expires": until})
        return 0
    print(f"a {offer.kind} credential offer, single use, until {when(offer.expires_ms / 1000)}")
    print(oid4vci.offer_qr_text(uri), end="")
    print(f"offer: {uri}")
    print(f"PIN:   {offer.pin}  (tell it to the person another way than the offer)")
    return 0


def cmd_cred_list(args: argparse.Namespace) -> int:
    with open_gateway(args) as gateway:
        records = gateway.issuer().records()
    if args.json:
        print_json([r.to_json() for r in records])
        return 0
    for r in records:
        if r.revoked_ms is not None:
            state = f"revoked {when(r.revoked_ms / 1000)}"
        elif r.suspended_ms is not None:
            state = f"suspended {when(r.suspended_ms / 1000)}"
        else:
            state = "valid"
        print(
            f"{r.id}  {r.type:<16} {r.format:<6} {r.subject}  "
            f"issued {when(r.issued_ms / 1000)}  {state}"
        )
    return 0


def cmd_cred_revoke(args: argparse.Namespace) -> int:
    with open_gateway(args) as gateway:
        record = gateway.issuer().revoke(
            args.id, by=actor(args), reason=args.reason, now=time.time()
        )
    print(f"revoked {record.id} (status bit {record.status_index})")
    return 0


def cmd_cred_suspend(args: argparse.Namespace) -> int:
    with open_gateway(args) as gateway:
        record = gateway.issuer().suspend(
            args.id, by=actor(args), reason=args.reason, now=time.time()
        )
    print(f"suspended {record.id} (refused at sign-in here until resumed; not published)")
    return 0


def cmd_cred_resume(args: argparse.Namespace) -> int:
    with open_gateway(args) as gateway:
        record = gateway.issuer().resume(
            args.id, by=actor(args), reason=args.reason, now=time.time()
        )
    print(f"resumed {record.id}")
    return 0


def cmd_cred_verify(args: argparse.Namespace) -> int:
    from gateway.credentials.sd_jwt import verify_presentation
    from gateway.credentials.vc import CredentialInvalid, verify_credential
    from gateway.errors import DidgwError

    form, content = read_credential_file(Path(args.file))
    with open_gateway(args) as gateway:
        status = gateway.status_lists(gateway.issuer())
        now = time.time()
        try:
            if form == "vc":
                vc = verify_credential(content, resolver=gateway.resolver, now=now, status=status)
                summary = {
                    "format": "vc",
                    "issuer": vc.issuer,
                    "type": vc.types,
                    "subject": vc.subject,
                }
            else:
                has_kb = not content.endswith("~")
                if has_kb and (args.nonce is None or args.aud is None):
                    print(
                        "invalid: a presentation is checked against --nonce and --aud",
                        file=sys.stderr,
                    )
                    return 1
                sd = verify_presentation(
                    content,
                    resolver=gateway.resolver,
                    now=now,
                    nonce=args.nonce or "",
                    aud=args.aud or "",
                    status=status,
                    max_kb_age=gateway.config.credentials.presentation_max_age_seconds,
                    key_binding=has_kb,
                )
                summary = {
                    "format": "sd-jwt",
                    "issuer": sd.issuer,
                    "vct": sd.vct,
                    "claims": sd.claims,
                }
        except CredentialInvalid as exc:
            print("invalid:", file=sys.stderr)
            for reason in exc.reasons:
                print(f"  - {reason}", file=sys.stderr)
            return 1
        except DidgwError as exc:
            print(f"invalid:\n  - {exc}", file=sys.stderr)
            return 1
    print("valid")
    print(json.dumps(summary, indent=2))
    return 0


def cmd_cred_present(args: argparse.Namespace) -> int:
    from gateway.credentials.sd_jwt import present
    from gateway.errors import CredentialError
    from gateway.identity import keystore
    from gateway.identity.signing import Signer

    form, content = read_credential_file(Path(args.file))
    if form != "sd-jwt":
        raise CredentialError("only SD-JWT credentials can be presented selectively")
    passphrase = keystore.read_passphrase("", os.environ)
    holder = Signer.for_did_key(keystore.load_private_key(Path(args.key), passphrase))
    text = present(
        content, args.disclose, holder, nonce=args.nonce, aud=args.aud, iat=int(time.time())
    )
    with _output(args.output) as write:
        write(text)
    return 0


def register(tree: CommandTree) -> None:
    group = tree.group(
        "cred",
        "verifiable credentials: issue, offer, list, suspend, resume, revoke, verify, present",
    )
    commands: list[tuple[str, Handler, str, str]] = [
        (
            "issue",
            cmd_cred_issue,
            "issue a credential (household, facility-manager, device-owner, vouch)",
            "didgw cred issue household --subject did:key:z6Mk… --format sd-jwt "
            "--claim household=did:key:z6Mk… --claim role=seller -o alice.sdjwt",
        ),
        (
            "offer",
            cmd_cred_offer,
            "offer a credential to a wallet (OpenID4VCI): prints the offer URI, its QR code "
            "and the PIN",
            "didgw cred offer household --claim household=did:key:z6Mk… --claim role=seller "
            "--expires 10m",
        ),
        (
            "list",
            cmd_cred_list,
            "list the credentials this gateway issued",
            "didgw cred list --json",
        ),
        (
            "suspend",
            cmd_cred_suspend,
            "suspend a credential: refused at every sign-in here and its sessions ended, "
            "until resumed",
            "didgw cred suspend urn:uuid:… --reason 'phone lost, looking for it'",
        ),
        (
            "resume",
            cmd_cred_resume,
            "resume a suspended credential (new sign-ins go through again)",
            "didgw cred resume urn:uuid:… --reason 'phone found'",
        ),
        (
            "revoke",
            cmd_cred_revoke,
            "revoke a credential (sets its bit in the revocation list, for good)",
            "didgw cred revoke urn:uuid:… --reason 'moved out'",
        ),
        (
            "verify",
            cmd_cred_verify,
            "verify a credential or a presentation; exit 0 when valid, 1 with the reasons",
            "didgw cred verify alice.json",
        ),
        (
            "present",
            cmd_cred_present,
            "make a presentation of an SD-JWT credential showing only some claims (wallet side)",
            "didgw cred present alice.sdjwt --disclose household --disclose role "
            "--nonce N --aud did:key:z6Mk… --key alice.pem",
        ),
    ]
    parsers = {}
    for name, handler, help_text, example in commands:
        parsers[name] = tree.command(name, handler, help_text, example, group=group)
    p = parsers["issue"]
    p.add_argument(
        "type", metavar="TYPE", help="household, facility-manager, device-owner or vouch"
    )
    p.add_argument("--subject", required=True, metavar="DID", help="whom the credential is about")
    p.add_argument("--format", choices=["vc", "sd-jwt"], default="vc", help="default: vc")
    p.add_argument("--claim", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("-o", "--output", metavar="FILE", help="write to a new 0600 file")
    p = parsers["offer"]
    p.add_argument(
        "type", metavar="TYPE", help="household, facility-manager, device-owner or vouch"
    )
    p.add_argument("--claim", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--expires", default="10m", metavar="DURATION", help="e.g. 90s, 10m, 1h, 2d (default 10m)"
    )
    p.add_argument("--json", action="store_true", help="print the URI and PIN as JSON, no QR")
    parsers["list"].add_argument("--json", action="store_true", help="print JSON")
    for name in ("suspend", "resume", "revoke"):
        p = parsers[name]
        p.add_argument("id", metavar="ID", help="the credential's id (urn:uuid:…)")
        change_options(p, reason_required=True)
    p = parsers["verify"]
    p.add_argument("file", metavar="FILE")
    p.add_argument("--nonce", help="the nonce a presentation's key binding must be over")
    p.add_argument("--aud", help="the audience a presentation's key binding must name")
    p = parsers["present"]
    p.add_argument("file", metavar="FILE", help="the SD-JWT credential as issued")
    p.add_argument("--disclose", action="append", default=[], metavar="CLAIM")
    p.add_argument("--nonce", required=True)
    p.add_argument("--aud", required=True)
    p.add_argument("--key", required=True, metavar="FILE", help="the holder's key (PKCS#8 PEM)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to a new 0600 file")

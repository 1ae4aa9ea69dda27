"""``didgw chain …``: the tamper-evident record — verify, prove, checkpoint, export, erase."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli._base import (
    CommandTree,
    actor,
    load_config,
    open_gateway,
    print_json,
    state_dir,
    when,
)

if TYPE_CHECKING:
    from gateway.chain.store import Entry


def _payload_view(payload: bytes) -> Any:
    """Show a payload as text when it is text (JWS, JSON), else as base64."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(payload).decode()}


def _entry_json(entry: Entry) -> dict[str, Any]:
    from gateway.chain.check import entry_fields

    return {
        **entry_fields(entry),
        "time": when(entry.ts / 1000),
        "payload": None if entry.payload is None else _payload_view(entry.payload),
        "erased": entry.erased,
        "erased_by": entry.erased_by,
    }


def cmd_verify(args: argparse.Namespace) -> int:
    if args.export or args.checkpoint:
        return _verify_export(args)
    from gateway.chain.check import check_database
    from gateway.db import DB_NAME, open_read_only

    path = Path(args.db) if args.db else state_dir(args, load_config(args)) / DB_NAME
    with open_read_only(path) as conn:
        report = check_database(conn)
    if not report.ok:
        print(f"didgw: record in {path} does NOT verify: {report.problem}", file=sys.stderr)
        return 1
    print(f"ok: {report.size} entries, root {report.root.hex()}")
    if report.erased:
        print(f"{report.erased} payloads erased (their commitments still verify)")
    return 0


def _verify_export(args: argparse.Namespace) -> int:
    from gateway.chain.check import ExportError, check_entries, parse_export
    from gateway.chain.checkpoint import verify_checkpoint
    from gateway.errors import DidgwError
    from gateway.identity import offline_resolver

    if not (args.export and args.checkpoint):
        raise DidgwError("--export and --checkpoint go together")
    checkpoint = verify_checkpoint(
        _read_text(args.checkpoint), resolver=offline_resolver(), now=time.time()
    )
    try:
        with open(args.export, encoding="utf-8") as lines:
            report = check_entries(
                parse_export(lines), checkpoints={checkpoint.size: checkpoint.root}
            )
    except OSError as exc:
        raise DidgwError(f"cannot read {args.export}: {exc.strerror}") from None
    except ExportError as exc:
        raise DidgwError(f"{args.export}: {exc}") from None
    if not report.ok:
        print(f"didgw: export does NOT verify: {report.problem}", file=sys.stderr)
        return 1
    print(
        f"ok: {report.size} entries; the first {checkpoint.size} match the checkpoint signed by "
        f"{checkpoint.origin} at {when(checkpoint.time)}"
    )
    return 0


def _read_text(path: str) -> str:
    from gateway.errors import DidgwError

    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DidgwError(f"cannot read {path}: {exc}") from None


def cmd_note(args: argparse.Namespace) -> int:
    from gateway.errors import DidgwError
    from gateway.identity.signing import sign_jws

    text = _read_text(args.file) if args.file else args.text
    if not text or not text.strip():
        raise DidgwError("give the note as TEXT or --file FILE")
    with open_gateway(args) as gateway:
        signer = gateway.signer(os.environ)
        now_ms = int(time.time() * 1000)
        body = json.dumps({"note": text, "by": actor(args), "ts": now_ms}).encode()
        token = sign_jws(body, signer, headers={"typ": "didgw-note"})
        entry = gateway.chain().append("note", gateway.did, token.encode(), now_ms=now_ms)
    print(f"recorded note as entry {entry.seq}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with open_gateway(args) as gateway:
        entry = gateway.chain().get(args.seq)
    print_json(_entry_json(entry))
    return 0


def cmd_proof(args: argparse.Namespace) -> int:
    with open_gateway(args) as gateway:
        chain = gateway.chain()
        size = args.size or chain.size
        path = chain.inclusion_proof(args.seq, size)
        result = {
            "leaf_index": args.seq,
            "tree_size": size,
            "leaf_hash": chain.leaf(args.seq).hex(),
            "path": [h.hex() for h in path],
            "root": chain.root_at(size).hex(),
        }
    print_json(result)
    return 0


def cmd_consistency(args: argparse.Namespace) -> int:
    with open_gateway(args) as gateway:
        chain = gateway.chain()
        path = chain.consistency_proof(args.first, args.second)
        result = {
            "first": args.first,
            "second": args.second,
            "path": [h.hex() for h in path],
            "first_root": chain.root_at(args.first).hex(),
            "second_root": chain.root_at(args.second).hex(),
        }
    print_json(result)
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    with open_gateway(args) as gateway:
        text = gateway.checkpoint(os.environ, now=time.time())
    print(text, end="")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from gateway.chain.check import export_line
    from gateway.files import private_file

    with open_gateway(args) as gateway:  # first: a refused command must not create the file
        entries = gateway.chain().entries()
        if not args.out:
            for entry in entries:
                sys.stdout.write(export_line(entry) + "\n")
            return 0
        # The record holds personal data: a new 0600 file, never written through a link.
        exists = f"{args.out} already exists; not overwriting it (--force replaces it)"
        with private_file(args.out, replace=args.force, exists=exists) as out:
            for entry in entries:
                out.write(export_line(entry).encode() + b"\n")
    print(f"written to {args.out} (mode 0600)", file=sys.stderr)
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    if (args.seq is None) == (args.actor is None):
        print("didgw chain erase: give either an entry SEQ or --actor DID", file=sys.stderr)
        return 2
    if args.actor is not None:
        return _erase_actor(args)
    if not args.reason:
        print("didgw chain erase: --reason is required (recorded in the erasure entry)",
              file=sys.stderr)  # fmt: skip
        return 2
    with open_gateway(args) as gateway:
        record = gateway.chain().erase(
            args.seq,
            reason=args.reason,
            by=actor(args),
            actor=gateway.did,
            now_ms=int(time.time() * 1000),
        )
    print(f"payload of entry {args.seq} erased; erasure recorded as entry {record.seq}")
    return 0


def _erase_actor(args: argparse.Namespace) -> int:
    from gateway.auth import personal_data
    from gateway.identity.document import check_did_syntax

    check_did_syntax(args.actor)
    with open_gateway(args) as gateway:
        chain = gateway.chain()
        asked = personal_data.erasure_state(chain, gateway.db, args.actor)
        reason = args.reason or (
            "all personal data of the actor, at its request"
            + ("" if asked is None else f" (entry {asked.request})")
        )
        done = personal_data.erase_actor(
            chain,
            gateway.db,
            args.actor,
            reason=reason,
            by=actor(args)
            if asked is None or args.by
            else f"the actor's request (entry {asked.request})",
            gateway=gateway.did,
            now_ms=int(time.time() * 1000),
        )
    print(
        f"erased the payloads of {len(done.entries)} entries of {args.actor}; "
        f"ended {done.sessions} sessions, deleted {done.passkeys} passkeys"
    )
    return 0


def cmd_erasure_requests(args: argparse.Namespace) -> int:
    from gateway.auth import personal_data

    with open_gateway(args) as gateway:
        pending = personal_data.pending_requests(gateway.chain(), gateway.db)
    if args.json:
        print_json([{"seq": e.seq, "asked": e.ts, "did": e.actor} for e in pending])
    elif not pending:
        print("no erasure request is waiting")
    for e in pending if not args.json else []:
        print(f"{e.seq}\t{when(e.ts / 1000)}\t{e.actor}\t(didgw chain erase --actor {e.actor})")
    return 0


def register(tree: CommandTree) -> None:
    chain = tree.group("chain", "the tamper-evident record: verify, prove, checkpoint, export")
    p = tree.command(
        "verify",
        cmd_verify,
        "recompute the whole record (or check an export against a signed checkpoint, offline)",
        "didgw chain verify --export record.jsonl --checkpoint checkpoint.txt",
        group=chain,
    )
    p.add_argument(
        "--db", metavar="PATH", help="a gateway database file (default: the state dir's)"
    )
    p.add_argument("--export", metavar="FILE", help="an export made by 'didgw chain export'")
    p.add_argument(
        "--checkpoint", metavar="FILE", help="a checkpoint made by 'didgw chain checkpoint'"
    )
    p = tree.command(
        "note",
        cmd_note,
        "record an operator note, signed by the gateway",
        "didgw chain note 'meter 4711 replaced' --by fm:alice",
        group=chain,
    )
    p.add_argument("text", metavar="TEXT", nargs="?")
    p.add_argument("--file", metavar="FILE", help="take the note from FILE")
    p.add_argument("--by", metavar="WHO", help="who writes the note (default: local:<user>)")
    p = tree.command("show", cmd_show, "show one entry", "didgw chain show 42", group=chain)
    p.add_argument("seq", metavar="SEQ", type=int)
    p = tree.command(
        "proof",
        cmd_proof,
        "inclusion proof of entry SEQ (RFC 9162), as JSON",
        "didgw chain proof 42 --size 1000",
        group=chain,
    )
    p.add_argument("seq", metavar="SEQ", type=int)
    p.add_argument("--size", metavar="N", type=int, help="tree size (default: the whole record)")
    p = tree.command(
        "consistency",
        cmd_consistency,
        "consistency proof between tree sizes M and N (RFC 9162), as JSON",
        "didgw chain consistency 1000 2000",
        group=chain,
    )
    p.add_argument("first", metavar="M", type=int)
    p.add_argument("second", metavar="N", type=int)
    tree.command(
        "checkpoint",
        cmd_checkpoint,
        "sign and print a checkpoint of the record as it is now",
        "didgw chain checkpoint > checkpoint.txt",
        group=chain,
    )
    p = tree.command(
        "export",
        cmd_export,
        "write every entry as JSON lines",
        "didgw chain export -o record.jsonl",
        group=chain,
    )
    p.add_argument(
        "-o", "--out", metavar="FILE", help="write to a new 0600 FILE instead of standard output"
    )
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p = tree.command(
        "erase",
        cmd_erase,
        "delete the payload of entry SEQ (personal data); its commitment and all proofs remain",
        "didgw chain erase 42 --reason 'GDPR request 2026-17'",
        group=chain,
    )
    p.add_argument("seq", metavar="SEQ", type=int, nargs="?")
    p.add_argument(
        "--actor",
        metavar="DID",
        help="instead of one entry: all personal data of DID (every entry it recorded, "
        "its web sessions and passkeys), as /my-data's erasure request asks",
    )
    p.add_argument("--reason", help="why (recorded in the erasure entry; required with SEQ)")
    p.add_argument("--by", metavar="WHO", help="who asked for it (default: local:<user>)")
    p = tree.command(
        "erasure-requests",
        cmd_erasure_requests,
        "erasure requests people made at /my-data, not yet carried out",
        "didgw chain erasure-requests",
        group=chain,
    )
    p.add_argument("--json", action="store_true", help="as JSON")

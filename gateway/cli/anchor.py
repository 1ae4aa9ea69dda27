"""``didgw receipt``, ``didgw verify-receipt`` and ``didgw anchor …``: the record on the ledger."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from gateway.cli._base import CommandTree, load_config, open_gateway, print_json


def cmd_receipt(args: argparse.Namespace) -> int:
    from gateway.anchor.queue import AnchorQueue
    from gateway.anchor.receipt import receipt_for

    with open_gateway(args) as gateway:
        receipt = receipt_for(
            gateway.chain(),
            AnchorQueue(gateway.db),
            gateway=gateway.did,
            binding=gateway.ledger_binding(),
            seq=args.seq,
        )
    text = json.dumps(receipt, indent=2) + "\n"
    if args.out:
        from gateway.files import write_private

        exists = f"{args.out} already exists; not overwriting it (--force replaces it)"
        write_private(args.out, text.encode(), replace=args.force, exists=exists)
        print(f"receipt of entry {args.seq} written to {args.out} (mode 0600)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_verify_receipt(args: argparse.Namespace) -> int:
    from gateway.anchor.ledger import LedgerError
    from gateway.anchor.verify_receipt import check_receipt
    from gateway.errors import DidgwError
    from gateway.transports.evm import read_ledger_view

    try:
        receipt = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DidgwError(f"cannot read receipt {args.file}: {exc}") from None
    view = None
    tx_hash = _tx_hash(receipt)
    if tx_hash is not None:
        try:
            view = read_ledger_view(args.rpc, tx_hash, timeout=args.timeout)
        except LedgerError as exc:
            raise DidgwError(f"cannot check the ledger: {exc}") from None
    report = check_receipt(receipt, view, min_confirmations=args.confirmations)
    for check in report.checks:
        mark = {True: "pass", False: "FAIL", None: "n/a "}[check.ok]
        print(f"{mark}  {check.name}: {check.detail}")
    print(
        "receipt verifies"
        if report.ok
        else f"receipt does NOT verify: {', '.join(report.failed())}"
    )
    return 0 if report.ok else 1


def _tx_hash(receipt: Any) -> bytes | None:
    try:
        text = str(receipt["ledger"]["tx_hash"])
        raw = bytes.fromhex(text.removeprefix("0x"))
    except (KeyError, TypeError, ValueError):
        return None
    return raw if len(raw) == 32 else None


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.anchor.queue import AnchorQueue
    from gateway.anchor.status import anchor_status

    config = load_config(args)
    with open_gateway(args) as gateway:
        chain = gateway.chain()
        status = anchor_status(
            AnchorQueue(gateway.db),
            chain,
            config.anchor,
            size=chain.size,
            binding=gateway.ledger_binding(),
            now=time.time(),
        )
    probe = config.anchor.enabled and not args.offline
    status["ledger"] = _probe(config, status["address"]) if probe else None
    if args.json:
        print_json(status)
    else:
        _print_status(status)
    ledger = status["ledger"]
    return 1 if ledger is not None and ledger["problem"] else 0


def _probe(config: Any, address: str | None) -> dict[str, Any]:
    """Ask the ledger now: reachable, the right chain, a funded account."""
    from gateway.anchor.ledger import LedgerError
    from gateway.transports.evm import EvmLedger

    settings = config.anchor
    ledger = EvmLedger(settings.rpc_url, timeout=settings.rpc_timeout)
    found: dict[str, Any] = {"chain_id": None, "head": None, "balance_wei": None, "problem": None}
    try:
        found["chain_id"] = ledger.chain_id()
        found["head"] = ledger.head()
        if address is not None:
            found["balance_wei"] = ledger.balance(address)
    except LedgerError as exc:
        found["problem"] = str(exc)
        return found
    if found["chain_id"] != settings.chain_id:
        found["problem"] = (
            f"the ledger is chain {found['chain_id']}, but [anchor] chain_id is "
            f"{settings.chain_id}: nothing will be anchored"
        )
    elif found["balance_wei"] == 0:
        found["problem"] = f"ledger account {address} holds 0 wei: fund it to pay for anchors"
    return found


def _print_status(s: dict[str, Any]) -> None:
    print(f"anchoring:      {'enabled' if s['enabled'] else 'disabled'} ([anchor] enabled)")
    print(f"ledger:         {s['rpc_url']} (chain {s['chain_id']})")
    print(f"account:        {s['address'] or '- (run didgw init)'}")
    ledger = s["ledger"]
    if ledger is not None:
        if ledger["problem"]:
            print(f"ledger check:   PROBLEM: {ledger['problem']}")
        else:
            print(
                f"ledger check:   ok: block {ledger['head']}, "
                f"balance {ledger['balance_wei'] / 1e18:.6f} ETH"
            )
    health = s["loop_health"]
    if health is not None:
        print(f"last round:     {health['value']} (since {health['since']})")
    last = s["last_anchor"]
    if last is None:
        print("anchored:       nothing yet")
    else:
        print(
            f"anchored:       entries 0 to {last['size'] - 1}, block {last['block_number']}, "
            f"tx {last['tx_hash']}, {last['confirmed']}"
        )
    lag = "-" if s["lag_seconds"] is None else f"{s['lag_seconds']} s"
    print(f"not anchored:   {s['unanchored_entries']} of {s['record_size']} entries (lag {lag})")
    q = s["queue"]
    print(
        f"queue:          {q['queued']} queued, {q['sent']} in flight, {q['confirmed']} "
        f"confirmed, {q['superseded']} superseded"
    )
    flight = s["in_flight"]
    if flight is not None:
        print(
            f"in flight:      size {flight['size']}, tx {flight['tx_hash']} (nonce "
            f"{flight['nonce']}), sent {flight['sends']} time(s), last "
            f"{flight['last_sent_seconds_ago']} s ago"
        )


def cmd_list(args: argparse.Namespace) -> int:
    from gateway.anchor.queue import AnchorQueue
    from gateway.anchor.status import anchor_json

    with open_gateway(args) as gateway:
        anchors = [anchor_json(a) for a in AnchorQueue(gateway.db).recent(args.limit)]
    if args.json:
        print_json(anchors)
        return 0
    print(f"{'size':>10}  {'state':<10}  {'created':<20}  {'block':>7}  tx / covered by")
    for a in anchors:
        tail = a["tx_hash"] or ("" if a["covered_by"] is None else f"(anchor {a['covered_by']})")
        block = "-" if a["block_number"] is None else a["block_number"]
        print(f"{a['size']:>10}  {a['state']:<10}  {a['created']:<20}  {block:>7}  {tail}")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    """A day of anchors at the configured cadence: how many, the gas, the ether at each fee."""
    from gateway.anchor.estimate import GAS_PER_ANCHOR, day_of_anchors

    settings = load_config(args).anchor
    every_seconds = args.every_seconds or settings.every_seconds
    every_entries = args.every_entries or settings.every_entries
    fees = args.fee_gwei or [0.01, 0.1, 1.0, settings.max_fee_gwei]
    days = [
        day_of_anchors(every_seconds, every_entries, args.entries_per_day, fee)
        for fee in sorted(set(fees))
    ]
    if args.json:
        print_json(
            {
                "every_seconds": every_seconds,
                "every_entries": every_entries,
                "entries_per_day": args.entries_per_day,
                "gas_per_anchor": GAS_PER_ANCHOR,
                "anchors_per_day": days[0].anchors,
                "gas_per_day": days[0].gas,
                "per_fee": [{"fee_gwei": d.fee_gwei, "ether_per_day": d.ether} for d in days],
            }
        )
        return 0
    print(
        f"every {every_seconds:g} s or {every_entries:,} entries, with {args.entries_per_day:,.0f} "
        f"entries a day: {days[0].anchors:,.0f} anchors a day"
    )
    print(f"at most {GAS_PER_ANCHOR:,} gas each: {days[0].gas:,.0f} gas a day")
    print(f"{'fee per gas (gwei)':>20}  {'ether a day':>14}  {'ether a month (30 days)':>24}")
    for d in days:
        print(f"{d.fee_gwei:>20g}  {d.ether:>14.6f}  {d.ether * 30:>24.6f}")
    print("a rollup's layer-1 data fee is not included; ask its fee estimator")
    return 0


def register(tree: CommandTree) -> None:
    p = tree.command(
        "receipt",
        cmd_receipt,
        "write the portable receipt of entry SEQ: entry, payload, proof, checkpoint, ledger",
        "didgw receipt 42 -o receipt-42.json",
    )
    p.add_argument("seq", metavar="SEQ", type=int)
    p.add_argument("-o", "--out", metavar="FILE", help="write to a new 0600 FILE instead of stdout")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p = tree.command(
        "verify-receipt",
        cmd_verify_receipt,
        "check a receipt against the ledger, without the gateway; prints each check",
        "didgw verify-receipt receipt-42.json --rpc http://127.0.0.1:8545",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--rpc", metavar="URL", required=True, help="JSON-RPC URL of a ledger node")
    p.add_argument(
        "--confirmations", metavar="N", type=int, default=1, help="blocks required (default 1)"
    )
    p.add_argument("--timeout", metavar="S", type=float, default=10.0, help=argparse.SUPPRESS)
    anchor = tree.group("anchor", "anchors of the record on the ledger: status and history")
    p = tree.command(
        "status",
        cmd_status,
        "what is anchored, the lag, the queue, and whether the ledger is usable now",
        "didgw anchor status",
        group=anchor,
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--offline", action="store_true", help="do not ask the ledger (not asked when disabled)"
    )
    p = tree.command(
        "list",
        cmd_list,
        "the newest anchors: size, state, block and transaction",
        "didgw anchor list --limit 20",
        group=anchor,
    )
    p.add_argument("--limit", metavar="N", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = tree.command(
        "estimate",
        cmd_estimate,
        "what a day of anchors costs at the configured cadence: anchors, gas, and ether at "
        "a few fees per gas (or those given)",
        "didgw anchor estimate --entries-per-day 100000 --fee-gwei 0.5",
        group=anchor,
        on_state=False,
    )
    p.add_argument(
        "--entries-per-day", metavar="N", type=float, default=86_400.0,
        help="new record entries a day (default 86,400: a reading a second)",
    )  # fmt: skip
    p.add_argument("--every-seconds", metavar="S", type=float, help="instead of [anchor]'s")
    p.add_argument("--every-entries", metavar="N", type=int, help="instead of [anchor]'s")
    p.add_argument(
        "--fee-gwei", metavar="GWEI", type=float, action="append",
        help="a fee per gas (base fee and tip) to price at; repeat for more",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON")

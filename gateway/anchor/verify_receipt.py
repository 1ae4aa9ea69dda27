"""Check a didgw receipt without the gateway: the entry, its proof, its anchor on the ledger.

A household, an auditor or a utility holding a receipt (``didgw receipt``) and
access to any node of the ledger can check, with this module alone, that:

1. the receipt is well-formed (``receipt_format``);
2. the payload matches the entry's commitment (``payload_commitment``), unless it
   was lawfully erased, which the receipt then says;
3. the payload's signature verifies under the key of the DID that recorded it
   (``device_signature``): a compact JWS (MQTT) or a COSE_Sign1 (CoAP), Ed25519,
   ``kid`` a did:key URL of the entry's actor; or, for an order a person signed with her
   passkey, the WebAuthn assertion over it (``passkey_check.py``);
4. the entry is in the checkpointed tree (``inclusion_proof``, RFC 9162);
5. the checkpoint is signed by the gateway DID it names (``checkpoint_signature``);
6. the gateway DID states that the ledger account is its own (``ledger_binding``);
7. the transaction exists where the receipt says, on the chain it says, sent by
   that account to itself with no value (``ledger_transaction``);
8. its input is a didgw anchor of exactly this gateway, size, root and
   checkpoint (``anchor_data``);
9. it succeeded and has enough confirmations (``confirmations``).

Each check says pass or fail and why, independently where it can, so a
tampered field shows up as the check that covers it. The checks are pure: the
ledger's answers come in as a :class:`LedgerView`, which
``gateway/transports/evm.py`` reads over JSON-RPC. Dependencies: the Python
standard library, ``cryptography`` and the two stdlib-only modules
``gateway/chain/verify.py``, ``gateway/anchor/encoding.py`` and
``gateway/anchor/passkey_check.py``; ``cbor2`` too for a receipt of a CoAP reading or of a
passkey-signed order (imported only then).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.anchor.encoding import AnchorEncodingError, decode_anchor, did_digest, note_digest
from gateway.anchor.passkey_check import (
    PasskeyCheckError,
    check_passkey_order,
    is_passkey_order,
)
from gateway.chain.verify import ProofError, entry_bytes, leaf_hash, verify_inclusion

RECEIPT_TYPE = "didgw-receipt"
RECEIPT_VERSION = 1
CHECKS = (
    "receipt_format",
    "payload_commitment",
    "device_signature",
    "inclusion_proof",
    "checkpoint_signature",
    "ledger_binding",
    "ledger_transaction",
    "anchor_data",
    "confirmations",
)
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_ED25519_PUB = b"\xed\x01"
_NOTE_DASH = "\u2014 "

__all__ = ["CHECKS", "Check", "LedgerView", "Report", "check_receipt"]


@dataclass(frozen=True)
class LedgerView:
    """What a node says about the receipt's transaction (None: it does not know it)."""

    chain_id: int
    head: int
    sender: str | None = None
    recipient: str | None = None
    value: int | None = None
    data: bytes | None = None
    block_number: int | None = None
    block_hash: bytes | None = None
    status: int | None = None


@dataclass(frozen=True)
class Check:
    """One line of the report: ``ok`` True (pass), False (fail) or None (does not apply)."""

    name: str
    ok: bool | None
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks) and bool(self.checks)

    def add(self, name: str, ok: bool | None, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def failed(self) -> list[str]:
        return [c.name for c in self.checks if c.ok is False]


class _Bad(ValueError):
    """A check fails; the message says why."""


def check_receipt(receipt: Any, ledger: LedgerView | None, *, min_confirmations: int = 1) -> Report:
    """Run every check on a parsed receipt (a JSON object) and the ledger's view of it."""
    report = Report()
    try:
        parts = _parse(receipt)
    except _Bad as exc:
        report.add("receipt_format", False, str(exc))
        return report
    report.add("receipt_format", True, f"receipt version {RECEIPT_VERSION} for entry {parts.seq}")
    _run(report, "payload_commitment", lambda: _check_commitment(parts))
    _run(report, "device_signature", lambda: _check_device_signature(parts))
    _run(report, "inclusion_proof", lambda: _check_inclusion(parts))
    _run(report, "checkpoint_signature", lambda: _check_checkpoint(parts))
    _run(report, "ledger_binding", lambda: _check_binding(parts))
    if ledger is None:
        for name in ("ledger_transaction", "anchor_data", "confirmations"):
            report.add(name, False, "the ledger does not know the transaction")
        return report
    _run(report, "ledger_transaction", lambda: _check_transaction(parts, ledger))
    _run(report, "anchor_data", lambda: _check_anchor(parts, ledger))
    _run(report, "confirmations", lambda: _check_confirmations(ledger, min_confirmations))
    return report


def _run(report: Report, name: str, check: Any) -> None:
    try:
        ok, detail = check()
    except (_Bad, ProofError, AnchorEncodingError, ValueError, TypeError, AttributeError) as exc:
        report.add(name, False, str(exc))
        return
    report.add(name, ok, detail)


# -- the receipt's shape ----------------------------------------------------------


@dataclass(frozen=True)
class _Parts:
    gateway: str
    seq: int
    ts: int
    kind: str
    actor: str
    commitment: bytes
    salt: bytes | None
    payload: bytes | None
    erasure: dict[str, Any] | None
    tree_size: int
    path: list[bytes]
    checkpoint: str
    binding: str
    chain_id: int
    tx_hash: bytes
    block_number: int
    block_hash: bytes
    address: str


def _parse(receipt: Any) -> _Parts:
    if not isinstance(receipt, dict):
        raise _Bad("a receipt is a JSON object")
    if receipt.get("type") != RECEIPT_TYPE or receipt.get("version") != RECEIPT_VERSION:
        raise _Bad(f"not a {RECEIPT_TYPE} version {RECEIPT_VERSION}")
    try:
        entry, inclusion, ledger = receipt["entry"], receipt["inclusion"], receipt["ledger"]
        payload = receipt["payload"]
        return _Parts(
            gateway=_str(receipt["gateway"]),
            seq=_int(entry["seq"]),
            ts=_int(entry["ts"]),
            kind=_str(entry["kind"]),
            actor=_str(entry["actor"]),
            commitment=_hex(entry["commitment"], 32),
            salt=None if entry["salt"] is None else _hex(entry["salt"], 16),
            payload=None if payload is None else _payload(payload),
            erasure=receipt["erasure"] if isinstance(receipt["erasure"], dict) else None,
            tree_size=_int(inclusion["tree_size"]),
            path=[_hex(h, 32) for h in inclusion["path"]],
            checkpoint=_str(receipt["checkpoint"]),
            binding=_str(receipt["binding"]),
            chain_id=_int(ledger["chain_id"]),
            tx_hash=_hex(ledger["tx_hash"], 32),
            block_number=_int(ledger["block_number"]),
            block_hash=_hex(ledger["block_hash"], 32),
            address=_str(ledger["address"]),
        )
    except (KeyError, TypeError) as exc:
        raise _Bad(f"receipt is missing or mistypes {exc}") from None


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Bad(f"expected a non-negative integer, got {value!r}")
    return value


def _hex(value: Any, size: int) -> bytes:
    text = _str(value)
    text = text[2:] if text.startswith("0x") else text
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise _Bad(f"{value!r} is not hex") from None
    if len(raw) != size:
        raise _Bad(f"{value!r} is {len(raw)} bytes, expected {size}")
    return raw


def _payload(value: Any) -> bytes:
    if not isinstance(value, dict) or value.get("encoding") not in ("utf-8", "base64"):
        raise _Bad("payload must be {'encoding': 'utf-8' | 'base64', 'data': …} or null")
    data = _str(value.get("data"))
    if value["encoding"] == "utf-8":
        return data.encode("utf-8")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error:
        raise _Bad("payload data is not base64") from None


# -- the entry ---------------------------------------------------------------------


def _check_commitment(p: _Parts) -> tuple[bool | None, str]:
    if p.payload is None or p.salt is None:
        if p.erasure is None:
            return False, "the receipt carries no payload and no erasure note"
        return None, f"payload lawfully erased ({p.erasure.get('note', 'no reason given')})"
    if hashlib.sha256(p.salt + p.payload).digest() != p.commitment:
        return False, "SHA-256(salt || payload) is not the entry's commitment: payload altered"
    return True, f"{len(p.payload)}-byte payload matches the entry's commitment"


def _check_device_signature(p: _Parts) -> tuple[bool | None, str]:
    if p.payload is None:
        return None, "no payload to check (erased)"
    if is_passkey_order(p.payload):
        try:
            return True, check_passkey_order(p.payload, p.actor)
        except PasskeyCheckError as exc:
            raise _Bad(str(exc)) from None
    if p.payload[:1] in (b"\xd2", b"\x84"):  # CBOR tag 18 or an array of four: COSE_Sign1
        kid, signature, signed = _split_cose(p.payload)
        what = "COSE_Sign1"
    else:
        token = p.payload.decode("utf-8", "replace").strip()
        if token.count(".") != 2:
            return None, f"a {p.kind} entry has no signature of its own (the checkpoint covers it)"
        header_b64, body_b64, sig_b64 = token.split(".")
        header = json.loads(_b64url(header_b64))
        if not isinstance(header, dict) or header.get("alg") not in ("EdDSA", "Ed25519"):
            raise _Bad("payload JWS is not signed with EdDSA/Ed25519")
        kid, signature = _str(header.get("kid")), _b64url(sig_b64)
        signed, what = f"{header_b64}.{body_b64}".encode(), "JWS"
    did = kid.split("#", 1)[0]
    if did != p.actor:
        raise _Bad(f"payload is signed by {did}, but the entry was recorded for {p.actor}")
    key = _did_key_public(did)
    try:
        key.verify(signature, signed)
    except InvalidSignature:
        raise _Bad(f"payload signature does not verify under {did}'s key") from None
    return True, f"{what} signed by {kid}"


def _split_cose(data: bytes) -> tuple[str, bytes, bytes]:
    """A COSE_Sign1 (RFC 9052) signed with EdDSA: its ``kid`` (a DID URL), its signature, and
    the ``Sig_structure`` that signature is over."""
    import cbor2

    try:
        item = cbor2.loads(data)
        if isinstance(item, cbor2.CBORTag) and item.tag == 18:
            item = item.value
        protected_bytes, unprotected, payload, signature = item
        protected = cbor2.loads(protected_bytes)
        kid = protected.get(4, unprotected.get(4))
        alg = protected.get(1)
    except (cbor2.CBORDecodeError, ValueError, TypeError, AttributeError, EOFError):
        raise _Bad("payload is not a COSE_Sign1") from None
    if not all(isinstance(v, bytes) for v in (protected_bytes, payload, signature, kid)):
        raise _Bad("payload COSE_Sign1 lacks its kid, payload or signature")
    if type(alg) is not int or alg not in (-8, -19):
        raise _Bad("payload COSE_Sign1 is not signed with EdDSA/Ed25519")
    signed = cbor2.dumps(["Signature1", protected_bytes, b"", payload])
    return kid.decode("utf-8", "replace"), signature, signed


def _check_inclusion(p: _Parts) -> tuple[bool, str]:
    size, root = _checkpoint_head(p.checkpoint)
    if size != p.tree_size:
        raise _Bad(f"inclusion proof is for tree size {p.tree_size}, checkpoint is of {size}")
    leaf = leaf_hash(entry_bytes(p.ts, p.kind, p.actor, p.commitment))
    verify_inclusion(leaf, p.seq, p.tree_size, p.path, root)
    return True, f"entry {p.seq} is in the tree of {size} entries with root {root.hex()[:16]}…"


# -- the gateway's statements --------------------------------------------------------


def _checkpoint_head(note: str) -> tuple[int, bytes]:
    body = note.split("\n\n", 1)[0] + "\n"
    lines = body[:-1].split("\n")
    if len(lines) != 4 or not lines[3].startswith("time "):
        raise _Bad("checkpoint is not origin, size, root and time lines")
    try:
        root = base64.b64decode(lines[2], validate=True)
        size = int(lines[1])
    except (binascii.Error, ValueError):
        raise _Bad("checkpoint size or root is malformed") from None
    if len(root) != 32:
        raise _Bad("checkpoint root is not 32 bytes")
    return size, root


def _check_checkpoint(p: _Parts) -> tuple[bool, str]:
    text, _, block = p.checkpoint.partition("\n\n")
    body = text + "\n"
    origin = body.split("\n", 1)[0]
    if origin != p.gateway:
        raise _Bad(f"checkpoint is from {origin}, receipt names gateway {p.gateway}")
    key = _did_key_public(origin)
    raw_key = key.public_bytes_raw()
    key_id = hashlib.sha256(origin.encode() + b"\n\x01" + raw_key).digest()[:4]
    for line in block.split("\n"):
        if not line.startswith(_NOTE_DASH + origin + " "):
            continue
        try:
            sig = base64.b64decode(line.rsplit(" ", 1)[1], validate=True)
        except binascii.Error:
            raise _Bad("checkpoint signature line is not base64") from None
        if sig[:4] != key_id:
            continue
        try:
            key.verify(sig[4:], body.encode())
        except InvalidSignature:
            raise _Bad("checkpoint signature does not verify: the checkpoint was altered") from None
        _checkpoint_head(p.checkpoint)
        return True, f"signed by {origin}"
    raise _Bad(f"checkpoint carries no signature by {origin}")


def _check_binding(p: _Parts) -> tuple[bool, str]:
    header_b64, body_b64, sig_b64 = [*p.binding.split("."), "", "", ""][:3]
    header = json.loads(_b64url(header_b64))
    kid = _str(header.get("kid"))
    did = kid.split("#", 1)[0]
    if did != p.gateway:
        raise _Bad(f"binding is signed by {did}, not by the gateway {p.gateway}")
    try:
        _did_key_public(did).verify(_b64url(sig_b64), f"{header_b64}.{body_b64}".encode())
    except InvalidSignature:
        raise _Bad("binding signature does not verify") from None
    body = json.loads(_b64url(body_b64))
    if body.get("type") != "didgw-ledger-binding" or body.get("did") != p.gateway:
        raise _Bad("binding is not a didgw ledger binding of this gateway")
    if str(body.get("address", "")).lower() != p.address.lower():
        raise _Bad(f"binding names account {body.get('address')}, receipt names {p.address}")
    return True, f"{p.gateway} states that {p.address} is its ledger account"


# -- the ledger ------------------------------------------------------------------------


def _check_transaction(p: _Parts, view: LedgerView) -> tuple[bool, str]:
    if view.chain_id != p.chain_id:
        raise _Bad(f"the node is on chain {view.chain_id}, the receipt names chain {p.chain_id}")
    if view.block_number is None or view.sender is None:
        raise _Bad(f"transaction 0x{p.tx_hash.hex()} is not in any block on this chain")
    if view.block_number != p.block_number or view.block_hash != p.block_hash:
        raise _Bad(
            f"transaction is in block {view.block_number}, the receipt says {p.block_number} "
            "(or another block hash)"
        )
    if view.sender.lower() != p.address.lower():
        raise _Bad(f"transaction was sent by {view.sender}, not by {p.address}")
    if (view.recipient or "").lower() != p.address.lower() or view.value != 0:
        raise _Bad("transaction is not a 0-value transaction from the account to itself")
    return True, f"0x{p.tx_hash.hex()} in block {view.block_number} of chain {view.chain_id}"


def _check_anchor(p: _Parts, view: LedgerView) -> tuple[bool, str]:
    anchor = decode_anchor(view.data or b"")
    size, root = _checkpoint_head(p.checkpoint)
    if anchor.did_digest != did_digest(p.gateway):
        raise _Bad("the anchor is for another gateway DID")
    if anchor.size != size or anchor.root != root:
        raise _Bad(f"the anchor is of size {anchor.size}, not the checkpoint's {size} and root")
    if anchor.checkpoint_digest != note_digest(p.checkpoint):
        raise _Bad("the anchor's checkpoint digest is not the digest of this checkpoint")
    return True, f"anchors size {size}, root and checkpoint of {p.gateway}"


def _check_confirmations(view: LedgerView, minimum: int) -> tuple[bool, str]:
    if view.status != 1 or view.block_number is None:
        raise _Bad("the transaction did not succeed")
    seen = view.head - view.block_number + 1
    if seen < minimum:
        raise _Bad(f"{seen} confirmation(s), fewer than the {minimum} asked for")
    return True, f"{seen} confirmation(s) (at least {minimum} asked for)"


# -- encodings ---------------------------------------------------------------------------


def _b64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _Bad("not base64url") from None


def _did_key_public(did: str) -> Ed25519PublicKey:
    """The Ed25519 key of a ``did:key:z6Mk…`` (multibase base58btc, multicodec 0xed01)."""
    if not did.startswith("did:key:z"):
        raise _Bad(f"{did} is not an Ed25519 did:key; this verifier checks did:key only")
    number = 0
    for char in did[len("did:key:z") :]:
        index = _B58.find(char)
        if index < 0:
            raise _Bad(f"{did} is not base58btc")
        number = number * 58 + index
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    if not raw.startswith(_ED25519_PUB) or len(raw) != 34:
        raise _Bad(f"{did} is not an Ed25519 did:key")
    return Ed25519PublicKey.from_public_bytes(raw[2:])

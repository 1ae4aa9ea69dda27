"""Signed checkpoints: the gateway's tree heads, as transparency logs write them.

A checkpoint commits the gateway to the state of its tamper-evident record: the
size of the Merkle tree and its root hash, signed. didgw writes it in the text
format of the transparency-log ecosystem, a C2SP *signed note*
(c2sp.org/signed-note) whose text is a C2SP *checkpoint*
(c2sp.org/tlog-checkpoint), so that tools built for that ecosystem (Go's
``golang.org/x/mod/sumdb/note``, ``transparency-dev/formats``, witnesses) read
and check it without knowing anything about didgw::

    did:key:z6Mk…          origin: the gateway's DID
    42                     tree size: decimal, no sign, no leading zeros
    Q2hlY2twb2ludC4u…=     root hash: 32 bytes, standard base64 with padding
    time 1700000000        extension line: when the gateway signed it (unix seconds)

    — did:key:z6Mk… 3Bq2cg…=

Every line ends with a newline. The signature covers the *note text*: the
lines above the blank line, final newline included. The signature line is an em
dash (U+2014), a space, the key name (the origin), a space, and
``base64(key ID || Ed25519 signature)`` where the key ID is
``SHA-256(key name || 0x0A || 0x01 || public key)[:4]``, big-endian.

Why the time is an extension line. tlog-checkpoint allows opaque, non-empty
extension lines after the three mandatory ones; every parser of the format
(Go's note.Open, transparency-dev's ``Checkpoint.Unmarshal``, Rekor's, which
puts its own timestamp there) hands them back as opaque text, so a verifier
that knows nothing of ``time`` still accepts the checkpoint and still checks
the signature over it. The other place the ecosystem puts a time is a
*timestamped cosignature* (tlog-cosignature, signature type 0x04): a witness's
statement about someone else's log, under a second key ID, which plain note
verifiers skip. The time is the gateway's own claim, so it belongs under the
gateway's own signature. The spec calls extension lines NOT RECOMMENDED
because log monitors cannot audit them: a witness that cosigns a didgw
checkpoint vouches for size and root, not for the time.

Verification goes through the identity recipes. The origin DID is resolved;
each Ed25519 key listed under its ``assertionMethod`` gives a key ID, and the
signature line with the origin's name and that key ID is checked with
:func:`~gateway.identity.signing.verify_detached`. Other signature lines
(witnesses, a retired key) are ignored, as signed-note requires; a line that
names the origin's key but does not verify rejects the whole note.

Parsing is strict: didgw reads back what it writes and refuses, with the
reason, anything else (a missing or extra line, non-canonical numbers or
base64, control characters, CRLF line endings, more than 1 MiB or 100
signatures). The checkpoint's time is not compared with ``now``; freshness is
the caller's policy.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from gateway.errors import DidError, DidgwError, SignatureError
from gateway.identity.did_key import parse_did_key
from gateway.identity.document import check_did_syntax, usable_ed25519_methods
from gateway.identity.keystore import public_bytes
from gateway.identity.resolver import Resolver
from gateway.identity.signing import Signer, resolve_key, verify_detached

__all__ = [
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "Checkpoint",
    "CheckpointError",
    "NoteSignature",
    "checkpoint_body",
    "note_key_id",
    "parse_checkpoint",
    "parse_note",
    "sign_checkpoint",
    "sign_note",
    "signature_line",
    "verifier_key",
    "verify_checkpoint",
]

MAX_NOTE_BYTES = 1 << 20
MAX_SIGNATURES = 100  # signed-note: at least 16 must be accepted; Go's note.Open stops at 100
SIGNATURE_PREFIX = "\u2014 "  # em dash, space
ED25519_TYPE = b"\x01"  # signed-note signature type: Ed25519 over the note text
TIME_PREFIX = "time "
RELATIONSHIP = "assertionMethod"  # a checkpoint is a statement by the gateway

_MAX_SIZE = 2**64 - 1
_MAX_TIME = 2**63 - 1
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


class CheckpointError(DidgwError):
    """A checkpoint or signed note is malformed, or not signed by its origin."""

    code = "invalid_checkpoint"


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a signed note, not yet verified."""

    key_name: str
    key_id: int  # the 4-byte key ID, big-endian
    signature: bytes  # what follows the key ID


@dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint: the tree head, the signed text and the whole note."""

    origin: str
    size: int
    root: bytes
    time: int
    body: str  # the note text: what the signatures cover
    text: str  # the whole signed note, signature lines included


def note_key_id(key_name: str, public_key: bytes) -> int:
    """The signed-note key ID of an Ed25519 key: SHA-256(name || 0x0A || 0x01 || key)[:4]."""
    _check_key_name(key_name)
    if len(public_key) != 32:
        raise CheckpointError(f"an Ed25519 public key is 32 bytes, not {len(public_key)}")
    digest = hashlib.sha256(key_name.encode() + b"\n" + ED25519_TYPE + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def verifier_key(key_name: str, public_key: bytes) -> str:
    """The verifier key ``<name>+<key ID>+<base64(0x01 || key)>`` that Go's note tools take."""
    key_id = note_key_id(key_name, public_key)
    return f"{key_name}+{key_id:08x}+{_b64(ED25519_TYPE + public_key)}"


def signature_line(text: str, signer: Signer, key_name: str) -> str:
    """``— <key name> base64(key ID || signature)`` and a newline: ``signer`` signs ``text``."""
    _check_note_text(text)
    key_id = note_key_id(key_name, public_bytes(signer.private_key))
    signature = signer.sign(text.encode())
    return f"{SIGNATURE_PREFIX}{key_name} {_b64(key_id.to_bytes(4, 'big') + signature)}\n"


def sign_note(text: str, signer: Signer, key_name: str) -> str:
    """A signed note: ``text``, a blank line, one signature line by ``signer``."""
    return text + "\n" + signature_line(text, signer, key_name)


def checkpoint_body(origin: str, size: int, root: bytes, time: int) -> str:
    """The note text of a checkpoint: origin, tree size, root hash, ``time <unix seconds>``."""
    _check_origin(origin)
    body = f"{origin}\n{size}\n{_b64(root)}\n{TIME_PREFIX}{time}\n"
    _parse_body(body)  # the same rules as for reading: never emit what would be refused
    return body


def sign_checkpoint(body: str, signer: Signer, key_name: str | None = None) -> str:
    """The signed checkpoint. The key name defaults to the origin, which must be the signer's DID.

    With another ``key_name`` this adds a signature line under that name
    (a cosignature by another party), whoever the signer is.
    """
    origin = _parse_body(body)[0]
    name = origin if key_name is None else key_name
    if name == origin and signer.did != origin:
        raise CheckpointError(
            f"{signer.did} cannot sign a checkpoint of {origin}: "
            "a checkpoint is signed by the gateway whose DID is its origin"
        )
    return sign_note(body, signer, name)


def parse_note(data: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and its (unverified) signature lines."""
    return _split_note(_decode(data))


def parse_checkpoint(data: str | bytes) -> tuple[Checkpoint, list[NoteSignature]]:
    """Parse a signed checkpoint; nothing is verified yet (see :func:`verify_checkpoint`)."""
    note = _decode(data)
    body, signatures = _split_note(note)
    origin, size, root, time = _parse_body(body)
    return Checkpoint(origin, size, root, time, body, note), signatures


def verify_checkpoint(
    data: str | bytes, *, resolver: Resolver, now: float, origin: str | None = None
) -> Checkpoint:
    """The checkpoint, if its origin DID signed it with an ``assertionMethod`` Ed25519 key.

    ``origin``, when given, is the only origin accepted. Failing to resolve the
    origin raises the resolver's own error (the checkpoint could not be
    checked, which is not the same as forged).
    """
    checkpoint, signatures = parse_checkpoint(data)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(f"checkpoint is from {checkpoint.origin}, not from {origin}")
    by_origin = [s for s in signatures if s.key_name == checkpoint.origin]
    message = checkpoint.body.encode()
    for kid in _origin_kids(checkpoint.origin, resolver=resolver, now=now):
        key = resolve_key(kid, resolver=resolver, relationship=RELATIONSHIP, now=now)
        key_id = note_key_id(checkpoint.origin, key.public_key.public_bytes_raw())
        for signature in (s for s in by_origin if s.key_id == key_id):
            try:
                verify_detached(
                    kid,
                    message,
                    signature.signature,
                    resolver=resolver,
                    relationship=RELATIONSHIP,
                    now=now,
                )
            except SignatureError:
                raise CheckpointError(
                    f"checkpoint signature by {kid} (key ID {key_id:08x}) does not verify: "
                    "the checkpoint was altered or signed with another key"
                ) from None
            return checkpoint
    raise CheckpointError(
        f"checkpoint is not signed by its origin {checkpoint.origin}: none of its "
        f"{len(signatures)} signature line(s) is by an {RELATIONSHIP} key of that DID"
    )


def _split_note(note: str) -> tuple[str, list[NoteSignature]]:
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointError("signed note has no blank line between its text and its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise CheckpointError("signed note has no signature lines after the blank line")
    if not block.endswith("\n"):
        raise CheckpointError("signed note's last signature line does not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(
            f"signed note has {len(lines)} signature lines; at most {MAX_SIGNATURES} are read"
        )
    return text, [_parse_signature_line(line, n) for n, line in enumerate(lines, 1)]


def _origin_kids(origin: str, *, resolver: Resolver, now: float) -> list[str]:
    """The DID URLs of the origin's Ed25519 ``assertionMethod`` keys."""
    if origin.startswith("did:key:"):
        try:
            return [parse_did_key(origin).kid]
        except DidError as exc:
            raise CheckpointError(f"checkpoint origin is not a usable did:key: {exc}") from None
    document = resolver.resolve(origin, now=now).document
    return usable_ed25519_methods(document, RELATIONSHIP)


def _decode(data: str | bytes) -> str:
    """The note as text, after the size, encoding and control-character rules."""
    if len(data) > MAX_NOTE_BYTES:
        raise CheckpointError(f"signed note is larger than {MAX_NOTE_BYTES} bytes")
    try:
        raw = data.encode() if isinstance(data, str) else data
        note = raw.decode() if isinstance(data, bytes) else data
    except (UnicodeDecodeError, UnicodeEncodeError) as exc:
        raise CheckpointError(f"signed note is not valid UTF-8: {exc.reason}") from None
    if len(raw) > MAX_NOTE_BYTES:
        raise CheckpointError(f"signed note is larger than {MAX_NOTE_BYTES} bytes")
    if "\r" in note:
        raise CheckpointError(
            "signed note contains a carriage return (CRLF line endings?); lines end with \\n only"
        )
    control = _CONTROL.search(note)
    if control:
        raise CheckpointError(
            f"signed note contains control character U+{ord(control.group()):04X}; "
            "newline is the only one allowed"
        )
    return note


def _parse_signature_line(line: str, number: int) -> NoteSignature:
    if not line.startswith(SIGNATURE_PREFIX):
        raise CheckpointError(
            f"signature line {number} does not start with an em dash (U+2014) and a space: "
            f"{_quote(line)}"
        )
    name, space, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if not space:
        raise CheckpointError(
            f"signature line {number} has no space between key name and signature"
        )
    _check_key_name(name)
    raw = _b64decode(encoded, f"signature on line {number}")
    if len(raw) < 5:
        raise CheckpointError(
            f"signature on line {number} is {len(raw)} bytes: "
            "expected a 4-byte key ID and a signature"
        )
    return NoteSignature(name, int.from_bytes(raw[:4], "big"), raw[4:])


def _parse_body(body: str) -> tuple[str, int, bytes, int]:
    """Origin, size, root and time of a checkpoint's note text, or the reason it is refused."""
    if not body.endswith("\n"):
        raise CheckpointError("checkpoint text does not end with a newline")
    lines = body[:-1].split("\n")
    for number, line in enumerate(lines, 1):
        if not line:
            raise CheckpointError(
                "checkpoint origin (line 1) is empty"
                if number == 1
                else f"checkpoint line {number} is empty; no line may be"
            )
    if len(lines) < 4:
        raise CheckpointError(
            f"checkpoint has {len(lines)} lines; didgw checkpoints have 4: "
            "origin, tree size, root hash and 'time <unix seconds>'"
        )
    if len(lines) > 4:
        raise CheckpointError(
            f"checkpoint has {len(lines) - 4} line(s) after the time line; "
            "didgw writes no other extension lines"
        )
    origin, size_line, root_line, time_line = lines
    _check_origin(origin)
    size = _decimal(size_line, "tree size", _MAX_SIZE)
    root = _b64decode(root_line, "root hash")
    if len(root) != 32:
        raise CheckpointError(f"root hash is {len(root)} bytes; a SHA-256 root is 32")
    if not time_line.startswith(TIME_PREFIX):
        raise CheckpointError(f"line 4 must be 'time <unix seconds>', not {_quote(time_line)}")
    time = _decimal(time_line[len(TIME_PREFIX) :], "time", _MAX_TIME)
    return origin, size, root, time


def _check_origin(origin: str) -> None:
    """didgw's origin is the gateway's DID (which is also its key name: no spaces, no '+')."""
    if not origin:
        raise CheckpointError("checkpoint origin (line 1) is empty")
    try:
        check_did_syntax(origin)
    except DidError:
        raise CheckpointError(f"checkpoint origin {_quote(origin)} is not a DID") from None


def _decimal(value: str, what: str, maximum: int) -> int:
    """A canonical ASCII decimal: no sign, no leading zeros, no spaces, at most ``maximum``."""
    if not _DECIMAL.fullmatch(value):
        raise CheckpointError(
            f"{what} {_quote(value)} is not a decimal number (digits only, no sign, "
            "no leading zeros)"
        )
    if len(value) > len(str(maximum)) or int(value) > maximum:
        raise CheckpointError(f"{what} {_quote(value)} is larger than {maximum}")
    return int(value)


def _b64decode(value: str, what: str) -> bytes:
    """Standard, padded, canonical base64 (RFC 4648 section 4), or a refusal."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError(f"{what} {_quote(value)} is not standard base64") from None
    if _b64(raw) != value:
        raise CheckpointError(f"{what} {_quote(value)} is not canonical base64")
    return raw


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_note_text(text: str) -> None:
    if not text.endswith("\n"):
        raise CheckpointError("note text must end with a newline")
    _decode(text)


def _check_key_name(name: str) -> None:
    if not name:
        raise CheckpointError("key name is empty")
    if "+" in name or any(c.isspace() for c in name):
        raise CheckpointError(
            f"key name {_quote(name)} contains a space or '+', which signed notes forbid"
        )


def _quote(value: str, limit: int = 80) -> str:
    """``repr`` of ``value``, cut short: messages must stay readable for hostile input."""
    return repr(value if len(value) <= limit else value[:limit] + "…")

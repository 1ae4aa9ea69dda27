"""Check the gateway's record without trusting the gateway: RFC 9162 Merkle proofs.

Anyone holding a signed tree head (a tree size and its root) can check, with
this file alone, that an entry is in the record (an inclusion proof) and that a
later tree head only appended to an earlier one (a consistency proof). The file
imports nothing but the Python standard library on purpose: an auditor copies
it next to an export and runs it, with no need to install or trust didgw.

The hashes are those of RFC 9162 §2.1.1 with SHA-256:

- a leaf is ``SHA-256(0x00 || data)``, an interior node ``SHA-256(0x01 || left
  || right)``, so a leaf can never be passed off as a node;
- the empty tree's root is ``SHA-256()`` (the hash of no bytes).

Next to the tree, every entry of the record also carries a hash chain, which
lets an export be checked line by line: ``chain_hash(prev, leaf) =
SHA-256(prev || leaf)``, starting from ``GENESIS`` (32 zero bytes) for entry 0.
``entry_bytes`` gives the bytes an entry's leaf covers.

Every refusal is a :class:`ProofError` whose message says what did not hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
GENESIS = bytes(HASH_SIZE)

__all__ = [
    "EMPTY_ROOT",
    "GENESIS",
    "HASH_SIZE",
    "ProofError",
    "chain_hash",
    "entry_bytes",
    "hash_from_hex",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion",
    "verify_consistency",
    "verify_inclusion",
]


class ProofError(ValueError):
    """A proof, a hash or a tree size does not verify; the message says which and why."""


def leaf_hash(data: bytes) -> bytes:
    """The Merkle tree hash of one entry: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def chain_hash(prev_hash: bytes, leaf: bytes) -> bytes:
    """The next link of the entry hash chain: ``SHA-256(prev_hash || leaf)``."""
    return hashlib.sha256(prev_hash + leaf).digest()


def hash_from_hex(text: str) -> bytes:
    """A 32-byte hash from its 64 hex digits, as exports and tree heads write it."""
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise ProofError(f"{text!r} is not a hex string") from None
    _check_hash("hash", value)
    return value


def _check_hash(what: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes; a SHA-256 hash is {HASH_SIZE}")


def _check_path(path: Sequence[bytes]) -> None:
    for i, element in enumerate(path):
        _check_hash(f"path[{i}]", element)


def root_from_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, path: Sequence[bytes]
) -> bytes:
    """The root that ``path`` leads to from the leaf at ``index`` (RFC 9162 §2.1.3.2, steps 1-4).

    Raises :class:`ProofError` when the index is outside the tree or the path has
    the wrong length for it; the root itself is for the caller to compare.
    """
    _check_hash("leaf hash", leaf_hash)
    _check_path(path)
    # 1. leaf_index must be below tree_size.
    if not 0 <= index < tree_size:
        raise ProofError(f"leaf index {index} is outside a tree of {tree_size} leaves")
    # 2.-3. fn, sn and the running hash r.
    fn, sn, r = index, tree_size - 1, leaf_hash
    # 4. Fold in each path element, on the side the bits of fn and sn say.
    for used, p in enumerate(path):
        if sn == 0:
            raise ProofError(
                f"inclusion path has {len(path)} hashes; leaf {index} of a tree of "
                f"{tree_size} needs {used}"
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    # 5. (first half) The path must reach the root level exactly.
    if sn != 0:
        raise ProofError(
            f"inclusion path has {len(path)} hashes, too few to reach the root of a "
            f"tree of {tree_size} from leaf {index}"
        )
    return r


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, path: Sequence[bytes], root: bytes
) -> None:
    """Check that the leaf at ``index`` is in the tree of ``tree_size`` leaves with ``root``.

    RFC 9162 §2.1.3.2. Returns nothing on success; raises :class:`ProofError`.
    """
    _check_hash("root", root)
    computed = root_from_inclusion(leaf_hash, index, tree_size, path)
    # 5. (second half) r must equal the root.
    if computed != root:
        raise ProofError(
            f"root mismatch: the inclusion path for leaf {index} leads to {computed.hex()}, "
            f"not to the root {root.hex()} of the tree of {tree_size}"
        )


def verify_consistency(
    size1: int, size2: int, path: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree of ``size2`` leaves with ``root2`` extends the one of ``size1``.

    RFC 9162 §2.1.4.2 for ``0 < size1 < size2``. The RFC defines a consistency
    proof only for that case; the two cases where there is nothing to prove
    follow from its definitions and need an empty path:

    - ``size1 == size2``: the same tree, so the roots must be equal
      (``SUBPROOF(m, D[m], true) = {}``);
    - ``size1 == 0``: the empty tree is a prefix of every tree, and its root is
      ``MTH({}) = SHA-256()``, so ``root1`` must be that.

    Returns nothing on success; raises :class:`ProofError`.
    """
    _check_hash("first root", root1)
    _check_hash("second root", root2)
    _check_path(path)
    if not 0 <= size1 <= size2:
        raise ProofError(f"tree sizes {size1} and {size2}: need 0 <= first <= second")
    if size1 in (0, size2):
        _verify_trivial_consistency(size1, size2, path, root1, root2)
        return
    fr, sr = _roots_from_consistency(size1, size2, path, root1)
    # 7. fr must be the first root and sr the second (sn == 0 is checked above).
    if fr != root1:
        raise ProofError(
            f"first root mismatch: the consistency path leads to {fr.hex()} for size "
            f"{size1}, not to {root1.hex()}"
        )
    if sr != root2:
        raise ProofError(
            f"second root mismatch: the consistency path leads to {sr.hex()} for size "
            f"{size2}, not to {root2.hex()}"
        )


def _verify_trivial_consistency(
    size1: int, size2: int, path: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    if path:
        raise ProofError(
            f"consistency path from size {size1} to {size2} must be empty, "
            f"it has {len(path)} hashes"
        )
    if size1 == 0 and root1 != EMPTY_ROOT:
        raise ProofError(
            f"root mismatch: the empty tree's root is {EMPTY_ROOT.hex()}, not {root1.hex()}"
        )
    if size1 == size2 and root1 != root2:
        raise ProofError(
            f"root mismatch: two roots of the same tree size {size1} differ "
            f"({root1.hex()} and {root2.hex()})"
        )


def _roots_from_consistency(
    first: int, second: int, consistency_path: Sequence[bytes], first_hash: bytes
) -> tuple[bytes, bytes]:
    """RFC 9162 §2.1.4.2 steps 1-6 and the ``sn == 0`` check of step 7: (fr, sr)."""
    # 1. An empty path proves nothing when 0 < first < second.
    if not consistency_path:
        raise ProofError(f"consistency path from size {first} to {second} is empty")
    # 2. When first is a power of 2 its root is a node of the second tree: prepend it.
    path = list(consistency_path)
    if first & (first - 1) == 0:
        path.insert(0, first_hash)
    prepended = len(path) - len(consistency_path)
    # 3.-4. fn and sn, with fn's trailing 1 bits (levels shared with the proof) shifted out.
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    # 5. Both running hashes start from the first value.
    fr = sr = path[0]
    # 6. Fold in each subsequent value.
    for used, c in enumerate(path[1:], start=1):
        if sn == 0:
            raise ProofError(
                f"consistency path from size {first} to {second} is too long: it has "
                f"{len(consistency_path)} hashes, only {used - prepended} are needed"
            )
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    # 7. (first part) The path must reach the root of the second tree exactly.
    if sn != 0:
        raise ProofError(
            f"consistency path from size {first} to {second} is too short: "
            f"{len(consistency_path)} hashes do not reach the root"
        )
    return fr, sr


def entry_bytes(ts_ms: int, kind: str, actor: str, commitment: bytes) -> bytes:
    """The bytes a record entry's Merkle leaf covers: ``leaf_hash(entry_bytes(...))``.

    ``ts_ms`` as 8 bytes big-endian (signed), ``kind`` as 1 length byte + ASCII,
    ``actor`` (a DID) as 2 length bytes big-endian + UTF-8, then the 32-byte
    commitment ``SHA-256(salt || payload)``. Length prefixes make the encoding
    unambiguous; the entry's position is bound by the tree and the chain, not here.
    """
    kind_b, actor_b = kind.encode("ascii"), actor.encode("utf-8")
    _check_hash("commitment", commitment)
    if len(kind_b) > 0xFF or len(actor_b) > 0xFFFF:
        raise ValueError("kind or actor too long for an entry")
    return b"".join(
        (
            ts_ms.to_bytes(8, "big", signed=True),
            len(kind_b).to_bytes(1, "big"),
            kind_b,
            len(actor_b).to_bytes(2, "big"),
            actor_b,
            commitment,
        )
    )

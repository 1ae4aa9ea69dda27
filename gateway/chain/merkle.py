"""The Merkle tree of the record: appending leaves and answering RFC 9162 proofs.

The record grows by one leaf per accepted entry, for years, on a Raspberry Pi.
So nothing here walks the whole log:

- :class:`Frontier` keeps only the right edge of the tree (one perfect subtree
  per set bit of the size). Appending a leaf costs O(log n) hashes, never
  rehashes old leaves, and reports the perfect subtrees it completed so the
  store can keep them as ``(level, index) -> hash`` rows.
- Proofs are generated against a ``SubtreeHash`` callback instead of a list of
  leaves. The proof algorithms below only ever ask it for two kinds of range,
  and the store can answer both from the rows it kept:

  * a perfect subtree: ``end - start == 2**level`` and ``start`` a multiple of
    it, i.e. the node ``(level, start >> level)``;
  * a range on the right edge of the tree being proved, ``[start, tree_size)``
    (``tree_size`` is ``size2`` for a consistency proof), whose ``start`` is a
    multiple of a power of two at least as large as the range, so every piece
    of its split is again a perfect subtree (``subtree_from_nodes`` composes
    them).

  Every such perfect subtree lies below ``tree_size``, so ``Frontier.append``
  reported it when its last leaf arrived.

:func:`mth` is the RFC's recursive definition, kept as the reference the tests
compare everything against. Verification lives in :mod:`gateway.chain.verify`
so that it can be copied out alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway.chain.verify import EMPTY_ROOT, HASH_SIZE, node_hash

#: ``subtree(start, end)`` is MTH of the leaves ``[start, end)`` (never empty).
SubtreeHash = Callable[[int, int], bytes]
#: ``get_node(level, index)`` is the stored hash of the perfect subtree over
#: leaves ``[index * 2**level, (index + 1) * 2**level)``, or None if not stored.
GetNode = Callable[[int, int], bytes | None]
#: ``get_leaf(i)`` is the leaf hash of entry ``i``.
GetLeaf = Callable[[int], bytes]

__all__ = [
    "Frontier",
    "GetLeaf",
    "GetNode",
    "SubtreeHash",
    "consistency_path",
    "inclusion_path",
    "mth",
    "root",
    "subtree_from_nodes",
]


def _split(size: int) -> int:
    """The largest power of two smaller than ``size`` (``size > 1``): RFC 9162's k."""
    return 1 << ((size - 1).bit_length() - 1)


def mth(leaves: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash of a list of leaf hashes, by RFC 9162 §2.1.1's recursion.

    The inputs are leaf hashes (``leaf_hash(data)``), not entry data. O(n) hashes;
    meant as a reference and for small trees.
    """
    return _mth(leaves, 0, len(leaves))


def _mth(leaves: Sequence[bytes], start: int, end: int) -> bytes:
    size = end - start
    if size == 0:
        return EMPTY_ROOT
    if size == 1:
        return leaves[start]
    k = _split(size)
    return node_hash(_mth(leaves, start, start + k), _mth(leaves, start + k, end))


def root(tree_size: int, subtree: SubtreeHash) -> bytes:
    """The root of the tree of ``tree_size`` leaves (``SHA-256()`` for the empty tree)."""
    if tree_size < 0:
        raise ValueError(f"tree size {tree_size} is negative")
    return subtree(0, tree_size) if tree_size else EMPTY_ROOT


def inclusion_path(index: int, tree_size: int, subtree: SubtreeHash) -> list[bytes]:
    """The inclusion proof ``PATH(index, D[tree_size])`` of RFC 9162 §2.1.3.1.

    Leaf side first, root side last, as :func:`~gateway.chain.verify.verify_inclusion`
    expects. One callback call per level: ``ceil(log2(tree_size))`` at most.
    """
    if not 0 <= index < tree_size:
        raise ValueError(f"leaf index {index} is outside a tree of {tree_size} leaves")
    path: list[bytes] = []
    start, end = 0, tree_size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:  # PATH(m, D[0:k]) : MTH(D[k:n])
            path.append(subtree(start + k, end))
            end = start + k
        else:  # PATH(m - k, D[k:n]) : MTH(D[0:k])
            path.append(subtree(start, start + k))
            start += k
    path.reverse()
    return path


def consistency_path(size1: int, size2: int, subtree: SubtreeHash) -> list[bytes]:
    """The consistency proof ``PROOF(size1, D[size2])`` of RFC 9162 §2.1.4.1.

    Empty when there is nothing to prove (``size1 == size2`` or ``size1 == 0``),
    which is what :func:`~gateway.chain.verify.verify_consistency` expects then.
    """
    if not 0 <= size1 <= size2:
        raise ValueError(f"tree sizes {size1} and {size2}: need 0 <= first <= second")
    if size1 in (0, size2):
        return []
    path: list[bytes] = []
    start, end, m, known = 0, size2, size1, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:  # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            path.append(subtree(start + k, end))
            end = start + k
        else:  # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            path.append(subtree(start, start + k))
            start, m, known = start + k, m - k, False
    if not known:  # SUBPROOF(m, D[m], false) = {MTH(D[m])}
        path.append(subtree(start, end))
    path.reverse()
    return path


def subtree_from_nodes(start: int, end: int, get_node: GetNode, get_leaf: GetLeaf) -> bytes:
    """MTH of the leaves ``[start, end)`` from stored perfect subtrees.

    Every piece of the RFC's split that is a perfect, aligned subtree is looked
    up with ``get_node``; pieces not stored are split further, down to
    ``get_leaf``. For the ranges the proof functions ask for, every piece is
    aligned, so this costs O(log n) lookups and hashes, plus ``2**L`` leaves
    per piece when only levels ``L`` and above are stored.
    """
    if not 0 <= start < end:
        raise ValueError(f"leaf range [{start}, {end}) is empty or negative")
    size = end - start
    if size & (size - 1) == 0 and start % size == 0:
        level = size.bit_length() - 1
        stored = get_node(level, start >> level)
        if stored is not None:
            return stored
    if size == 1:
        return get_leaf(start)
    k = _split(size)
    return node_hash(
        subtree_from_nodes(start, start + k, get_node, get_leaf),
        subtree_from_nodes(start + k, end, get_node, get_leaf),
    )


class Frontier:
    """The right edge of the tree: the hashes needed to append and to compute the root.

    For a tree of n leaves it holds one perfect subtree per set bit of n, largest
    (leftmost) first, so at most ``n.bit_length()`` hashes.
    """

    def __init__(self) -> None:
        self._size = 0
        self._edge: list[tuple[int, bytes]] = []  # (level, hash), levels decreasing

    @property
    def size(self) -> int:
        """How many leaves have been appended."""
        return self._size

    @property
    def nodes(self) -> list[tuple[int, int, bytes]]:
        """The right edge as ``(level, index, hash)``, leftmost first."""
        out: list[tuple[int, int, bytes]] = []
        offset = 0
        for level, value in self._edge:
            out.append((level, offset >> level, value))
            offset += 1 << level
        return out

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf; return every perfect subtree it completes, the leaf first.

        Each is ``(level, index, hash)`` for the leaves ``[index * 2**level,
        (index + 1) * 2**level)``; the leaf itself is ``(0, n, leaf_hash)``. Costs
        one hash per trailing 1 bit of the old size: O(log n), amortised O(1).
        """
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, not {len(leaf_hash)}")
        index, level, value = self._size, 0, leaf_hash
        completed = [(0, index, value)]
        while self._edge and self._edge[-1][0] == level:
            _, left = self._edge.pop()
            value = node_hash(left, value)
            level, index = level + 1, index >> 1
            completed.append((level, index, value))
        self._edge.append((level, value))
        self._size += 1
        return completed

    def root(self) -> bytes:
        """MTH of every leaf appended so far: the edge folded from right to left."""
        if not self._edge:
            return EMPTY_ROOT
        value = self._edge[-1][1]
        for _, left in reversed(self._edge[:-1]):
            value = node_hash(left, value)
        return value

    @classmethod
    def from_nodes(cls, size: int, get_node: GetNode) -> Frontier:
        """Rebuild the frontier of a tree of ``size`` leaves from stored perfect subtrees.

        Reads one node per set bit of ``size``; raises LookupError if one is missing.
        """
        if size < 0:
            raise ValueError(f"tree size {size} is negative")
        frontier = cls()
        offset = 0
        for level in reversed(range(size.bit_length())):
            if not size >> level & 1:
                continue
            value = get_node(level, offset >> level)
            if value is None:
                raise LookupError(
                    f"node (level {level}, index {offset >> level}) of a tree of {size} "
                    "leaves is not stored"
                )
            frontier._edge.append((level, value))
            offset += 1 << level
        frontier._size = size
        return frontier

"""The record's Merkle tree: RFC 9162 and Certificate Transparency vectors, every tree to 64."""

from __future__ import annotations

import ast
import functools
import hashlib
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import load_vectors

from gateway.chain import merkle, verify
from gateway.chain.merkle import (
    Frontier,
    consistency_path,
    inclusion_path,
    mth,
    root,
    subtree_from_nodes,
)
from gateway.chain.verify import (
    EMPTY_ROOT,
    GENESIS,
    ProofError,
    chain_hash,
    hash_from_hex,
    leaf_hash,
    node_hash,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)

TREE = load_vectors("rfc9162/tree.json")
PROOFS = load_vectors("rfc9162/proofs.json")
HASHES = load_vectors("rfc9162/hashes.json")

CT_LEAVES = [leaf_hash(bytes.fromhex(data)) for data in TREE["leaves"]]
CT_ROOTS = [bytes.fromhex(value) for value in TREE["roots"]]

MAX_SIZE = 64
LEAVES = [leaf_hash(f"entry {i}".encode()) for i in range(MAX_SIZE)]
SOME_HASH = hashlib.sha256(b"not in any tree").digest()


def h(value: str) -> bytes:
    return bytes.fromhex(value)


@functools.cache
def brute_mth(start: int, end: int) -> bytes:
    """MTH of LEAVES[start:end] by the reference recursion (cached: it is called a lot)."""
    return mth(LEAVES[start:end])


def checked_subtree(tree_size: int, leaves: list[bytes] | None = None) -> merkle.SubtreeHash:
    """A brute-force subtree callback that also checks the documented contract.

    The proof functions may only ask for perfect aligned subtrees or ranges on
    the right edge of the tree whose start is aligned to a power of two at least
    their size.
    """

    def subtree(start: int, end: int) -> bytes:
        assert 0 <= start < end <= tree_size
        size = end - start
        perfect = size & (size - 1) == 0 and start % size == 0
        right_edge = end == tree_size and start % (1 << (size - 1).bit_length()) == 0
        assert perfect or right_edge, (start, end, tree_size)
        if leaves is None:
            return brute_mth(start, end)
        return mth(leaves[start:end])

    return subtree


def grow(leaves: list[bytes]) -> tuple[Frontier, dict[tuple[int, int], bytes]]:
    """Append every leaf; return the frontier and every node ``append`` reported."""
    frontier = Frontier()
    stored: dict[tuple[int, int], bytes] = {}
    for leaf in leaves:
        for level, index, value in frontier.append(leaf):
            assert (level, index) not in stored
            stored[level, index] = value
    return frontier, stored


def getter(stored: dict[tuple[int, int], bytes]) -> merkle.GetNode:
    return lambda level, index: stored.get((level, index))


# --- Vectors: RFC 6962/9162 hashing as the Certificate Transparency implementations test it


@pytest.mark.parametrize("vector", HASHES, ids=[v["name"] for v in HASHES])
def test_hash_function_vector(vector: dict[str, str]) -> None:
    if vector["function"] == "empty_root":
        got = EMPTY_ROOT
    elif vector["function"] == "leaf_hash":
        got = leaf_hash(h(vector["data"]))
    else:
        got = node_hash(h(vector["left"]), h(vector["right"]))
    assert got.hex() == vector["want"]


@pytest.mark.parametrize("size", range(len(CT_ROOTS)))
def test_ct_root_of_every_size(size: int) -> None:
    assert mth(CT_LEAVES[:size]) == CT_ROOTS[size]
    frontier, _ = grow(CT_LEAVES[:size])
    assert frontier.root() == CT_ROOTS[size]
    assert root(size, checked_subtree(size, CT_LEAVES)) == CT_ROOTS[size]


def test_ct_leaf_hashes_and_every_node_reported_by_append() -> None:
    _, stored = grow(CT_LEAVES)
    expected = {
        (level, index): h(value)
        for level, row in enumerate(TREE["nodes"])
        for index, value in enumerate(row)
    }
    assert stored == expected
    assert [h(value) for value in TREE["nodes"][0]] == CT_LEAVES


@pytest.mark.parametrize("size", range(len(TREE["compact_ranges"])))
def test_ct_frontier_holds_the_compact_range(size: int) -> None:
    frontier, stored = grow(CT_LEAVES[:size])
    expected = [(level, index) for level, index in TREE["compact_ranges"][size]]
    assert [(level, index) for level, index, _ in frontier.nodes] == expected
    assert [value for _, _, value in frontier.nodes] == [stored[node] for node in expected]


@pytest.mark.parametrize(
    "vector",
    PROOFS["inclusion"],
    ids=[f"leaf{v['index']}-of-{v['tree_size']}" for v in PROOFS["inclusion"]],
)
def test_ct_inclusion_vector(vector: dict[str, Any]) -> None:
    index, size = vector["index"], vector["tree_size"]
    path = [h(value) for value in vector["path"]]
    assert inclusion_path(index, size, checked_subtree(size, CT_LEAVES)) == path
    assert root_from_inclusion(CT_LEAVES[index], index, size, path) == CT_ROOTS[size]
    verify_inclusion(CT_LEAVES[index], index, size, path, CT_ROOTS[size])


@pytest.mark.parametrize(
    "vector",
    PROOFS["consistency"],
    ids=[f"{v['size1']}-to-{v['size2']}" for v in PROOFS["consistency"]],
)
def test_ct_consistency_vector(vector: dict[str, Any]) -> None:
    size1, size2 = vector["size1"], vector["size2"]
    path = [h(value) for value in vector["path"]]
    assert consistency_path(size1, size2, checked_subtree(size2, CT_LEAVES)) == path
    verify_consistency(size1, size2, path, CT_ROOTS[size1], CT_ROOTS[size2])


# --- RFC 9162 §2.1.5: the 7-leaf example tree, its named nodes and proofs

RFC_NODES = {
    "a": (0, 1), "b": (1, 2), "c": (2, 3), "d": (3, 4), "e": (4, 5), "f": (5, 6),
    "j": (6, 7), "g": (0, 2), "h": (2, 4), "i": (4, 6), "k": (0, 4), "l": (4, 7),
}  # fmt: skip


def rfc_nodes(names: str) -> list[bytes]:
    return [mth(CT_LEAVES[slice(*RFC_NODES[name])]) for name in names]


@pytest.mark.parametrize(("index", "names"), [(0, "bhl"), (3, "cgl"), (4, "fjk"), (6, "ik")])
def test_rfc9162_example_inclusion_proofs(index: int, names: str) -> None:
    path = inclusion_path(index, 7, checked_subtree(7, CT_LEAVES))
    assert path == rfc_nodes(names)
    verify_inclusion(CT_LEAVES[index], index, 7, path, CT_ROOTS[7])


@pytest.mark.parametrize(("size1", "names"), [(3, "cdgl"), (4, "l"), (6, "ijk")])
def test_rfc9162_example_consistency_proofs(size1: int, names: str) -> None:
    path = consistency_path(size1, 7, checked_subtree(7, CT_LEAVES))
    assert path == rfc_nodes(names)
    verify_consistency(size1, 7, path, CT_ROOTS[size1], CT_ROOTS[7])


# --- Every tree up to 64 leaves, against the reference recursion


@pytest.mark.parametrize("size", range(1, MAX_SIZE + 1))
def test_inclusion_proof_of_every_leaf_verifies(size: int) -> None:
    tree_root = brute_mth(0, size)
    for index in range(size):
        path = inclusion_path(index, size, checked_subtree(size))
        assert len(path) <= (size - 1).bit_length()
        verify_inclusion(LEAVES[index], index, size, path, tree_root)


@pytest.mark.parametrize("size2", range(1, MAX_SIZE + 1))
def test_consistency_proof_from_every_smaller_size_verifies(size2: int) -> None:
    for size1 in range(size2 + 1):
        path = consistency_path(size1, size2, checked_subtree(size2))
        assert len(path) <= (size2 - 1).bit_length() + 1
        root1 = brute_mth(0, size1) if size1 else EMPTY_ROOT
        verify_consistency(size1, size2, path, root1, brute_mth(0, size2))


def test_frontier_root_and_rebuild_at_every_size() -> None:
    frontier = Frontier()
    stored: dict[tuple[int, int], bytes] = {}
    assert frontier.root() == EMPTY_ROOT == Frontier.from_nodes(0, getter(stored)).root()
    for size, leaf in enumerate(LEAVES, start=1):
        completed = frontier.append(leaf)
        assert completed[0] == (0, size - 1, leaf)
        stored.update(((level, index), value) for level, index, value in completed)
        assert frontier.size == size
        assert frontier.root() == brute_mth(0, size)
        rebuilt = Frontier.from_nodes(size, getter(stored))
        assert rebuilt.size == size
        assert rebuilt.nodes == frontier.nodes
        assert rebuilt.root() == frontier.root()


def test_perfect_subtree_is_reported_exactly_when_complete() -> None:
    _, stored = grow(LEAVES)
    for (level, index), value in stored.items():
        start = index << level
        assert value == brute_mth(start, start + (1 << level))
    # Every aligned perfect subtree of 64 leaves: 64 + 32 + ... + 1.
    assert len(stored) == 2 * MAX_SIZE - 1


@pytest.mark.parametrize("size", [1, 5, 8, 13, 32, 47])
def test_rebuilt_frontier_keeps_appending(size: int) -> None:
    _, stored = grow(LEAVES[:size])
    frontier = Frontier.from_nodes(size, getter(stored))
    for leaf in LEAVES[size:]:
        for level, index, value in frontier.append(leaf):
            stored[level, index] = value
    assert frontier.root() == brute_mth(0, MAX_SIZE)
    assert stored == grow(LEAVES)[1]


def test_subtree_from_nodes_equals_mth_for_random_ranges() -> None:
    _, stored = grow(LEAVES)
    # Only some levels stored: the rest must be composed from smaller pieces.
    sparse = {node: value for node, value in stored.items() if node[0] in (0, 3)}
    rng = random.Random(9162)
    ranges = [(0, MAX_SIZE), (5, 6), (63, 64), (1, 64)]
    for _ in range(300):
        start = rng.randrange(MAX_SIZE)
        ranges.append((start, rng.randrange(start + 1, MAX_SIZE + 1)))
    for start, end in ranges:
        want = brute_mth(start, end)
        assert subtree_from_nodes(start, end, getter(stored), LEAVES.__getitem__) == want
        assert subtree_from_nodes(start, end, getter(sparse), LEAVES.__getitem__) == want
        assert subtree_from_nodes(start, end, getter({}), LEAVES.__getitem__) == want


def test_proofs_from_stored_nodes_never_touch_leaves_or_rehash_the_log() -> None:
    _, stored = grow(LEAVES)
    lookups: list[tuple[int, int]] = []

    def get_node(level: int, index: int) -> bytes | None:
        lookups.append((level, index))
        return stored.get((level, index))

    def get_leaf(i: int) -> bytes:
        raise AssertionError(f"leaf {i} read although every node is stored")

    def subtree(start: int, end: int) -> bytes:
        return subtree_from_nodes(start, end, get_node, get_leaf)

    for size in range(1, MAX_SIZE + 1):
        for index in range(size):
            lookups.clear()
            path = inclusion_path(index, size, subtree)
            assert path == inclusion_path(index, size, checked_subtree(size))
            # O(log n): at most one stored node per level on each side.
            assert len(lookups) <= 2 * size.bit_length()
        for size1 in range(1, size):
            want = consistency_path(size1, size, checked_subtree(size))
            assert consistency_path(size1, size, subtree) == want
        assert root(size, subtree) == brute_mth(0, size)


def test_append_costs_one_hash_per_completed_subtree(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0

    def counting_node_hash(left: bytes, right: bytes) -> bytes:
        nonlocal calls
        calls += 1
        return node_hash(left, right)

    monkeypatch.setattr(merkle, "node_hash", counting_node_hash)
    frontier = Frontier()
    total = 1024
    for n in range(total):
        calls = 0
        completed = frontier.append(leaf_hash(n.to_bytes(4, "big")))
        trailing_ones = (n ^ (n + 1)).bit_length() - 1
        assert calls == trailing_ones == len(completed) - 1
        assert calls <= n.bit_length()
        calls = 0
        frontier.root()
        assert calls < (n + 1).bit_length()
    assert frontier.size == total


def test_from_nodes_reads_one_node_per_set_bit() -> None:
    _, stored = grow(LEAVES[:45])
    asked: list[tuple[int, int]] = []

    def get_node(level: int, index: int) -> bytes | None:
        asked.append((level, index))
        return stored.get((level, index))

    Frontier.from_nodes(45, get_node)  # 45 = 32 + 8 + 4 + 1
    assert asked == [(5, 0), (3, 4), (2, 10), (0, 44)]


# --- Refusals: every corruption of a good proof is a ProofError


def inclusion_corruptions(index: int, size: int) -> list[tuple[str, dict[str, Any]]]:
    path = [h(value) for value in _inclusion_vector(index, size)["path"]]
    cases: list[tuple[str, dict[str, Any]]] = [
        ("index-1", {"index": index - 1}),
        ("index+1", {"index": index + 1}),
        ("index^2", {"index": index ^ 2}),
        ("index=size", {"index": size}),
        ("size*2", {"tree_size": size * 2}),
        ("size//2", {"tree_size": size // 2}),
        ("wrong-leaf", {"leaf_hash": leaf_hash(b"WrongLeaf")}),
        ("wrong-root", {"root": SOME_HASH}),
        ("empty-tree-root", {"root": EMPTY_ROOT}),
        ("trailing-zero-hash", {"path": [*path, bytes(32)]}),
        ("trailing-root", {"path": [*path, CT_ROOTS[size]]}),
        ("preceding-root", {"path": [CT_ROOTS[size], *path]}),
        ("last-removed", {"path": path[:-1]}),
        ("first-removed", {"path": path[1:]}),
        ("inserted", {"path": [path[0], SOME_HASH, *path[1:]]}),
    ]
    for i in range(len(path)):
        flipped = [bytearray(value) for value in path]
        flipped[i][0] ^= 8
        cases.append((f"bit-flipped-in-path[{i}]", {"path": [bytes(v) for v in flipped]}))
    return cases


def _inclusion_vector(index: int, size: int) -> dict[str, Any]:
    return next(v for v in PROOFS["inclusion"] if (v["index"], v["tree_size"]) == (index, size))


INCLUSION_BASES = [(5, 8), (1, 5), (2, 3)]


@pytest.mark.parametrize(
    ("index", "size", "change"),
    [
        pytest.param(index, size, change, id=f"leaf{index}-of-{size}-{name}")
        for index, size in INCLUSION_BASES
        for name, change in inclusion_corruptions(index, size)
    ],
)
def test_corrupted_inclusion_proof_is_refused(
    index: int, size: int, change: dict[str, Any]
) -> None:
    args: dict[str, Any] = {
        "leaf_hash": CT_LEAVES[index],
        "index": index,
        "tree_size": size,
        "path": [h(value) for value in _inclusion_vector(index, size)["path"]],
        "root": CT_ROOTS[size],
    }
    verify_inclusion(**args)
    with pytest.raises(ProofError):
        verify_inclusion(**(args | change))


def consistency_corruptions(size1: int, size2: int) -> list[tuple[str, dict[str, Any]]]:
    path = [h(value) for value in _consistency_vector(size1, size2)["path"]]
    root1, root2 = CT_ROOTS[size1], CT_ROOTS[size2]
    cases: list[tuple[str, dict[str, Any]]] = [
        ("size1-1", {"size1": size1 - 1}),
        ("size1+1", {"size1": size1 + 1}),
        ("size1^2", {"size1": size1 ^ 2}),
        ("size2*2", {"size2": size2 * 2}),
        ("size2//2", {"size2": size2 // 2}),
        ("wrong-root1", {"root1": SOME_HASH}),
        ("wrong-root2", {"root2": SOME_HASH}),
        ("swapped-roots", {"root1": root2, "root2": root1}),
        ("empty-path", {"path": []}),
        ("trailing-zero-hash", {"path": [*path, bytes(32)]}),
        ("trailing-root1", {"path": [*path, root1]}),
        ("trailing-root2", {"path": [*path, root2]}),
        ("preceding-root1", {"path": [root1, *path]}),
        ("preceding-path[0]", {"path": [path[0], *path]}),
        ("last-removed", {"path": path[:-1]}),
        ("first-removed", {"path": path[1:]}),
    ]
    for i in range(len(path)):
        flipped = [bytearray(value) for value in path]
        flipped[i][0] ^= 16
        cases.append((f"bit-flipped-in-path[{i}]", {"path": [bytes(v) for v in flipped]}))
    return cases


def _consistency_vector(size1: int, size2: int) -> dict[str, Any]:
    return next(v for v in PROOFS["consistency"] if (v["size1"], v["size2"]) == (size1, size2))


CONSISTENCY_BASES = [(1, 8), (6, 8), (2, 5), (6, 7)]


@pytest.mark.parametrize(
    ("size1", "size2", "change"),
    [
        pytest.param(size1, size2, change, id=f"{size1}-to-{size2}-{name}")
        for size1, size2 in CONSISTENCY_BASES
        for name, change in consistency_corruptions(size1, size2)
    ],
)
def test_corrupted_consistency_proof_is_refused(
    size1: int, size2: int, change: dict[str, Any]
) -> None:
    args: dict[str, Any] = {
        "size1": size1,
        "size2": size2,
        "path": [h(value) for value in _consistency_vector(size1, size2)["path"]],
        "root1": CT_ROOTS[size1],
        "root2": CT_ROOTS[size2],
    }
    verify_consistency(**args)
    with pytest.raises(ProofError):
        verify_consistency(**(args | change))


A, B = CT_ROOTS[3], CT_ROOTS[5]


@pytest.mark.parametrize(
    ("sizes", "path", "roots", "message"),
    [
        ((0, 0), [], (EMPTY_ROOT, EMPTY_ROOT), None),
        ((0, 5), [], (EMPTY_ROOT, B), None),
        ((3, 3), [], (A, A), None),
        ((0, 5), [], (A, B), "empty tree's root"),
        ((0, 5), [A], (EMPTY_ROOT, B), "must be empty"),
        ((0, 0), [], (EMPTY_ROOT, A), "same tree size"),
        ((3, 3), [], (A, B), "same tree size"),
        ((3, 3), [A], (A, A), "must be empty"),
        ((5, 3), [A], (B, A), "need 0 <= first <= second"),
        ((-1, 3), [], (A, A), "need 0 <= first <= second"),
        ((1, 2), [], (CT_ROOTS[1], CT_ROOTS[2]), "is empty"),
    ],
)
def test_consistency_when_there_is_nothing_to_prove(
    sizes: tuple[int, int], path: list[bytes], roots: tuple[bytes, bytes], message: str | None
) -> None:
    if message is None:
        verify_consistency(*sizes, path, *roots)
    else:
        with pytest.raises(ProofError, match=message):
            verify_consistency(*sizes, path, *roots)


def test_inclusion_refusals_say_what_failed() -> None:
    path = [h(value) for value in _inclusion_vector(5, 8)["path"]]
    leaf, tree_root = CT_LEAVES[5], CT_ROOTS[8]
    with pytest.raises(ProofError, match="leaf index 8 is outside a tree of 8 leaves"):
        verify_inclusion(leaf, 8, 8, path, tree_root)
    with pytest.raises(ProofError, match="leaf index -1 is outside"):
        verify_inclusion(leaf, -1, 8, path, tree_root)
    with pytest.raises(ProofError, match="has 4 hashes; leaf 5 of a tree of 8 needs 3"):
        verify_inclusion(leaf, 5, 8, [*path, SOME_HASH], tree_root)
    with pytest.raises(ProofError, match="has 2 hashes, too few"):
        verify_inclusion(leaf, 5, 8, path[:2], tree_root)
    with pytest.raises(ProofError, match="root mismatch"):
        verify_inclusion(leaf, 4, 8, path, tree_root)
    with pytest.raises(ProofError, match="tree of 0 leaves"):
        verify_inclusion(leaf, 0, 0, [], EMPTY_ROOT)


def test_consistency_refusals_say_what_failed() -> None:
    path = [h(value) for value in _consistency_vector(6, 8)["path"]]
    root6, root8 = CT_ROOTS[6], CT_ROOTS[8]
    with pytest.raises(ProofError, match="too long: it has 4 hashes, only 3 are needed"):
        verify_consistency(6, 8, [*path, SOME_HASH], root6, root8)
    with pytest.raises(ProofError, match="too short"):
        verify_consistency(6, 8, path[:2], root6, root8)
    with pytest.raises(ProofError, match="first root mismatch"):
        verify_consistency(6, 8, path, CT_ROOTS[5], root8)
    with pytest.raises(ProofError, match="second root mismatch"):
        verify_consistency(6, 8, path, root6, CT_ROOTS[7])


@pytest.mark.parametrize(
    "call",
    [
        lambda: verify_inclusion(b"short", 0, 1, [], b"short"),
        lambda: verify_inclusion(CT_LEAVES[0], 0, 1, [], CT_ROOTS[1][:31]),
        lambda: verify_inclusion(CT_LEAVES[0], 0, 2, [b""], CT_ROOTS[2]),
        lambda: verify_consistency(1, 2, [CT_LEAVES[1] + b"\x00"], CT_ROOTS[1], CT_ROOTS[2]),
        lambda: verify_consistency(1, 1, [], b"", b""),
    ],
    ids=["short-leaf", "short-root", "empty-path-element", "long-path-element", "empty-roots"],
)
def test_hashes_that_are_not_32_bytes_are_refused(call: Callable[[], None]) -> None:
    with pytest.raises(ProofError, match="a SHA-256 hash is 32"):
        call()


def test_hash_from_hex() -> None:
    assert hash_from_hex(TREE["roots"][8]) == CT_ROOTS[8]
    with pytest.raises(ProofError, match="not a hex string"):
        hash_from_hex("zz" * 32)
    with pytest.raises(ProofError, match="is 31 bytes"):
        hash_from_hex(TREE["roots"][8][:62])


def test_generation_refuses_impossible_arguments() -> None:
    subtree = checked_subtree(8)
    with pytest.raises(ValueError, match="outside a tree of 8"):
        inclusion_path(8, 8, subtree)
    with pytest.raises(ValueError, match="outside a tree of 8"):
        inclusion_path(-1, 8, subtree)
    with pytest.raises(ValueError, match="need 0 <= first <= second"):
        consistency_path(5, 4, subtree)
    with pytest.raises(ValueError, match="empty"):
        subtree_from_nodes(3, 3, getter({}), LEAVES.__getitem__)
    with pytest.raises(ValueError, match="negative"):
        root(-1, subtree)
    with pytest.raises(ValueError, match="negative"):
        Frontier.from_nodes(-1, getter({}))
    with pytest.raises(ValueError, match="a leaf hash is 32 bytes, not 5"):
        Frontier().append(b"short")
    with pytest.raises(LookupError, match=r"node \(level 1, index 2\) of a tree of 6"):
        Frontier.from_nodes(6, getter({(2, 0): SOME_HASH}))


# --- The hash chain and the stand-alone verifier


def test_chain_hash_starts_from_genesis() -> None:
    assert bytes(32) == GENESIS
    first = chain_hash(GENESIS, CT_LEAVES[1])
    assert first == hashlib.sha256(bytes(32) + CT_LEAVES[1]).digest()
    assert chain_hash(first, CT_LEAVES[2]) == hashlib.sha256(first + CT_LEAVES[2]).digest()


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    left, right = leaf_hash(b"Hello"), leaf_hash(b"World")
    assert node_hash(left, right) != leaf_hash(left + right)
    assert node_hash(left, right) != node_hash(right, left)


def test_verify_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(verify.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import ties verify.py to its package"
            assert node.module is not None
            imported.add(node.module.partition(".")[0])
    assert "hashlib" in imported
    assert imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names

"""The tamper-evident record: the hash chain, its Merkle tree and signed checkpoints.

Sans-IO: ``store`` keeps entries in SQLite through a connection it is handed; ``merkle``,
``check`` and ``checkpoint`` are pure; ``verify`` is the stand-alone verifier (standard
library only). May import the foundations and ``identity``; never an edge.
"""

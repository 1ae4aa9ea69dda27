"""The tamper-evident record: the hash chain, its Merkle tree and signed checkpoints."""

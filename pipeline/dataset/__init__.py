"""A stored dataset: its path rules, Arrow shard formats, manifest and commit records, entropy-model store."""

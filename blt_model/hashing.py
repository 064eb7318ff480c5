"""Hash n-gram ids for the encoder's byte-group embeddings, bit-exact with HF/bytelatent.

For group size g, the id of position t hashes bytes t-g+1..t (zeros before the start) with a polynomial
hash sum(tok_i * prime**i) in wrapping int64 arithmetic, then takes it modulo the table size.
"""

from __future__ import annotations

import torch

HASH_PRIMES = (
    1000000007,
    5915587277,
    1500450271,
    3267000013,
    5754853343,
    4093082899,
    9576890767,
    3628273133,
    2860486313,
    5463458053,
    3367900313,
)


def _wrapped_powers(prime: int, count: int) -> list[int]:
    """prime**i modulo 2**64 as signed int64: what int64 tensor arithmetic produces."""
    out = []
    for i in range(count):
        value = pow(prime, i, 1 << 64)
        out.append(value - (1 << 64) if value >= 1 << 63 else value)
    return out


def byte_group_hash(tokens: torch.Tensor, group_size: int, prime: int, table_size: int) -> torch.Tensor:
    """[B, L] token ids -> [B, L] hash ids in [0, table_size)."""
    padded = torch.nn.functional.pad(tokens.long(), (group_size - 1, 0))
    windows = padded.unfold(1, group_size, 1)  # [B, L, g]
    powers = torch.tensor(_wrapped_powers(prime, group_size), dtype=torch.int64, device=tokens.device)
    return (windows * powers).sum(-1) % table_size


def hash_ngram_ids(
    tokens: torch.Tensor, group_sizes: list[int], nb_functions: int, table_size: int
) -> torch.Tensor:
    """[B, L] -> [B, L, nb_functions * len(group_sizes)] ids into one shared table (each group has its slice)."""
    ids = []
    for func in range(nb_functions):
        prime = HASH_PRIMES[func % len(HASH_PRIMES)]
        for group_size in group_sizes:
            offset = len(ids) * table_size
            ids.append(byte_group_hash(tokens, group_size, prime, table_size) + offset)
    return torch.stack(ids, dim=-1)

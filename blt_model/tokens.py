"""Byte <-> token ids. Same layout as BLT/HF: ids 0..3 are specials, byte b is id b + 4 (vocab 260)."""

from __future__ import annotations

import numpy as np
import torch

BOE_ID = 0  # also used as padding in packed training batches (its loss is masked)
BOS_ID = 1
EOS_ID = 2
BPE_ID = 3
BYTE_OFFSET = 4
VOCAB_SIZE = 256 + BYTE_OFFSET
IGNORE_INDEX = -100


def bytes_to_tokens(data: bytes | bytearray | memoryview | np.ndarray) -> torch.Tensor:
    """bytes -> int64 tensor of token ids (byte + 4)."""
    array = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.astype(np.uint8)
    return torch.from_numpy(array.astype(np.int64) + BYTE_OFFSET)


def tokens_to_bytes(tokens: torch.Tensor) -> bytes:
    """Token ids -> bytes, dropping special ids."""
    values = tokens.flatten().cpu()
    values = values[values >= BYTE_OFFSET] - BYTE_OFFSET
    return bytes(values.to(torch.uint8).tolist())

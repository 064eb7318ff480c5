"""Reading part of a safetensors file: the header (8-byte length + JSON) gives each tensor's byte range, so a
few tensors of a large file (an HF BLT's patcher) cost a few ranged reads, not the whole download."""

from __future__ import annotations

import json

import torch

from .base import CheckpointLayoutError, CheckpointStore

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _safetensors_header(store: CheckpointStore, name: str) -> tuple[dict, int]:
    """(header JSON, byte offset where tensor data starts) from two small ranged reads."""
    head = store.read_ranges(name, [0], [8])[0]
    where = f"{store.location}/{name}"
    if isinstance(head, Exception) or len(head) != 8:
        raise CheckpointLayoutError(f"{where}: not a safetensors file (shorter than 8 bytes)")
    size = int.from_bytes(head, "little")
    if size > 100 << 20:
        raise CheckpointLayoutError(f"{where}: not a safetensors file (header length {size})")
    header = json.loads(store.read_ranges(name, [8], [8 + size])[0])
    return header, 8 + size


def read_safetensors_subset(store: CheckpointStore, name: str, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, fetching only their byte ranges (adjacent ones merged)."""
    header, base = _safetensors_header(store, name)
    wanted = sorted(((key, meta) for key, meta in header.items() if key != "__metadata__"
                     and key.startswith(prefix)), key=lambda item: item[1]["data_offsets"][0])
    spans: list[list[int]] = []  # [begin, end] of merged ranges, relative to the data start
    for _, meta in wanted:
        begin, end = meta["data_offsets"]
        if spans and spans[-1][1] == begin:
            spans[-1][1] = end
        else:
            spans.append([begin, end])
    blobs = store.read_ranges(name, [base + b for b, _ in spans], [base + e for _, e in spans]) if spans else []
    out = {}
    for key, meta in wanted:
        begin, end = meta["data_offsets"]
        span = next(i for i, (b, e) in enumerate(spans) if b <= begin and end <= e)
        blob = blobs[span]
        if isinstance(blob, Exception) or len(blob) != spans[span][1] - spans[span][0]:
            raise CheckpointLayoutError(f"{store.location}/{name}: could not read the bytes of {key} ({blob!r:.200})")
        raw = blob[begin - spans[span][0] : end - spans[span][0]]
        dtype = _ST_DTYPES[meta["dtype"]]
        out[key] = (torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)).reshape(
            meta["shape"]).clone()
    return out

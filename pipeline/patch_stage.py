"""Patch lengths from stored entropies: no model involved, vectorized over whole record batches."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import torch

from blt_model.patching import PatchingParams, patch_lengths_flat

from .shards import ShardWriter, flat_bytes, flat_values, iter_batches, patch_batch, patch_schema
from .storage import join


def shard_file_name(input_url: str) -> str:
    """Deterministic output name for an input object, so a re-run overwrites rather than duplicates."""
    return f"part-{hashlib.sha1(input_url.encode()).hexdigest()[:16]}.arrow"


def patch_set_dir(params: PatchingParams) -> str:
    return f"patches/{params.key()}"


def patches_for_batch(batch, params: PatchingParams) -> tuple[np.ndarray, np.ndarray]:
    """(flat patch lengths, patches per document) for one entropy record batch."""
    values, offsets = flat_values(batch.column("entropies"))
    entropies = torch.from_numpy(values.astype(np.float32)) if params.needs_entropies else None
    byte_values = flat_bytes(batch.column("bytes")) if params.mode == "space" else None
    lengths, per_doc = patch_lengths_flat(params, torch.from_numpy(offsets.astype(np.int64)), entropies, byte_values)
    return lengths.numpy(), per_doc.numpy()


def repatch_shard(task: dict, root: str, params_dict: dict) -> dict:
    """Write one shard's patch set from its stored entropies. ``task``: {input_url, entropy_output}."""
    params = PatchingParams.from_dict(params_dict)
    started = time.perf_counter()
    relative = join(patch_set_dir(params), shard_file_name(task["input_url"]))
    writer = ShardWriter(join(root, relative), patch_schema(params.to_dict()))
    docs = nbytes = patches = 0
    try:
        for batch in iter_batches(join(root, task["entropy_output"]), "entropies"):
            lengths, per_doc = patches_for_batch(batch, params)
            writer.write(patch_batch(batch.column("doc_id"), lengths, per_doc, params.to_dict()))
            docs += batch.num_rows
            nbytes += int(lengths.sum())
            patches += len(lengths)
    except BaseException as exc:
        writer.abort(exc)
        raise
    writer.close()
    return {"input_url": task["input_url"], "output": relative, "docs": docs, "bytes": nbytes,
            "patches": patches, "seconds": time.perf_counter() - started}

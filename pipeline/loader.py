"""Streams pre-patched shards into fixed training windows, with an exact, checkpointable position.

Each rank reads its own shards (shard i belongs to rank i % world_size), in manifest order. Documents are
laid end to end, each followed by an EOS token that is a patch of its own, and the stream is cut into windows
of ``seq_len + 1`` tokens that overlap by one (inputs = window[:-1], labels = window[1:]), so every byte is
an input exactly once per epoch. Patch lengths come from the stored patch set and are cut at window borders:
a patch never spans two windows. Like the patcher, positions 0 and 1 of every window start patches, and when
the label after the last input starts a patch, the window gets HF's trailing zero-length patch. The entropy
model is never run here.

``state_dict()`` is the position after the last batch handed out (epoch, shard, row, carried tokens), so a
resumed loader yields exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from blt_model.patching import lengths_from_start_mask
from blt_model.tokens import BYTE_OFFSET, EOS_ID

from .manifest import Manifest
from .shards import flat_values, iter_batches
from .storage import join


@dataclass
class LoaderConfig:
    dataset: str
    patch_set: str | None = None  # params key; None = the manifest's default
    seq_len: int = 1024
    batch_size: int = 8
    rank: int = 0
    world_size: int = 1
    shards: list[str] | None = None  # input urls to use (e.g. a train/validation split); None = all
    prefetch: int = 4  # batches prepared ahead in a background thread


@dataclass
class Batch:
    tokens: torch.Tensor  # [B, S]
    labels: torch.Tensor  # [B, S]
    patch_lengths: torch.Tensor  # [B, P]
    next_starts: torch.Tensor  # [B] bool: the byte after the last input starts a patch (trailing 0 patch added)
    doc_ids: list[str]  # documents that started in this batch (for audits/tests)

    @property
    def num_patches(self) -> int:
        return int((self.patch_lengths > 0).sum())


def shard_pairs(manifest: Manifest, patch_set: str) -> list[tuple[str, str, str]]:
    """(input url, entropy shard url, patch shard url) in manifest order, for the shards the patch set covers."""
    if patch_set not in manifest.patch_sets:
        raise KeyError(f"{manifest.root}: no patch set {patch_set!r} (have {sorted(manifest.patch_sets)})")
    patches = manifest.patch_sets[patch_set].shards
    out = []
    for url, record in sorted(manifest.shards.items()):
        if url not in patches:
            raise ValueError(f"patch set {patch_set} lacks shard {url}: run `blt repatch` to complete it")
        out.append((url, join(manifest.root, record.output), join(manifest.root, patches[url]["output"])))
    return out


class PatchedWindowLoader:
    def __init__(self, cfg: LoaderConfig) -> None:
        self.cfg = cfg
        manifest = Manifest.load(cfg.dataset)
        key = cfg.patch_set or manifest.default_patch_set
        pairs = shard_pairs(manifest, key)
        if cfg.shards is not None:
            wanted = set(cfg.shards)
            pairs = [p for p in pairs if p[0] in wanted]
        self.shards = pairs[cfg.rank :: cfg.world_size]
        if not self.shards:
            raise ValueError(f"rank {cfg.rank}/{cfg.world_size} has no shards ({len(pairs)} in total): "
                             "use fewer workers or more shards")
        self.patch_set = key
        self.state = {"epoch": 0, "shard": 0, "row": 0, "tokens": [], "starts": []}

    def state_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.state.items()}

    def load_state_dict(self, state: dict) -> None:
        self.state = {k: (list(v) if isinstance(v, list) else v) for k, v in state.items()}

    def load_state_dicts(self, states: list[dict]) -> None:
        """Resume from the saved states of *every* rank of the run that wrote the checkpoint.

        The trainer's contract: each rank saves ``state_dict()``; at resume every rank passes the full list (in
        rank order) and the loader takes its own part, whatever the old and new world sizes.
        """
        if len(states) != self.cfg.world_size:
            raise ValueError(f"checkpoint was written by {len(states)} workers, this run has {self.cfg.world_size}")
        self.load_state_dict(states[self.cfg.rank])

    # ---- document stream ---------------------------------------------------------------------------
    def _documents(self, state: dict):
        """Yield (doc_id, tokens int64, starts bool) from the saved position on, forever (epochs), updating state."""
        while True:
            while state["shard"] < len(self.shards):
                _, ent_url, patch_url = self.shards[state["shard"]]
                row = 0
                for ent_batch, patch_batch in zip(iter_batches(ent_url, "entropies"), iter_batches(patch_url, "patches")):
                    if row + ent_batch.num_rows <= state["row"]:
                        row += ent_batch.num_rows
                        continue
                    yield from self._batch_documents(ent_batch, patch_batch, row, state)
                    row += ent_batch.num_rows
                state["shard"] += 1
                state["row"] = 0
            state["epoch"] += 1
            state["shard"] = 0

    @staticmethod
    def _batch_documents(ent_batch: pa.RecordBatch, patch_batch: pa.RecordBatch, first_row: int, state: dict):
        data = ent_batch.column("bytes")
        lengths, offsets = flat_values(patch_batch.column("patch_lengths"))
        ids = ent_batch.column("doc_id").to_pylist()
        for i in range(max(0, state["row"] - first_row), ent_batch.num_rows):
            raw = np.frombuffer(data[i].as_buffer(), dtype=np.uint8)
            doc_lengths = lengths[offsets[i] : offsets[i + 1]]
            if int(doc_lengths.sum()) != len(raw):
                raise ValueError(f"patch lengths of {ids[i]} sum to {int(doc_lengths.sum())}, not {len(raw)}")
            tokens = np.empty(len(raw) + 1, dtype=np.int64)
            tokens[:-1] = raw.astype(np.int64) + BYTE_OFFSET
            tokens[-1] = EOS_ID
            starts = np.zeros(len(raw) + 1, dtype=bool)
            starts[np.cumsum(doc_lengths) - doc_lengths] = True
            starts[-1] = True  # EOS is a patch of its own
            state["row"] = first_row + i + 1
            yield ids[i], tokens, starts

    # ---- windows and batches -----------------------------------------------------------------------
    def _batches(self):
        cfg = self.cfg
        window = cfg.seq_len + 1
        state = self.state_dict()
        pending_tokens = np.array(state["tokens"], dtype=np.int64)
        pending_starts = np.array(state["starts"], dtype=bool)
        rows: list[tuple[np.ndarray, np.ndarray]] = []
        batch_docs: list[str] = []
        for doc_id, doc_tokens, doc_starts in self._documents(state):
            batch_docs.append(doc_id)
            pending_tokens = np.concatenate([pending_tokens, doc_tokens])
            pending_starts = np.concatenate([pending_starts, doc_starts])
            while len(pending_tokens) >= window:
                rows.append((pending_tokens[:window], pending_starts[:window]))
                # Overlap by one: the last label is the next window's first input.
                pending_tokens, pending_starts = pending_tokens[window - 1 :], pending_starts[window - 1 :]
                if len(rows) == cfg.batch_size:
                    snapshot = {**state, "tokens": pending_tokens.tolist(), "starts": pending_starts.tolist()}
                    yield self._collate(rows, batch_docs), snapshot
                    rows, batch_docs = [], []

    def _collate(self, rows, doc_ids: list[str]) -> Batch:
        tokens = torch.from_numpy(np.stack([r[0] for r in rows]))
        starts = torch.from_numpy(np.stack([r[1] for r in rows]))
        inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        window_starts = starts[:, :-1].clone()
        window_starts[:, :2] = True
        next_starts = starts[:, -1]
        lengths = lengths_from_start_mask(window_starts, None, next_starts)
        return Batch(inputs, labels, lengths, next_starts, doc_ids)

    def __iter__(self):
        """Batches in a background thread (``prefetch`` ahead); state advances as each batch is handed out."""
        out: queue.Queue = queue.Queue(maxsize=max(1, self.cfg.prefetch))
        stop = threading.Event()

        def produce():
            try:
                for item in self._batches():
                    while not stop.is_set():
                        try:
                            out.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as exc:  # surfaced in the consumer
                out.put(exc)

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        try:
            while True:
                item = out.get()
                if isinstance(item, BaseException):
                    raise item
                batch, snapshot = item
                self.state = snapshot
                yield batch
        finally:
            stop.set()

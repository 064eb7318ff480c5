"""Raw shards -> packed entropy-model batches, streamed with the preprocessing readers (no whole-corpus load).

Each rank reads its own shards (``urls[rank::world]``), documents end to end, cut into rows of ``seq_len + 1``
tokens with a segment id per document, so attention and the loss never cross a document border (as
``stream_entropies`` scores documents at preprocessing time). A seeded hash of the document id holds out
``val_fraction`` of the documents for validation, the same ones in every run and for any worker count.
``state_dict()`` is the position after the last batch handed out (epoch, shard, document, carried tokens): a
resumed stream yields exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from blt_model.entropy_model import EntropyModel
from blt_model.tokens import BYTE_OFFSET, IGNORE_INDEX
from pipeline.ingest.readers import ReaderConfig, SkipLog, read_documents


def is_validation(doc_id: str, fraction: float, seed: int) -> bool:
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


class EntropyStream:
    def __init__(self, urls: list[str], reader: ReaderConfig, seq_len: int, batch_size: int, val_fraction: float,
                 seed: int, validation: bool = False) -> None:
        if not urls:
            raise ValueError("no input shards for this rank: use fewer workers or more shards")
        self.urls, self.reader, self.seq_len, self.batch_size = urls, reader, seq_len, batch_size
        self.val_fraction, self.seed, self.validation = val_fraction, seed, validation
        self.skips = SkipLog()
        self.state = {"epoch": 0, "shard": 0, "doc": 0, "segment": 0, "tokens": [], "segments": []}

    def state_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.state.items()}

    def load_state_dict(self, state: dict) -> None:
        self.state = {k: (list(v) if isinstance(v, list) else v) for k, v in state.items()}

    def _documents(self, state: dict):
        """(segment id, token array) from the saved position on; epochs repeat; stops if an epoch had none."""
        while True:
            found = 0
            while state["shard"] < len(self.urls):
                for i, doc in enumerate(read_documents(self.urls[state["shard"]], self.reader, self.skips)):
                    if i < state["doc"]:
                        continue  # resume: skip what was consumed (re-read, not re-trained)
                    state["doc"] = i + 1
                    if not doc.data or is_validation(doc.doc_id, self.val_fraction, self.seed) != self.validation:
                        continue
                    found += 1
                    state["segment"] = (state["segment"] + 1) % (1 << 30)
                    yield state["segment"], np.frombuffer(doc.data, dtype=np.uint8).astype(np.int64) + BYTE_OFFSET
                state["shard"] += 1
                state["doc"] = 0
            state["epoch"] += 1
            state["shard"] = 0
            if not found and state["epoch"] > 0:
                return

    def __iter__(self):
        """(tokens [B, S+1], segment ids [B, S+1]); state advances as each batch is handed out."""
        state = self.state_dict()
        row = self.seq_len + 1
        tokens = np.array(state["tokens"], dtype=np.int64)
        segments = np.array(state["segments"], dtype=np.int64)
        for segment, doc in self._documents(state):
            tokens = np.concatenate([tokens, doc])
            segments = np.concatenate([segments, np.full(len(doc), segment, dtype=np.int64)])
            need = row * self.batch_size
            while len(tokens) >= need:
                batch_t, batch_s = tokens[:need].reshape(self.batch_size, row), segments[:need].reshape(self.batch_size, row)
                tokens, segments = tokens[need:], segments[need:]
                self.state = {**state, "tokens": tokens.tolist(), "segments": segments.tolist()}
                yield torch.from_numpy(batch_t.copy()), torch.from_numpy(batch_s.copy())


def batch_loss(model: EntropyModel, tokens: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Next-byte cross entropy (nats/byte) inside documents only."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:].clone()
    same_doc = segments[:, 1:] == segments[:, :-1]
    targets[~same_doc] = IGNORE_INDEX
    logits = model(inputs, segments[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)

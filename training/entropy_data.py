"""Raw inputs -> packed entropy-model batches, streamed with the preprocessing readers (no whole-corpus load).

Work. The inputs are cut into work units (``pipeline.ingest.work_units``: line-aligned byte ranges of uncompressed
jsonl/txt, parquet row groups, whole compressed objects), of about ``total / TARGET_UNITS`` bytes (at least
``MIN_UNIT_BYTES``, at most ``unit_bytes``), a plan that depends on the inputs and the config, never on the worker
count. Epoch e is a seeded permutation of the units; epochs are laid end to end into one endless sequence of
positions, and rank r of W reads positions r, r + W, r + 2W, ... So any number of workers from 1 up has work,
whatever the number of files (two workers on one jsonl file read different byte ranges).

Rows. Each rank lays its documents end to end and cuts rows of ``seq_len + 1`` tokens with a segment id per
document, so attention and the loss never cross a document border (as ``stream_entropies`` scores documents at
preprocessing time). A seeded hash of the document id holds out ``val_fraction`` of the documents for
validation, the same ones in every run and for any worker count.

Position. ``state_dict()`` (JSON) is the position after the last batch handed out: the units being read (position
+ next document), the next fresh position and stride, and the carried tokens. Resumed on the same worker count a
stream yields exactly the batches an uninterrupted one would; ``load_state_dicts`` on another worker count
re-deals the unread work (partly read units, positions no rank started, carried tokens), so no document of an
epoch is skipped or read twice.
"""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from blt_model.entropy_model import EntropyModel
from blt_model.tokens import BYTE_OFFSET, IGNORE_INDEX
from pipeline.ingest.readers import ReaderConfig, SkipLog, read_documents
from pipeline.ingest.work_units import WorkUnit, plan_units
from pipeline.io.storage import list_inputs

from .fatal import DeterministicError

TARGET_UNITS = 256  # units per corpus when that keeps them above MIN_UNIT_BYTES: many more than workers
MIN_UNIT_BYTES = 4096
MAX_UNIT_BYTES = 64 << 20
EMPTY_POSITIONS_FACTOR = 64  # a rank reading this many x units in a row with no training document gives up


class EntropyInputError(DeterministicError, ValueError):
    """The inputs hold nothing to train on (deterministic: retrying cannot help)."""


def is_validation(doc_id: str, fraction: float, seed: int) -> bool:
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def plan_entropy_units(inputs: str, reader: ReaderConfig, unit_bytes: int = MAX_UNIT_BYTES) -> list[WorkUnit]:
    """The work units of ``inputs``: a function of the inputs and the config only (so any worker count resumes)."""
    objects = list_inputs(inputs)
    size = max(MIN_UNIT_BYTES, min(unit_bytes, sum(o.size for o in objects) // TARGET_UNITS))
    return [unit for obj in objects for unit in plan_units(obj, reader, size)]


def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def _relabel(segments: np.ndarray, offset: int) -> np.ndarray:
    """Segment ids 1.. per run of equal ids, plus ``offset`` (carries of several ranks never share an id)."""
    if not len(segments):
        return segments
    return np.concatenate([[0], np.cumsum(segments[1:] != segments[:-1])]) + offset + 1


class EntropyStream:
    def __init__(self, units: list[WorkUnit], reader: ReaderConfig, seq_len: int, batch_size: int,
                 val_fraction: float, seed: int, rank: int = 0, world: int = 1, validation: bool = False) -> None:
        if not units:
            raise EntropyInputError("no input units to train on")
        self.units, self.reader, self.seq_len, self.batch_size = units, reader, seq_len, batch_size
        self.val_fraction, self.seed, self.validation = val_fraction, seed, validation
        self.rank, self.world = rank, world
        self.skips = SkipLog()
        self.state = self._fresh(rank, world)

    @staticmethod
    def _fresh(rank: int, world: int) -> dict:
        return {"epoch": 0, "queue": [], "next": rank, "stride": world, "segment": 0, "tokens": [], "segments": []}

    def state_dict(self) -> dict:
        return copy.deepcopy(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = copy.deepcopy(state)

    def load_state_dicts(self, states: list[dict]) -> None:
        """Resume from every rank's state of the run that wrote them; another worker count re-deals the unread
        work: partly read units and positions no rank started go round-robin to the new ranks (in position
        order), fresh positions continue after the furthest one started, carried tokens move whole."""
        if len(states) == self.world:
            self.load_state_dict(states[self.rank])
            return
        base = max(s["next"] for s in states)
        leftovers = [list(item) for s in states for item in s["queue"]]
        leftovers += [[p, 0] for s in states for p in range(s["next"], base, s["stride"])]
        leftovers.sort()
        state = self._fresh(self.rank, self.world)
        state["next"] = base + self.rank
        state["queue"] = leftovers[self.rank :: self.world]
        state["epoch"] = min(s["epoch"] for s in states)
        tokens, segments, offset = [], [], 0
        for old in states[self.rank :: self.world]:
            relabeled = _relabel(np.asarray(old["segments"], dtype=np.int64), offset)
            tokens += old["tokens"]
            segments += relabeled.tolist()
            offset = int(relabeled.max()) if len(relabeled) else offset
        state["tokens"], state["segments"], state["segment"] = tokens, segments, offset
        self.state = state

    def _unit_at(self, pos: int) -> WorkUnit:
        n = len(self.units)
        if self.validation:
            return self.units[pos % n]
        return self.units[int(_permutation(n, self.seed, pos // n)[pos % n])]

    def _documents(self, state: dict):
        """(segment id, token array) from the saved position on; the validation stream reads one epoch."""
        n = len(self.units)
        empty_positions = 0
        while True:
            if not state["queue"]:
                if self.validation and state["next"] >= n:
                    return
                state["queue"].append([state["next"], 0])
                state["next"] += state["stride"]
            item = state["queue"][0]
            pos, first = item
            state["epoch"] = pos // n
            unit = self._unit_at(pos)
            found = 0
            for i, doc in enumerate(read_documents(unit.input_url, self.reader, self.skips, unit.kind, unit.start,
                                                   unit.stop)):
                if i < first:
                    continue  # resume: skip what was consumed (re-read, not re-trained)
                item[1] = i + 1
                if not doc.data or is_validation(doc.doc_id, self.val_fraction, self.seed) != self.validation:
                    continue
                found += 1
                state["segment"] = state["segment"] % (1 << 30) + 1
                yield state["segment"], np.frombuffer(doc.data, dtype=np.uint8).astype(np.int64) + BYTE_OFFSET
            state["queue"].pop(0)
            empty_positions = 0 if found else empty_positions + 1
            if empty_positions > EMPTY_POSITIONS_FACTOR * n + 64:
                kind = "validation" if self.validation else "training"
                raise EntropyInputError(f"no {kind} documents in {empty_positions} units read in a row")

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
                self.state = copy.deepcopy({**state, "tokens": tokens.tolist(), "segments": segments.tolist()})
                yield torch.from_numpy(batch_t.copy()), torch.from_numpy(batch_s.copy())


def check_inputs(units: list[WorkUnit], reader: ReaderConfig, val_fraction: float, seed: int) -> None:
    """Fail before any worker starts when the inputs hold no training document (reads up to the first one)."""
    skips = SkipLog()
    for unit in units:
        for doc in read_documents(unit.input_url, reader, skips, unit.kind, unit.start, unit.stop):
            if doc.data and not is_validation(doc.doc_id, val_fraction, seed):
                return
    detail = f" (skipped: {skips.counts})" if skips.total else ""
    raise EntropyInputError(f"no training documents in {len(units)} input units{detail}")


def batch_loss(model: EntropyModel, tokens: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Next-byte cross entropy (nats/byte) inside documents only."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:].clone()
    same_doc = segments[:, 1:] == segments[:, :-1]
    targets[~same_doc] = IGNORE_INDEX
    logits = model(inputs, segments[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)

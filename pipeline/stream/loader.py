"""The training stream: pre-patched shards -> shuffled, mixed, balanced windows, with an elastic position.

Order. Each source (a dataset, a patch set, or an input-url subset of one; ``pipeline.stream.mixing``) is cut into
blocks of record batches (``pipeline.stream.blocks``). Epoch e of a source is a seeded permutation of its blocks; the
epochs are laid end to end into one endless sequence of *positions* (position p is block ``perm_e[p % n]`` of
epoch ``p // n``), a function of the seed alone. Rank r of W takes positions ``base + r, base + r + W, ...``, reads
each block's documents in shard order into a per-source shuffle buffer (``shuffle_buffer`` documents), and
emits a random document of the source that is furthest behind its weight (``Mixer``); the buffer drains before
the rank starts the source's next epoch. A long document stored as
several rows (same doc_id, ``part`` 0, 1, ...) is joined back into one: no EOS between parts, and a row whose
``continues`` flag is set merges its first patch into the previous row's last patch.

Windows. Emitted documents are laid end to end, each followed by an EOS token that is a patch of its own, and
cut into windows of ``seq_len + 1`` tokens that overlap by one (inputs = window[:-1], labels = window[1:]), so
every byte is an input exactly once. Stored patches are cut at window borders; positions 0 and 1 of every window
start patches, and a window whose next byte starts a patch gets HF's trailing zero-length patch.

Position. ``state_dict()`` is JSON: per source the next fresh position, the queue of row ranges still to read,
the shuffle buffer as document references, the draw counter and the mixing counts; plus the carry (documents
not yet fully emitted, as references + token offset). Resuming with the same world size replays exactly the
same batches. ``load_state_dicts`` with another world size re-deals the unread work (see its docstring): within
every epoch of every source no document is seen twice and none is skipped, and every byte of a partly emitted
document is still an input exactly once (its tail moves to a new rank).
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from torchdata.nodes import BaseNode, Batcher, Loader, Mapper, PinMemory, Prefetcher

from pipeline.io.logs import get_logger
from pipeline.stream.blocks import (
    Doc,
    ShardFiles,
    ShardReader,
    count_batches,
    hash_unit,
    iter_docs,
    permutation,
    plan_blocks,
)
from pipeline.stream.mixing import Mixer, ResolvedSource, SourceSpec, StreamConfig, resolve_sources
from pipeline.stream.packing import Batch, Packer, collate, doc_tokens
from pipeline.stream.redeal import RowRange, deal, leftovers, new_base
from pipeline.stream.state import STATE_VERSION, DocRef, SourceCursor, StreamState

log = get_logger(__name__)
_MASK = (1 << 64) - 1


@dataclass
class LoaderConfig:
    dataset: str | None = None  # one dataset (ignored when stream.mix lists sources)
    patch_set: str | None = None  # params key; None = the manifest's default
    seq_len: int = 1024
    batch_size: int = 8
    rank: int = 0
    world_size: int = 1
    shards: list[str] | None = None  # input urls to use (e.g. a train/validation split); None = all
    prefetch: int = 4  # batches prepared ahead in a background thread
    pin_memory: bool | None = None  # batches in pinned memory (fast copies to the GPU); None = when CUDA is there
    stream: StreamConfig = field(default_factory=StreamConfig)

    def __post_init__(self) -> None:
        if isinstance(self.stream, dict):
            self.stream = StreamConfig(**self.stream)


def _splitmix(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


class _Source:
    """A resolved source's blocks and per-epoch block order (shared by the training and validation streams)."""

    def __init__(self, resolved: ResolvedSource, cfg: StreamConfig, counts: list[int]) -> None:
        self.name, self.weight = resolved.name, resolved.weight
        self.files = [ShardFiles(u, e, p, b) for u, e, p, b in resolved.shards]
        self.blocks = plan_blocks(counts, cfg.block_batches)
        if not self.blocks:
            raise ValueError(f"source {self.name!r}: its shards hold no record batches")
        self.batch_bytes = [f.nbytes / max(1, c) for f, c in zip(self.files, counts)]
        self.seed, self.shuffle = cfg.seed, cfg.shuffle
        self._orders: dict[int, np.ndarray] = {}

    def block_at(self, pos: int):
        epoch, index = divmod(pos, len(self.blocks))
        if not self.shuffle:
            return self.blocks[index]
        if epoch not in self._orders:
            if len(self._orders) > 4:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = permutation(len(self.blocks), self.seed, self.name, epoch)
        return self.blocks[int(self._orders[epoch][index])]

    def files_at(self, pos: int) -> ShardFiles:
        return self.files[self.block_at(pos).shard]

    def epoch(self, pos: int) -> int:
        return pos // len(self.blocks)

    def block_rows(self, pos: int) -> tuple[int, int]:
        block = self.block_at(pos)
        return block.start, block.stop

    def item_weight(self, item: RowRange) -> float:
        """Estimated bytes of a queue item (for balancing a re-deal)."""
        per_batch = self.batch_bytes[self.block_at(item.pos).shard]
        if item.single:
            return per_batch / 64  # one document
        (b0, r0), (b1, _) = item.start, item.end
        return per_batch * max(0.5, b1 - b0 - (0.5 if r0 else 0.0))


class PatchedWindowLoader:
    def __init__(self, cfg: LoaderConfig) -> None:
        self.cfg = cfg
        stream = cfg.stream
        specs = stream.mix or [SourceSpec(cfg.dataset, 1.0, patch_set=cfg.patch_set)]
        if not stream.mix and cfg.dataset is None:
            raise ValueError("LoaderConfig needs a dataset or stream.mix")
        resolved = resolve_sources(specs, cfg.shards)
        all_files = [ShardFiles(u, e, p, b) for r in resolved for u, e, p, b in r.shards]
        counts = iter(count_batches(all_files))
        self.sources = [_Source(r, stream, [next(counts) for _ in r.shards]) for r in resolved]
        self.patch_set = resolved[0].patch_set
        self.shards = [(u, e, p) for r in resolved for u, e, p, _ in r.shards]  # every shard of every source
        self.mixer = Mixer([s.weight for s in self.sources], stream.weight_by)
        self.signature = {"seed": stream.seed, "shuffle": stream.shuffle, "block_batches": stream.block_batches,
                          "sources": [[s.name, len(s.blocks)] for s in self.sources],
                          "validation": [stream.validation_fraction, stream.validation_seed]}
        self.state = self._fresh_state()
        self._active: list = []

    def _fresh_state(self) -> StreamState:
        cfg = self.cfg
        return StreamState(self.signature, cfg.world_size, cfg.rank,
                           [SourceCursor(0, cfg.world_size, cfg.rank) for _ in self.sources])

    # ---- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The stream's position as JSON (``pipeline.stream.state``): what a checkpoint stores."""
        return self.state.to_json()

    def load_state_dict(self, state: dict) -> None:
        self.state = StreamState.from_json(self._checked(state))

    def _checked(self, state: dict) -> dict:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')} is not {STATE_VERSION} "
                             "(a checkpoint from before the shuffled stream: start the data stream afresh)")
        if state["signature"] != self.signature:
            raise ValueError(f"loader state was written for another stream: {state['signature']} != "
                             f"{self.signature}")
        return state

    def load_state_dicts(self, states: list[dict]) -> None:
        """Resume from the saved states of *every* rank of the run that wrote the checkpoint (old-rank order).

        Same world size: this rank's own state (exact batch-for-batch replay). Another world size: the unread
        work of every old rank is re-dealt, the same way on every new rank (``pipeline.stream.redeal``):
          * per source, positions below the new base P (one past the highest position any old rank started)
            that their owner never started are whole blocks still to read;
          * every old rank's queue (the unread rest of its current block, and older leftovers) and every
            document in its shuffle buffer (read but not emitted) are still to read;
          * these items go to the new ranks by estimated bytes (largest first, to the least loaded), then each
            new rank r continues with fresh positions P + r, P + r + W', ...;
          * the carry of old rank i (the not yet emitted tokens of documents it started: the tail of a window
            being filled) is prepended, in old-rank order, to new rank ``i % W'``'s stream, so every byte of a
            document that was partly trained on is still an input exactly once, with no document repeated;
          * mixing counts are summed and split evenly, so the realised shares continue where they were.
        """
        world, rank = self.cfg.world_size, self.cfg.rank
        olds = [StreamState.from_json(self._checked(s)) for s in states]
        if len(olds) == world:
            self.state = olds[rank]
            return
        state = self._fresh_state()
        generation = 1 + max(c.salt for s in olds for c in s.sources)
        for index, source in enumerate(self.sources):
            cursors = [s.sources[index] for s in olds]
            shares = deal(leftovers(cursors, source.block_rows), world, source.item_weight)
            new = state.sources[index]
            new.base, new.salt, new.queue = new_base(cursors), generation, shares[rank]
            for unit in ("docs", "bytes", "patches"):
                total = sum(getattr(c.counts, unit) for c in cursors)
                setattr(new.counts, unit, total // world + (1 if rank < total % world else 0))
        state.carry = [seg for i, s in enumerate(olds) if i % world == rank for seg in s.carry]
        state.windows = sum(s.windows for s in olds) // len(olds)
        state.epoch = min(s.epoch for s in olds)
        log.info("loader: resumed %d ranks' state on %d ranks (rank %d: %d queued ranges)", len(olds), world,
                 rank, sum(len(c.queue) for c in state.sources))
        self.state = state

    # ---- metrics and audits --------------------------------------------------------------------------
    def mix_stats(self) -> dict:
        """Per source, over the batches handed out so far (this rank, including resumed counts): target share,
        realised share in the weighting unit, and docs/bytes/patches. Log e.g. ``mix/<name>`` = share."""
        return self.mixer.report([s.name for s in self.sources], [c.counts for c in self.state.sources])

    def epochs(self) -> dict[str, int]:
        """Per source: the lowest epoch this rank still has documents of (queued, buffered or fresh)."""
        return {source.name: source.epoch(c.lowest_position()) for source, c in zip(self.sources,
                                                                                     self.state.sources)}

    # ---- iteration -----------------------------------------------------------------------------------
    def __iter__(self):
        """Batches through torchdata nodes: documents (``_DocumentNode``: block order, shard reading, shuffle
        buffers, mixing) -> windows (``_WindowNode``: packing) -> ``Batcher`` -> ``Mapper`` (collate) ->
        ``Prefetcher`` (``prefetch`` batches ahead in a background thread) -> ``PinMemory`` (on GPU machines) ->
        ``Loader``. After each batch handed out, ``state_dict()`` is the stream's state as of that batch
        (torchdata snapshots the nodes' state with every item it prefetches).

        The threads stop when the iterator is closed or garbage-collected, when ``close()`` is called, and at
        interpreter exit (before native libraries are torn down), so leaving a loop early never aborts.
        """
        documents = _DocumentNode(self)
        windows = _WindowNode(documents)
        batches = Mapper(Batcher(windows, self.cfg.batch_size), _collate_windows)
        prefetcher = Prefetcher(batches, prefetch_factor=max(1, self.cfg.prefetch))
        pin = self.cfg.pin_memory if self.cfg.pin_memory is not None else torch.cuda.is_available()
        root = PinMemory(prefetcher) if pin else prefetcher
        handle = _Pipeline(documents, [root, prefetcher] if pin else [prefetcher])
        self._active.append(handle)
        _PRODUCERS.add(handle)
        loader = Loader(root, restart_on_stop_iteration=False)
        try:
            it = iter(loader)
            while True:
                batch = next(it)
                self.state = _WindowNode.find_state(loader.state_dict())
                yield batch
        finally:
            handle.stop()
            _PRODUCERS.discard(handle)
            if handle in self._active:
                self._active.remove(handle)

    def close(self) -> None:
        """Stop every prefetch thread of this loader (iterators become exhausted)."""
        for handle in list(self._active):
            handle.stop()
        self._active.clear()

    def __enter__(self) -> PatchedWindowLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- validation ----------------------------------------------------------------------------------
    def validation_sources(self) -> list[str]:
        return [s.name for s in self.sources]

    def validation(self, source: str | None = None, batch_size: int | None = None):
        """The held-out documents (``validation_fraction``) of one source (or all sources, one after another) as
        batches, the same on every rank and every run (a fixed block order; no shuffle buffer; finite: the last
        batch may be smaller, and the last partial window is dropped). Per-source bits per byte:
        ``for name in loader.validation_sources(): evaluate(itertools.islice(loader.validation(name), n))``.
        """
        if self.cfg.stream.validation_fraction <= 0:
            raise ValueError("no validation split: set stream.validation_fraction > 0")
        names = [s.name for s in self.sources]
        chosen = self.sources if source is None else [self.sources[names.index(source)]]
        return _validation_batches(self, chosen, batch_size or self.cfg.batch_size)

    def is_validation(self, doc_id: str) -> bool:
        stream = self.cfg.stream
        return stream.validation_fraction > 0 and hash_unit(stream.validation_seed, doc_id) < stream.validation_fraction


class _DocumentNode(BaseNode):
    """Block order -> shard reading -> per-source shuffle buffers -> weighted mixing: the rank's next document,
    as ``(source, position, Doc)``. State: the per-source cursors."""

    KEY = "sources"

    def __init__(self, loader: PatchedWindowLoader) -> None:
        super().__init__()
        self.loader, self.cfg = loader, loader.cfg
        self.cap = max(1, self.cfg.stream.shuffle_buffer) if self.cfg.stream.shuffle else 1
        self.reader: ShardReader | None = None
        self.cursors: list[SourceCursor] = []
        self._lock = threading.Lock()

    def reset(self, initial_state: dict | None = None) -> None:
        super().reset(initial_state)
        self.close()
        cursors = initial_state[self.KEY] if initial_state else self.loader.state.sources
        with self._lock:
            self.reader = ShardReader()
        self.cursors = copy.deepcopy(cursors)
        self.live: list = [None] * len(self.loader.sources)
        self.buffers: list[list[tuple[int, Doc]]] = [[(ref.pos, self.read_ref(index, ref)) for ref in c.buffer]
                                                     for index, c in enumerate(self.cursors)]

    def get_state(self) -> dict:
        """A copy later reads do not change (refs are immutable: shallow list copies)."""
        return {self.KEY: [dataclasses.replace(c, queue=list(c.queue), buffer=list(c.buffer),
                                               counts=dataclasses.replace(c.counts)) for c in self.cursors]}

    def close(self) -> None:
        with self._lock:
            if self.reader is not None:
                self.reader.close()
            self.reader = None

    def next(self) -> tuple[int, int, Doc]:
        s = self.loader.mixer.choose([c.counts for c in self.cursors])
        pos, doc = self._take(s)
        counts = self.cursors[s].counts
        counts.docs += 1
        counts.bytes += len(doc.data)
        counts.patches += len(doc.lengths)
        return s, pos, doc

    def read_ref(self, s: int, ref: DocRef) -> Doc:
        source = self.loader.sources[s]
        for doc in iter_docs(self.reader, source.files_at(ref.pos), (ref.batch, ref.row), (ref.batch, ref.row + 1)):
            return doc
        raise ValueError(f"{source.name}: no document at position {ref.pos}, row ({ref.batch}, {ref.row})")

    def _draw(self, s: int, n: int) -> int:
        cursor = self.cursors[s]
        key = _splitmix(_splitmix(_splitmix(self.cfg.stream.seed & _MASK) ^ s) ^ cursor.slot) ^ cursor.salt
        cursor.draws += 1
        return _splitmix(_splitmix(key) ^ cursor.draws) % n

    def _next_doc(self, s: int, max_epoch: int | None = None) -> tuple[int, Doc] | None:
        """The next training document of source ``s``; None (nothing consumed) if it lies past ``max_epoch``."""
        source, cursor = self.loader.sources[s], self.cursors[s]
        empty_positions = 0
        while True:
            if max_epoch is not None and source.epoch(cursor.next_position()) > max_epoch:
                return None
            if not cursor.queue:
                pos = cursor.fresh()
                cursor.taken += 1
                start, stop = source.block_rows(pos)
                cursor.queue.append(RowRange(pos, (start, 0), (stop, 0)))
                self.live[s] = None
                after = source.block_at(cursor.fresh())  # this rank's next block of the source
                self.reader.read_ahead(source.files[after.shard], after.start, after.stop)
                empty_positions += 1
                if empty_positions > 2 * len(source.blocks) + 2:
                    raise ValueError(f"source {source.name!r} yields no training documents")
            item = cursor.queue[0]
            if self.live[s] is None:
                self.live[s] = iter_docs(self.reader, source.files_at(item.pos), item.start, item.end)
            doc = next(self.live[s], None)
            if doc is None:
                cursor.queue.pop(0)
                self.live[s] = None
                continue
            cursor.queue[0] = RowRange(item.pos, (doc.key[0], doc.key[1] + 1), item.end)
            if self.loader.is_validation(doc.doc_id):
                continue
            return item.pos, doc

    def _take(self, s: int) -> tuple[int, Doc]:
        cursor, buffer, source = self.cursors[s], self.buffers[s], self.loader.sources[s]
        while len(buffer) < self.cap:
            # The buffer never mixes epochs: it drains before the rank's next epoch of this source begins.
            got = self._next_doc(s, source.epoch(buffer[0][0]) if buffer else None)
            if got is None:
                break
            pos, doc = got
            buffer.append((pos, doc))
            cursor.buffer.append(DocRef(pos, *doc.key))
        j = self._draw(s, len(buffer)) if self.cap > 1 else 0
        item = buffer[j]
        buffer[j] = buffer[-1]
        buffer.pop()
        cursor.buffer[j] = cursor.buffer[-1]
        cursor.buffer.pop()
        return item


@dataclass
class _Window:
    tokens: np.ndarray  # seq_len + 1 tokens
    starts: np.ndarray  # their patch-start flags
    docs: list[tuple[str, str, int]]  # (doc_id, source name, epoch) of the documents that started since the last


class _WindowNode(BaseNode):
    """Documents end to end, each followed by its EOS, cut into windows of ``seq_len + 1`` tokens that overlap by
    one. State: the whole stream's (``StreamState``: the documents' cursors, the carry, windows emitted)."""

    KEY = "blt_stream"

    def __init__(self, documents: _DocumentNode) -> None:
        super().__init__()
        self.documents, self.loader = documents, documents.loader
        self.length = self.loader.cfg.seq_len + 1

    def reset(self, initial_state: dict | None = None) -> None:
        super().reset(initial_state)
        state: StreamState = initial_state[self.KEY] if initial_state else self.loader.state
        self.documents.reset({_DocumentNode.KEY: state.sources})
        self.base = state
        self.windows = state.windows
        self.packer = Packer()
        self.doc_lengths: dict = {}
        self.pending: list[tuple[str, str, int]] = []
        for ref in state.carry:
            tokens, starts = doc_tokens(self.documents.read_ref(ref.source, DocRef(ref.pos, ref.batch, ref.row)))
            self.doc_lengths[ref.doc] = len(tokens)
            self.packer.push(ref.doc, tokens[ref.offset :], starts[ref.offset :])

    def next(self) -> _Window:
        # Windows first: a resumed stream (whose carry may hold several windows) then pulls documents at exactly
        # the points an uninterrupted one does.
        sources = self.loader.sources
        while (row := self.packer.window(self.length)) is None:
            s, pos, doc = next(self.documents)
            tokens, starts = doc_tokens(doc)
            ref = (s, pos, *doc.key)
            self.doc_lengths[ref] = len(tokens)
            self.packer.push(ref, tokens, starts)
            self.pending.append((doc.doc_id, sources[s].name, sources[s].epoch(pos)))
        self.windows += 1
        docs, self.pending = self.pending, []
        return _Window(row[0], row[1], docs)

    def get_state(self) -> dict:
        carry = self.packer.carry(self.doc_lengths)
        live = {c.doc for c in carry}
        self.doc_lengths = {k: v for k, v in self.doc_lengths.items() if k in live}
        cursors = self.documents.state_dict()[_DocumentNode.KEY]
        epoch = min(source.epoch(c.lowest_position()) for source, c in zip(self.loader.sources, cursors))
        return {self.KEY: dataclasses.replace(self.base, sources=cursors, carry=carry, windows=self.windows,
                                              epoch=epoch)}

    @classmethod
    def find_state(cls, state: dict) -> StreamState | None:
        """The stream's state inside a torchdata ``Loader`` state (nested by every node above it)."""
        if state.get("steps_since_snapshot", 0):
            raise RuntimeError("torchdata snapshot lags the batches handed out (snapshot_frequency must be 1)")
        if cls.KEY in state:
            return state[cls.KEY]
        for value in state.values():
            if isinstance(value, dict):
                found = cls.find_state(value)
                if found is not None:
                    return found
        return None




class _Pipeline:
    """Stops a torchdata pipeline's threads (top first), then closes the stream's reader."""

    def __init__(self, node: _DocumentNode, nodes: list) -> None:
        self.node, self.nodes = node, nodes

    def stop(self, timeout: float = 30.0) -> None:
        for n in self.nodes:
            mapper = getattr(n, "_it", None)  # torchdata's thread of this node (created on reset)
            if mapper is None:
                continue
            mapper._stop_event.set()
            thread = getattr(mapper, "_thread", None)
            if thread is not None and thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout)
        self.node.close()


_PRODUCERS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Interpreter exit: stop prefetch threads while native code (arrow, s3) can still unwind cleanly."""
    for handle in list(_PRODUCERS):
        handle.stop()


def _collate_windows(windows: list[_Window]) -> Batch:
    return collate([(w.tokens, w.starts) for w in windows], [d for w in windows for d in w.docs])


def _validation_batches(loader: PatchedWindowLoader, sources: list[_Source], batch_size: int):
    """Held-out documents of ``sources`` in a fixed order, packed like training windows."""
    reader, packer, window = ShardReader(), Packer(), loader.cfg.seq_len + 1
    rows, docs = [], []
    try:
        for source in sources:
            order = permutation(len(source.blocks), loader.cfg.stream.validation_seed, source.name, "validation")
            for index in order:
                block = source.blocks[int(index)]
                for doc in iter_docs(reader, source.files[block.shard], (block.start, 0), (block.stop, 0)):
                    if not loader.is_validation(doc.doc_id):
                        continue
                    tokens, starts = doc_tokens(doc)
                    packer.push([0, 0, 0, 0], tokens, starts)
                    docs.append((doc.doc_id, source.name, 0))
                    while (row := packer.window(window)) is not None:
                        rows.append(row)
                        if len(rows) == batch_size:
                            yield collate(rows, docs)
                            rows, docs = [], []
        if rows:
            yield collate(rows, docs)  # a smaller last batch; only the last partial window is dropped
    finally:
        reader.close()

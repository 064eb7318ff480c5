"""Bits per byte of a model on datasets (stored patch sets) or raw inputs (patched on the fly), on Ray or not.

The work is cut into units (one dataset shard, or one raw input object); each unit is scored on its own (a Ray
task per unit; the model is loaded once per worker process) and the units' ``EvalResult`` add up exactly.
Which documents: all, or with ``validation_fraction`` exactly those a training run held out (the stream's own
hash of the document id and ``validation_seed``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.dataset.manifest import Manifest
from pipeline.ingest.readers import ReaderConfig, SkipLog, read_documents
from pipeline.io import ray_runtime
from pipeline.io.storage import list_inputs
from pipeline.stream.blocks import ShardFiles, ShardReader, hash_unit, iter_docs
from pipeline.stream.mixing import SourceSpec, parse_mix, resolve_sources

from .scoring import Document, EvalResult, patch_on_the_fly, score_documents


@dataclass(frozen=True)
class Selection:
    """Which documents count: all, or the held-out ones of a run (``hash_unit(seed, doc_id) < fraction``)."""

    validation_fraction: float = 0.0
    validation_seed: int = 0

    def keeps(self, doc_id: str) -> bool:
        return self.validation_fraction <= 0 or hash_unit(self.validation_seed, doc_id) < self.validation_fraction


@dataclass(frozen=True)
class EvalUnit:
    """One shard of a dataset (stored patches) or one raw input object (patched on the fly)."""

    source: str
    shard: ShardFiles | None = None
    input_url: str | None = None


@dataclass(frozen=True)
class ScoreSettings:
    """Everything a worker needs to score a unit (small and picklable: the model travels as its URL)."""

    model: str
    entropy_model: str | None = None
    seq_len: int = 512
    batch_size: int = 8
    device: str = "auto"
    selection: Selection = field(default_factory=Selection)
    reader: ReaderConfig = field(default_factory=ReaderConfig)


def resolve_device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def load(url: str, entropy_model: str | None = None, device: str = "auto"):
    """``training.model_source.load_model`` on the resolved device."""
    from .model_source import load_model

    return load_model(url, entropy_model=entropy_model, device=resolve_device(device))


def window_length(url: str, default: int = 512) -> int:
    """The ``seq_len`` a training run at ``url`` trained with (its checkpoint's config), else ``default``."""
    from .model_source import _train_state

    try:
        state = _train_state(url.rstrip("/"))
    except (OSError, ValueError, KeyError):
        state = None
    return int(((state or {}).get("config") or {}).get("seq_len") or default)


@functools.lru_cache(maxsize=2)
def _cached(url: str, entropy_model: str | None, device: str):
    return load(url, entropy_model, device)


# ---- units and their documents -----------------------------------------------------------------------------
def dataset_units(datasets: list[str], patch_set: str | None = None) -> list[EvalUnit]:
    """Every shard of every source (``DATASET[#PATTERN,...]``, as ``--mix`` spells sources)."""
    specs = [SourceSpec(s.dataset, s.weight, s.include, patch_set, s.name) for s in parse_mix(datasets)]
    for spec in specs:
        if not Manifest.load(spec.dataset).shards:
            raise FileNotFoundError(f"{spec.dataset}: no dataset there (no manifest.json with shards)")
    return [EvalUnit(r.name, shard=ShardFiles(u, e, p, b)) for r in resolve_sources(specs) for u, e, p, b in r.shards]


def input_units(patterns: list[str]) -> list[EvalUnit]:
    """Every object matching each pattern; a pattern is one source, named by itself."""
    units = []
    for pattern in patterns:
        found = list_inputs(pattern)
        if not found:
            raise FileNotFoundError(f"no input matches {pattern}")
        units += [EvalUnit(pattern, input_url=obj.url) for obj in found]
    return units


def shard_documents(source: str, shard: ShardFiles, selection: Selection) -> Iterator[Document]:
    """The selected whole documents of a dataset shard (parts joined), with their stored patch lengths."""
    reader = ShardReader(read_ahead=0)
    try:
        for doc in iter_docs(reader, shard, (0, 0), (reader.num_batches(shard), 0)):
            if selection.keeps(doc.doc_id):
                yield Document(source, doc.data, doc.lengths)
    finally:
        reader.close()


def raw_documents(source: str, url: str, selection: Selection, reader: ReaderConfig, patcher, patching,
                  group_bytes: int = 1 << 20) -> Iterator[Document]:
    """The selected documents of a raw input (the preprocessing readers; parts joined), patched on the fly."""
    pending: list[tuple[str, bytes]] = []

    def patched(docs: list[tuple[str, bytes]]) -> Iterator[Document]:
        datas = [np.frombuffer(data, dtype=np.uint8) for _, data in docs]
        for data, lengths in zip(datas, patch_on_the_fly(patcher, patching, datas)):
            yield Document(source, data, lengths)

    size = 0
    for doc in read_documents(url, reader, SkipLog()):
        if doc.part > 0 and pending and pending[-1][0] == doc.doc_id:
            pending[-1] = (doc.doc_id, pending[-1][1] + doc.data)
        elif selection.keeps(doc.doc_id):
            if size >= group_bytes:  # flushed only between documents: the last one may still grow
                yield from patched(pending)
                pending, size = [], 0
            pending.append((doc.doc_id, doc.data))
        else:
            continue
        size += len(doc.data)
    yield from patched(pending)


def unit_documents(unit: EvalUnit, settings: ScoreSettings, loaded) -> Iterator[Document]:
    if unit.shard is not None:
        return shard_documents(unit.source, unit.shard, settings.selection)
    return raw_documents(unit.source, unit.input_url, settings.selection, settings.reader, loaded.patcher,
                         loaded.patching)


def score_unit(unit: EvalUnit, settings: ScoreSettings) -> EvalResult:
    """Ray task body (or in-process): one unit's per-source totals."""
    loaded = _cached(settings.model, settings.entropy_model, settings.device)
    return score_documents(loaded.model, unit_documents(unit, settings, loaded), settings.seq_len,
                           settings.batch_size)


def evaluate_units(units: list[EvalUnit], settings: ScoreSettings, use_ray: bool, num_cpus: float = 1.0,
                   num_gpus: float = 0.0) -> EvalResult:
    """Sum of every unit's result (exact, whatever the order units finish in)."""
    result = EvalResult()
    if use_ray and num_gpus:
        import ray

        remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=3)(score_unit)
        for part in ray.get([remote.remote(u, settings) for u in units]):
            result = result + part
        return result
    for part in ray_runtime.map_unordered(score_unit, units, use_ray=use_ray, num_cpus=num_cpus,
                                          settings=settings):
        result = result + part
    return result


# ---- the training loop's validation ----------------------------------------------------------------------
def held_out_result(model: torch.nn.Module, sources: list[tuple[str, list[ShardFiles]]], selection: Selection,
                    seq_len: int, batch_size: int, max_targets: int | None, autocast) -> EvalResult:
    """Per source, the selected documents of its shards in shard order, scored whole, until a source has
    ``max_targets`` targets (None: all). With no limit reached this is exactly what ``blt eval`` reports."""
    result = EvalResult()
    for name, shards in sources:

        def documents(name=name, shards=shards) -> Iterator[Document]:
            taken = 0
            for shard in shards:
                for doc in shard_documents(name, shard, selection):
                    if max_targets is not None and taken >= max_targets:
                        return
                    taken += len(doc.data) + 1
                    yield doc

        result = result + score_documents(model, documents(), seq_len, batch_size, autocast)
    return result


def _budget(cfg) -> int:
    """Targets per source the training loop's validation scores: ``eval.batches`` batches of windows."""
    return cfg.eval.batches * cfg.batch_size * cfg.seq_len


def training_validation(model: torch.nn.Module, cfg, loader, autocast) -> dict:
    """``val_bits_per_byte/<source>`` and ``val_bits_per_byte`` on the held-out documents of the loader's sources
    (``eval.validation_fraction``), the same on every rank."""
    result = held_out_result(model, [(s.name, s.files) for s in loader.sources],
                             Selection(cfg.eval.validation_fraction, cfg.stream.validation_seed), cfg.seq_len,
                             cfg.batch_size, _budget(cfg), autocast)
    out = {f"val_bits_per_byte/{name}": t.bits_per_byte for name, t in result.sources.items() if t.targets}
    if result.overall.targets:
        out["val_bits_per_byte"] = result.overall.bits_per_byte
    return out


def held_out_shards_result(model: torch.nn.Module, cfg, val_urls: list[str], autocast) -> EvalResult:
    """The documents of the held-out shards (``val_shards``), scored whole."""
    resolved = resolve_sources([SourceSpec(cfg.dataset, patch_set=cfg.patch_set)], val_urls)
    sources = [(r.name, [ShardFiles(*s) for s in r.shards]) for r in resolved]
    return held_out_result(model, sources, Selection(), cfg.seq_len, cfg.batch_size, _budget(cfg), autocast)

"""Stream settings and weighted mixing of sources: datasets, patch sets, and input-url subsets of a dataset.

A *source* is a set of shards: a dataset's (or one patch set's) shards, optionally narrowed to input urls that
match a prefix or glob. Each source has a weight; a rank emits its next document from the source that is
furthest behind its target share (weighted fair queueing on bytes, documents or patches), so the realised shares
track the targets to within one document at every point of the run, on every rank, without randomness.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import posixpath
from dataclasses import dataclass, field

from pipeline.dataset.manifest import Manifest
from pipeline.io.storage import join

WEIGHT_UNITS = ("bytes", "documents", "patches")


@dataclass
class SourceSpec:
    dataset: str  # dataset root (its manifest.json)
    weight: float = 1.0
    include: list[str] | None = None  # input-url prefixes or globs; None = every shard of the dataset
    patch_set: str | None = None  # params key; None = the dataset's default
    name: str | None = None  # label in metrics; default: dataset basename (+ '#pattern')

    def label(self) -> str:
        if self.name:
            return self.name
        base = posixpath.basename(self.dataset.rstrip("/")) or self.dataset
        return base + ("#" + ",".join(self.include) if self.include else "")


@dataclass
class StreamConfig:
    """Everything about *which* documents a run trains on and in what order (embeddable in a trainer config)."""

    mix: list[SourceSpec] = field(default_factory=list)  # empty: LoaderConfig.dataset alone, weight 1
    weight_by: str = "bytes"  # what weights count: bytes | documents | patches
    seed: int = 0  # block order per epoch and the shuffle buffer's draws
    shuffle: bool = True  # False: blocks in manifest order, documents in shard order
    shuffle_buffer: int = 1024  # documents per source per rank
    block_batches: int = 1  # record batches (~1 MB each as written by preprocess) per block
    validation_fraction: float = 0.0  # documents held out by a hash of their id (stable across runs)
    validation_seed: int = 0  # salt of that hash (independent of ``seed``)

    def __post_init__(self) -> None:
        self.mix = [s if isinstance(s, SourceSpec) else SourceSpec(**s) for s in self.mix]
        if self.weight_by not in WEIGHT_UNITS:
            raise ValueError(f"weight_by must be one of {WEIGHT_UNITS}, not {self.weight_by!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError("validation_fraction must be in [0, 1)")
        if any(s.weight <= 0 for s in self.mix):
            raise ValueError("every source weight must be > 0")


def parse_mix(items: list[str] | str) -> list[SourceSpec]:
    """``--mix`` values: ``DATASET[#PATTERN[,PATTERN...]][=WEIGHT]``, e.g. ``s3://b/web=0.7 's3://b/code#*/py/*=0.3'``."""
    specs = []
    for item in [items] if isinstance(items, str) else items:
        for text in item.split() if " " in item else [item]:
            weight = 1.0
            head, sep, tail = text.rpartition("=")
            if sep:
                try:
                    weight = float(tail)
                    text = head
                except ValueError:
                    pass
            dataset, _, patterns = text.partition("#")
            specs.append(SourceSpec(dataset, weight, patterns.split(",") if patterns else None))
    return specs


def matches(url: str, pattern: str) -> bool:
    """A pattern selects an input url as a prefix, or as a glob on the whole url or on a tail of it."""
    if url.startswith(pattern):
        return True
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(url, pattern) or fnmatch.fnmatchcase(url, "*/" + pattern.lstrip("/"))
    return False


@dataclass
class ResolvedSource:
    name: str
    weight: float  # normalised: the sources' weights sum to 1
    shards: list[tuple[str, str, str, int]]  # (input url, entropy url, patch url, bytes), manifest order
    patch_set: str


def resolve_sources(specs: list[SourceSpec], only: list[str] | None = None) -> list[ResolvedSource]:
    """Shard lists per source, from each dataset's manifest. Sources may not share a shard."""
    manifests: dict[str, Manifest] = {}
    out, seen, names = [], {}, set()
    total = sum(s.weight for s in specs)
    wanted = set(only) if only is not None else None
    for spec in specs:
        manifest = manifests.get(spec.dataset) or manifests.setdefault(spec.dataset, Manifest.load(spec.dataset))
        key = spec.patch_set or manifest.default_patch_set
        if key not in manifest.patch_sets:
            raise KeyError(f"{manifest.root}: no patch set {key!r} (have {sorted(manifest.patch_sets)})")
        patches = manifest.patch_sets[key].shards
        shards = []
        for url, record in sorted(manifest.shards.items()):
            if spec.include is not None and not any(matches(url, p) for p in spec.include):
                continue
            if wanted is not None and url not in wanted:
                continue
            if url not in patches:
                raise ValueError(f"patch set {key} lacks shard {url}: run `blt repatch` to complete it")
            owner = seen.setdefault((spec.dataset, url), spec.label())
            if owner != spec.label():
                raise ValueError(f"shard {url} belongs to two sources ({owner}, {spec.label()}): make them disjoint")
            shards.append((url, join(manifest.root, record.output), join(manifest.root, patches[url]["output"]),
                           record.bytes))
        name = spec.label()
        if name in names:
            raise ValueError(f"two sources are named {name!r}: give them names")
        names.add(name)
        if not shards:
            raise ValueError(f"source {name!r} has no shards")
        out.append(ResolvedSource(name, spec.weight / total, shards, key))
    return out


class Mixer:
    """Picks the source furthest behind its share: argmin over sources of consumed / weight (ties: first)."""

    def __init__(self, weights: list[float], weight_by: str) -> None:
        self.weights = weights
        self.unit = {"bytes": "bytes", "documents": "docs", "patches": "patches"}[weight_by]

    def choose(self, counts: list) -> int:
        """``counts``: per source, what it emitted (``pipeline.stream.state.Counts``)."""
        if len(self.weights) == 1:
            return 0
        return min(range(len(self.weights)), key=lambda i: (getattr(counts[i], self.unit) / self.weights[i], i))

    def report(self, names: list[str], counts: list) -> dict:
        """Per source: target share, realised share (in the weighting unit) and raw counts."""
        total = sum(getattr(c, self.unit) for c in counts) or 1
        return {name: {"target": w, "share": getattr(c, self.unit) / total, **dataclasses.asdict(c)}
                for name, w, c in zip(names, self.weights, counts)}

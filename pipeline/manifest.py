"""The dataset manifest: the single source of truth for what exists under a dataset root.

A shard's output counts as present only once the manifest lists it; the manifest is rewritten atomically
after every finished shard, so a killed job leaves a manifest that describes exactly the committed work.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from .storage import exists, join, read_bytes, write_bytes_atomic

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass
class ShardRecord:
    input_url: str
    size: int
    etag: str
    output: str  # relative to the dataset root
    docs: int
    bytes: int
    skips: dict
    seconds: float
    worker: str = ""  # Ray node id that processed the shard ("local" without Ray)


@dataclass
class PatchSetRecord:
    params: dict
    shards: dict[str, dict] = field(default_factory=dict)  # input url -> {output, docs, bytes, patches}
    calibration: dict | None = None
    created: float = field(default_factory=time.time)

    def totals(self) -> dict:
        docs = sum(s["docs"] for s in self.shards.values())
        nbytes = sum(s["bytes"] for s in self.shards.values())
        patches = sum(s["patches"] for s in self.shards.values())
        return {"docs": docs, "bytes": nbytes, "patches": patches,
                "avg_patch_size": nbytes / patches if patches else 0.0}


@dataclass
class Manifest:
    root: str
    entropy_model: dict | None = None  # {"id": content hash, "url": where it was loaded from}
    reader: dict | None = None
    shards: dict[str, ShardRecord] = field(default_factory=dict)  # input url -> record
    patch_sets: dict[str, PatchSetRecord] = field(default_factory=dict)
    default_patch_set: str | None = None
    version: int = MANIFEST_VERSION

    @property
    def url(self) -> str:
        return join(self.root, MANIFEST_NAME)

    @classmethod
    def load(cls, root: str) -> Manifest:
        url = join(root, MANIFEST_NAME)
        if not exists(url):
            return cls(root=root)
        data = json.loads(read_bytes(url))
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"{url}: manifest version {data.get('version')} is not {MANIFEST_VERSION}")
        return cls(
            root=root,
            entropy_model=data.get("entropy_model"),
            reader=data.get("reader"),
            shards={k: ShardRecord(**v) for k, v in data.get("shards", {}).items()},
            patch_sets={
                k: PatchSetRecord(**{f: v[f] for f in ("params", "shards", "calibration", "created") if f in v})
                for k, v in data.get("patch_sets", {}).items()
            },
            default_patch_set=data.get("default_patch_set"),
        )

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "entropy_model": self.entropy_model,
            "reader": self.reader,
            "shards": {k: asdict(v) for k, v in sorted(self.shards.items())},
            "patch_sets": {
                k: asdict(v) | {"totals": v.totals()} for k, v in sorted(self.patch_sets.items())
            },
            "default_patch_set": self.default_patch_set,
            "totals": self.totals(),
        }

    def totals(self) -> dict:
        skipped: dict[str, int] = {}
        for record in self.shards.values():
            for reason, count in record.skips.get("counts", {}).items():
                skipped[reason] = skipped.get(reason, 0) + count
        return {
            "shards": len(self.shards),
            "docs": sum(r.docs for r in self.shards.values()),
            "bytes": sum(r.bytes for r in self.shards.values()),
            "skipped": skipped,
        }

    def save(self) -> None:
        write_bytes_atomic(self.url, json.dumps(self.to_dict(), indent=2, sort_keys=True).encode())

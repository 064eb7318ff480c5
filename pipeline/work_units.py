"""Work units: the pieces of input the entropy stage processes and commits one at a time.

A unit is a whole input object, or a range inside one (parquet row groups, or a line-aligned byte range of an
uncompressed jsonl/txt object), so that one large file is scored by several workers at once. ``key`` names the
unit in the manifest and in output file names; it is stable across runs for the same object and plan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .readers import ReaderConfig
from .storage import InputObject


@dataclass(frozen=True)
class WorkUnit:
    input_url: str
    size: int
    etag: str
    kind: str = "file"  # "file" | "row_groups" | "bytes"
    start: int = 0  # first row group (row_groups) or byte offset (bytes)
    stop: int | None = None  # end (exclusive) in the same unit; None = to the end

    @property
    def key(self) -> str:
        if self.kind == "file":
            return self.input_url
        if self.kind == "row_groups":
            return f"{self.input_url}#rg{self.start}-{self.stop}"
        return f"{self.input_url}#b{self.start}-{self.stop}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorkUnit:
        return cls(**data)


def plan_units(obj: InputObject, reader: ReaderConfig, unit_bytes: int = 256 << 20) -> list[WorkUnit]:
    """Split one input object into work units (today: the whole object)."""
    return [WorkUnit(obj.url, obj.size, obj.etag)]

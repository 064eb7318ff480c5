"""Work units: the pieces of input the entropy stage processes and commits one at a time.

A unit is a whole input object, or a range inside one (parquet row groups, or a line-aligned byte range of an
uncompressed jsonl/txt object), so that one large file is scored by several workers at once. ``key`` names the
unit in the manifest and in output file names; it is stable across runs for the same object and plan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pyarrow.parquet as pq

from pipeline.dataset.layout import unit_key
from pipeline.ingest.readers import ReaderConfig, splittable_format
from pipeline.io.logs import get_logger
from pipeline.io.storage import InputObject, filesystem

log = get_logger(__name__)


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
        return unit_key(self.input_url, self.kind, self.start, self.stop)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorkUnit:
        return cls(**data)


def plan_units(obj: InputObject, reader: ReaderConfig, unit_bytes: int = 256 << 20) -> list[WorkUnit]:
    """Split one input object into work units of about ``unit_bytes`` stored bytes.

    Objects up to ``unit_bytes`` stay whole (no request is made for them). Larger parquet objects are cut
    between row groups (the footer is read once, here); larger uncompressed jsonl / txt-line objects into byte
    ranges, which the reader aligns to lines (a unit owns the lines that start inside it), so planning reads
    nothing. Compressed streams, txt file mode and binary objects stay whole.
    """
    whole = [WorkUnit(obj.url, obj.size, obj.etag)]
    if unit_bytes <= 0 or obj.size <= unit_bytes:
        return whole
    how = splittable_format(obj.url, reader)
    if how == "bytes":
        edges = list(range(0, obj.size, unit_bytes)) + [obj.size]
        return [WorkUnit(obj.url, obj.size, obj.etag, "bytes", a, b) for a, b in zip(edges, edges[1:])]
    if how == "row_groups":
        sizes = _row_group_bytes(obj.url)
        if sizes is None or len(sizes) < 2:
            return whole
        units, first, acc = [], 0, 0
        for group, nbytes in enumerate(sizes):
            acc += nbytes
            if acc >= unit_bytes and group + 1 < len(sizes):
                units.append(WorkUnit(obj.url, obj.size, obj.etag, "row_groups", first, group + 1))
                first, acc = group + 1, 0
        units.append(WorkUnit(obj.url, obj.size, obj.etag, "row_groups", first, len(sizes)))
        return units if len(units) > 1 else whole
    return whole


def _row_group_bytes(url: str) -> list[int] | None:
    """Stored bytes of each row group, from the footer; None when the footer is unreadable (the reader will
    then report the object as unreadable when it processes it whole)."""
    fs, path = filesystem(url)
    try:
        with fs.open(path, "rb") as handle:
            meta = pq.ParquetFile(handle).metadata
            return [sum(meta.row_group(i).column(j).total_compressed_size for j in range(meta.num_columns))
                    for i in range(meta.num_row_groups)]
    except FileNotFoundError:
        raise
    except Exception as exc:  # a damaged footer: one whole-object unit, whose reader records the skip
        log.warning("%s: cannot read the parquet footer (%s); one work unit", url, exc)
        return None

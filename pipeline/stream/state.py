"""The stream's position, typed: per-source cursors, document references, the carry; JSON in checkpoints.

The JSON layout (``to_json``) is the checkpoint format (``STATE_VERSION``): per source ``base, stride, slot,
taken`` (its fresh positions), ``queue`` (row ranges ``[pos, b0, r0, b1, r1]`` still to read), ``buffer`` (documents
read but not emitted, ``[pos, batch, row]``), ``draws`` and ``salt`` (the shuffle buffer's random stream) and
``counts`` (what mixing has emitted); plus the carry (documents not yet fully emitted,
``[source, pos, batch, row, token offset]``), windows emitted and the lowest epoch pending.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

from pipeline.stream.redeal import Cursor, RowRange

STATE_VERSION = 2


class DocRef(NamedTuple):
    """A document by the position of its block and the key ``(batch, row)`` of its first row."""

    pos: int
    batch: int
    row: int


class CarryRef(NamedTuple):
    """A document whose tokens from ``offset`` on are not yet emitted."""

    source: int
    pos: int
    batch: int
    row: int
    offset: int

    @property
    def doc(self) -> tuple[int, int, int, int]:
        return self.source, self.pos, self.batch, self.row


@dataclass
class Counts:
    """What a source has emitted (mixing compares these with the weights)."""

    docs: int = 0
    bytes: int = 0
    patches: int = 0


@dataclass
class SourceCursor(Cursor):
    """One rank's position in one source: fresh positions, unread ranges, shuffle buffer, draws, counts."""

    draws: int = 0
    salt: int = 0
    counts: Counts = field(default_factory=Counts)

    @classmethod
    def from_json(cls, data: dict) -> SourceCursor:
        return cls(data["base"], data["stride"], data["slot"], data["taken"],
                   [RowRange.from_json(i) for i in data["queue"]], [DocRef(*b) for b in data["buffer"]],
                   data["draws"], data["salt"], Counts(**data["counts"]))

    def to_json(self) -> dict:
        return {"base": self.base, "stride": self.stride, "slot": self.slot, "taken": self.taken,
                "queue": [i.to_json() for i in self.queue], "buffer": [list(b) for b in self.buffer],
                "draws": self.draws, "salt": self.salt, "counts": asdict(self.counts)}

    def next_position(self) -> int:
        """The position of the next document this cursor reads (its queue's head, else its next fresh block)."""
        return self.queue[0].pos if self.queue else self.fresh()

    def lowest_position(self) -> int:
        """The lowest position it still holds documents of (queued, buffered or fresh)."""
        return min([i.pos for i in self.queue] + [b.pos for b in self.buffer] + [self.fresh()])


@dataclass
class StreamState:
    signature: dict
    world: int
    rank: int
    sources: list[SourceCursor]
    carry: list[CarryRef] = field(default_factory=list)
    windows: int = 0
    epoch: int = 0

    @classmethod
    def from_json(cls, data: dict) -> StreamState:
        return cls(data["signature"], data["world"], data["rank"],
                   [SourceCursor.from_json(s) for s in data["sources"]], [CarryRef(*c) for c in data["carry"]],
                   data["windows"], data["epoch"])

    def to_json(self) -> dict:
        return {"version": STATE_VERSION, "signature": self.signature, "world": self.world, "rank": self.rank,
                "sources": [s.to_json() for s in self.sources], "carry": [list(c) for c in self.carry],
                "windows": self.windows, "epoch": self.epoch}

"""The elastic re-deal of a source's unread work, as pure functions over typed per-rank cursors.

Rank ``slot`` of ``stride`` ranks owns the positions ``base + slot, base + slot + stride, ...`` of a source's
endless block sequence and has started ``taken`` of them (``fresh_position``: the one formula for "next fresh
block"). When a run resumes on another world size, every old rank's unread work becomes a list of row ranges
(``leftovers``): whole blocks below the new common base that their owner never started, the unread rest of its
current block (its queue) and the documents read but not emitted (its shuffle buffer). ``deal`` hands them to
the new ranks by estimated bytes, the same on every rank (no communication).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


def fresh_position(base: int, slot: int, stride: int, taken: int) -> int:
    """The position of a rank's next fresh block (``taken - 1``: the last one it started)."""
    return base + slot + taken * stride


@dataclass(frozen=True, order=True)
class RowRange:
    """The documents whose first row ``(batch, row)`` lies in ``[start, end)`` of the block at ``pos``."""

    pos: int
    start: tuple[int, int]
    end: tuple[int, int]

    @classmethod
    def from_json(cls, item: list | tuple) -> RowRange:
        pos, b0, r0, b1, r1 = item
        return cls(pos, (b0, r0), (b1, r1))

    def to_json(self) -> list[int]:
        return [self.pos, *self.start, *self.end]

    @property
    def single(self) -> bool:
        """One document (a shuffle-buffer entry)."""
        return self.end == (self.start[0], self.start[1] + 1)


@dataclass
class Cursor:
    """One rank's position in one source (the re-deal's view of it)."""

    base: int
    stride: int
    slot: int
    taken: int = 0
    queue: list[RowRange] = field(default_factory=list)  # the unread rest of the current block, older leftovers
    buffer: list[tuple[int, int, int]] = field(default_factory=list)  # (pos, batch, row) read, not yet emitted

    @classmethod
    def from_state(cls, state: dict) -> Cursor:
        return cls(state["base"], state["stride"], state["slot"], state["taken"],
                   [RowRange.from_json(i) for i in state["queue"]], [tuple(b) for b in state["buffer"]])

    def fresh(self, ahead: int = 0) -> int:
        return fresh_position(self.base, self.slot, self.stride, self.taken + ahead)


def new_base(cursors: list[Cursor]) -> int:
    """One past the highest position any rank started (where the new ranks' fresh positions begin)."""
    started = [c.fresh(-1) for c in cursors if c.taken > 0]
    return max(started) + 1 if started else cursors[0].base


def leftovers(cursors: list[Cursor], block_rows: Callable[[int], tuple[int, int]]) -> list[RowRange]:
    """Every unread piece of work of the old ranks; ``block_rows(pos)`` is the block's ``(start, stop)`` batches."""
    bases = {(c.base, c.stride) for c in cursors}
    if len(bases) != 1 or cursors[0].stride != len(cursors):
        raise ValueError(f"inconsistent loader states: {sorted(bases)} from {len(cursors)} ranks")
    base = new_base(cursors)
    items: list[RowRange] = []
    for c in cursors:
        pos = c.fresh()
        while pos < base:  # never started by its owner: a whole block
            start, stop = block_rows(pos)
            items.append(RowRange(pos, (start, 0), (stop, 0)))
            pos += c.stride
        items.extend(c.queue)
        items.extend(RowRange(p, (b, r), (b, r + 1)) for p, b, r in c.buffer)
    return items


def deal(items: list[RowRange], world: int, weight: Callable[[RowRange], float]) -> list[list[RowRange]]:
    """Items to ``world`` ranks, largest first to the least loaded (ties: lowest rank); each share sorted."""
    shares: list[list[RowRange]] = [[] for _ in range(world)]
    load = [0.0] * world
    for item in sorted(items, key=lambda it: (-weight(it), it)):
        target = min(range(world), key=lambda r: (load[r], r))
        shares[target].append(item)
        load[target] += weight(item)
    return [sorted(s) for s in shares]

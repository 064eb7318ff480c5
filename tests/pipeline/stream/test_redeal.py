"""The elastic re-deal as pure functions (in the manner of mosaicml/streaming's shuffle tests): for many random
old runs and world sizes, the new ranks' work covers every unread block and document exactly once."""

from __future__ import annotations

import collections
import random

import pytest

from pipeline.stream.redeal import Cursor, RowRange, deal, fresh_position, leftovers, new_base

BLOCKS, BATCHES = 7, 3  # a source of 7 blocks of 3 record batches; positions run on over epochs


def block_rows(pos: int) -> tuple[int, int]:
    index = pos % BLOCKS
    return index * BATCHES, index * BATCHES + BATCHES


def weight(item: RowRange) -> float:
    return 0.1 if item.single else float(item.end[0] - item.start[0]) or 0.5


def old_run(rng: random.Random, world: int, base: int) -> list[Cursor]:
    """Old ranks part-way through: each started ``taken`` blocks, the last one partly read (its unread rest
    queued, a few of its documents buffered)."""
    cursors = []
    for slot in range(world):
        c = Cursor(base, world, slot, rng.randint(0, 5))
        if c.taken:
            last = c.fresh(-1)
            start, stop = block_rows(last)
            b = rng.randrange(start, stop)
            c.queue = [RowRange(last, (b, rng.randint(0, 9)), (stop, 0))]
            c.buffer = [(last, start, r) for r in rng.sample(range(10), rng.randint(0, 3))]
        cursors.append(c)
    return cursors


@pytest.mark.parametrize("world", [1, 2, 3, 5, 8])
def test_fresh_positions_partition_the_sequence(world):
    base = 11
    seen = collections.Counter(fresh_position(base, slot, world, taken) for slot in range(world)
                               for taken in range(20))
    assert sorted(seen) == list(range(base, base + 20 * world)) and set(seen.values()) == {1}


@pytest.mark.parametrize("old_world,new_world", [(4, 2), (2, 3), (1, 4), (5, 5), (8, 3), (3, 7)])
@pytest.mark.parametrize("seed", range(12))
def test_redeal_covers_every_unread_piece_once(old_world, new_world, seed):
    rng = random.Random(seed * 100 + old_world * 10 + new_world)
    base = rng.choice([0, BLOCKS * 3 + 2])  # a run that was itself resumed starts at a later base
    cursors = old_run(rng, old_world, base)
    items = leftovers(cursors, block_rows)
    shares = deal(items, new_world, weight)
    # The shares split the leftovers: nothing lost, nothing twice.
    assert collections.Counter(i for s in shares for i in s) == collections.Counter(items)
    assert len(items) == len(set(items))
    top = new_base(cursors)
    started = {c.fresh(-1 - k) for c in cursors for k in range(c.taken)}
    queued = {i for c in cursors for i in c.queue} | {RowRange(p, (b, r), (b, r + 1)) for c in cursors
                                                      for p, b, r in c.buffer}
    assert queued <= set(items)  # every rank's unread rest and buffer are handed on
    whole = [i.pos for i in items if i not in queued]
    assert all(i.start == (block_rows(i.pos)[0], 0) and i.end == (block_rows(i.pos)[1], 0) for i in items
               if i not in queued)
    assert len(whole) == len(set(whole))
    for pos in range(base, top):  # below the new base: started by its owner, or a whole block to re-deal
        assert (pos in started) != (pos in whole), pos
    assert all(pos < top for pos in started | {i.pos for i in items})  # nothing at or past the new base
    # The same on every new rank (a pure function of the old states) and balanced by weight.
    assert deal(leftovers([Cursor.from_state(_state(c)) for c in cursors], block_rows), new_world, weight) == shares
    loads = [sum(weight(i) for i in s) for s in shares]
    assert max(loads) - min(loads) <= max((weight(i) for i in items), default=0.0) + 1e-9


def test_nothing_started_keeps_the_base_and_inconsistent_states_are_refused():
    cursors = [Cursor(5, 2, 0), Cursor(5, 2, 1)]
    assert new_base(cursors) == 5 and leftovers(cursors, block_rows) == []
    with pytest.raises(ValueError, match="inconsistent"):
        leftovers([Cursor(5, 2, 0), Cursor(6, 2, 1)], block_rows)
    with pytest.raises(ValueError, match="inconsistent"):
        leftovers([Cursor(5, 3, 0), Cursor(5, 3, 1)], block_rows)  # a rank's state is missing


def test_row_range_json_round_trip():
    item = RowRange(12, (3, 4), (5, 0))
    assert RowRange.from_json(item.to_json()) == item and item.to_json() == [12, 3, 4, 5, 0]
    assert RowRange(1, (2, 3), (2, 4)).single and not item.single


def _state(c: Cursor) -> dict:
    return {"base": c.base, "stride": c.stride, "slot": c.slot, "taken": c.taken,
            "queue": [i.to_json() for i in c.queue], "buffer": [list(b) for b in c.buffer]}

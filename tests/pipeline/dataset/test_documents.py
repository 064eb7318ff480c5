"""The one rule for joining a long document's stored parts: row by row (join_parts) and per record batch
(DocumentSpans) agree, however the rows are cut into batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dataset.documents import DocumentSpans, PartOrderError, StoredRow, join_parts


def rows_of(docs: list[list[int]]) -> list[StoredRow[int]]:
    """``docs``: per document, the byte length of each stored part."""
    return [StoredRow(f"d{d}", part, (d, part), size) for d, sizes in enumerate(docs) for part, size in enumerate(sizes)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 50), min_size=1, max_size=4), min_size=1, max_size=12), st.data())
def test_batches_and_rows_join_the_same_documents(docs, data):
    rows = rows_of(docs)
    joined = list(join_parts(rows, strict=True))
    assert [d.doc_id for d in joined] == [f"d{i}" for i in range(len(docs))]
    assert [d.parts for d in joined] == docs
    cuts = sorted(data.draw(st.sets(st.integers(0, len(rows)), max_size=4)) | {0, len(rows)})
    spans, lengths, firsts, positions = DocumentSpans(), [], [], []
    for lo, hi in zip(cuts, cuts[1:]):
        batch = spans.add(np.array([r.part for r in rows[lo:hi]]), np.array([r.payload for r in rows[lo:hi]]))
        lengths += batch.closed_lengths.tolist()
        firsts += batch.closed_first_rows.tolist()
        positions += batch.position.tolist()
    last = spans.finish()
    lengths.append(last[0])
    firsts.append(last[1])
    assert lengths == [sum(sizes) for sizes in docs]
    assert firsts == np.cumsum([0] + [len(s) for s in docs])[:-1].tolist()
    assert positions == [sum(sizes[:p]) for sizes in docs for p in range(len(sizes))]


def test_strict_readers_skip_orphan_parts_and_reject_gaps():
    rows = [StoredRow("a", 2, 0, "a2"), StoredRow("b", 0, 1, "b0"), StoredRow("b", 1, 2, "b1")]
    assert [(d.doc_id, d.key, d.parts) for d in join_parts(rows, strict=True)] == [("b", 1, ["b0", "b1"])]
    with pytest.raises(PartOrderError, match="part 2 of 'b'"):
        list(join_parts([*rows, StoredRow("b", 3, 3, "b3")], strict=True,
                        on_error=lambda row, want: f"expected part {want.part} of {want.doc_id!r}"))


def test_lenient_readers_start_a_document_at_any_break():
    rows = [StoredRow("a", 2, 0, "a2"), StoredRow("a", 3, 1, "a3"), StoredRow("b", 1, 2, "b1")]
    assert [(d.doc_id, d.parts) for d in join_parts(rows)] == [("a", ["a2", "a3"]), ("b", ["b1"])]

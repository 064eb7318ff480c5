"""Joining a long document's stored parts: the one rule, for row-by-row readers and for whole record batches.

A document longer than ``--max-doc-bytes`` is stored as consecutive rows with the same ``doc_id`` and ``part``
0, 1, 2, ... A row continues the document before it when it is that document's next part. Readers that go row
by row (the training stream, the document-global patch modes) use ``join_parts``; statistics and calibration,
which work on whole record batches with numpy, use ``DocumentSpans``: both apply the same rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class PartRef:
    """Which document a stored row belongs to, and which of its parts it is."""

    doc_id: str
    part: int

    def is_followed_by(self, doc_id: str, part: int) -> bool:
        """Is the row ``(doc_id, part)`` the next part of this row's document?"""
        return part == self.part + 1 and doc_id == self.doc_id


@dataclass
class StoredRow(Generic[T]):
    """One stored row: its document and part, where it is (``key``), and what the caller read from it."""

    doc_id: str
    part: int
    key: object
    payload: T

    @property
    def ref(self) -> PartRef:
        return PartRef(self.doc_id, self.part)


@dataclass
class JoinedDocument(Generic[T]):
    """A whole document: the payloads of its rows in part order; ``key`` is its first row's."""

    doc_id: str
    key: object
    parts: list[T] = field(default_factory=list)


class PartOrderError(ValueError):
    """A row claims to continue a document, but is not its next part."""


def join_parts(rows: Iterable[StoredRow[T]], strict: bool = False,
               on_error: Callable[[StoredRow, PartRef], str] | None = None) -> Iterator[JoinedDocument[T]]:
    """Whole documents from stored rows in shard order.

    A ``part == 0`` row starts a document. A later part continues the open document when it is its next part.
    Otherwise: ``strict`` readers (the training stream, which reads a key range) skip later parts before their
    first document (they belong to a document an earlier range owns) and raise ``PartOrderError`` on a gap;
    lenient readers start a new document with that row (shards written before parts shared an id)."""
    current: JoinedDocument[T] | None = None
    last: PartRef | None = None
    for row in rows:
        if row.part != 0 and current is not None and last is not None and last.is_followed_by(row.doc_id, row.part):
            current.parts.append(row.payload)
            last = row.ref
            continue
        if row.part != 0 and strict:
            if current is None:
                continue  # a later part of a document owned by an earlier range
            expected = PartRef(last.doc_id, last.part + 1)
            message = on_error(row, expected) if on_error else f"row {row.key}: not part {expected.part}"
            raise PartOrderError(message)
        if current is not None:
            yield current
        current, last = JoinedDocument(row.doc_id, row.key, [row.payload]), row.ref
    if current is not None:
        yield current


@dataclass
class BatchDocuments:
    """One record batch seen as documents (see ``DocumentSpans.add``)."""

    starts: np.ndarray  # bool per row: the row starts a document
    position: np.ndarray  # per row: offset of its first byte in its document
    closed_lengths: np.ndarray  # bytes of each document that ended in this batch (before its last document)
    closed_first_rows: np.ndarray  # shard row of each of those documents' first part


@dataclass
class DocumentSpans:
    """Whole documents over the record batches of one shard, vectorized, carried from batch to batch.

    A row with ``part > 0`` continues the document of the row before it (possibly in the previous batch); any
    other row, or a first row with nothing before it, starts one. The last document of a batch stays open."""

    open_length: int | None = None  # bytes so far of the document still open at the last batch's end
    open_first_row: int = 0
    rows_seen: int = 0

    def add(self, parts: np.ndarray, row_lengths: np.ndarray) -> BatchDocuments:
        rows = len(parts)
        row_lengths = np.asarray(row_lengths, dtype=np.int64)
        starts = np.asarray(parts) == 0
        if self.open_length is None and rows:
            starts[0] = True
        row_start = np.concatenate([[0], np.cumsum(row_lengths)[:-1]]) if rows else np.zeros(0, np.int64)
        group = np.cumsum(starts)  # 0: the rows that continue the open document
        carried = self.open_length or 0
        group_base = np.concatenate([[-carried], row_start[starts]])
        position = row_start - group_base[group]
        lengths = np.bincount(group, weights=row_lengths, minlength=int(group[-1]) + 1 if rows else 1)
        lengths = lengths.astype(np.int64)
        lengths[0] += carried
        first_rows = np.concatenate([[self.open_first_row], self.rows_seen + np.nonzero(starts)[0]])
        first = 0 if self.open_length is not None else 1  # group 0 is a document only if one was open
        closed = slice(first, len(lengths) - 1)
        result = BatchDocuments(starts, position, lengths[closed], first_rows[closed].astype(np.int64))
        if rows:
            self.open_length, self.open_first_row = int(lengths[-1]), int(first_rows[-1])
        self.rows_seen += rows
        return result

    def finish(self) -> tuple[int, int] | None:
        """Close the open document: (its length, its first row), or None."""
        if self.open_length is None:
            return None
        done, self.open_length = (self.open_length, self.open_first_row), None
        return done

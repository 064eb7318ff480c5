"""Patch boundaries from entropies (or bytes), vectorized; every rule equals the reference that defines it.

Conventions, as in HF ``BltPatcher.patch_lengths_from_entropies`` and bytelatent's ``find_entropy_patch_start_ids``:

* entropies[t] scores the prediction of byte t+1, so a criterion met at t starts a patch at t+1;
* positions 0 and 1 always start patches (the first byte is a patch of its own, which the local decoder's
  one-patch shift relies on); the score at t=0 is ignored;
* ``include_next``: when the criterion holds at the last position the *next* byte (beyond the sequence)
  starts a patch; HF then appends a zero-length patch, which we reproduce on request (bytelatent's
  ``include_next_token=True`` instead counts that next byte: its last patch is one longer).

Modes (t is a position inside one document, e its entropies, b its bytes):

* ``entropy``: e[t] > threshold (HF ``BltPatcher``, bytelatent's global threshold).
* ``monotonic`` (bytelatent ``monotonicity=True``): byte 2 always starts a patch; for t >= 2,
  e[t] - e[t-1] > threshold.
* ``threshold_add`` (bytelatent ``threshold_add``): byte 2 always starts a patch, byte 3 never does; for t >= 3
  BOTH e[t] > threshold AND e[t] - e[t-1] > threshold_add.
* ``threshold_or_rise``: this project's earlier ``threshold_add``: e[t] > threshold OR e[t] - e[t-1] >
  threshold_add (t >= 1, the rise at t=1 uses e[0]).
* ``topk`` (bytelatent's entropy mode without a threshold): a fixed budget of ``len // patch_size`` patches per
  document: bytes 0 and 1 plus the ``len // patch_size - 2`` highest e[t] (t >= 1; ties go to the earlier byte).
* ``space`` (bytelatent ``space``): boundary bytes are ASCII non-alphanumerics, UTF-8 lead bytes (>= 0xC0) and
  special ids (negative values: pass token ids - 4); a patch ends on the first byte of each run of boundary bytes.
* ``spacebyte``: this project's earlier ``space``: a patch starts at a word byte that follows an ASCII
  non-alphanumeric byte (SpaceByte's rule; multibyte UTF-8 counts as word bytes).
* ``static`` (every ``patch_size`` bytes after the first-byte patch), ``byte`` (one byte per patch).

``max_patch_length`` then splits long patches into pieces of at most that many bytes (HF ``process_patch_lengths``).
One implementation serves both layouts: ``patch_lengths`` (batch-first, rows right-padded) flattens its rows
into the documents-end-to-end form of ``patch_lengths_flat``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

_NEEDS = {"threshold": "a threshold", "threshold_add": "threshold_add"}  # parameters a mode cannot run without


@dataclass(frozen=True)
class _Documents:
    """Documents laid end to end, as every rule sees them (``t`` = ``local``, a position inside its document)."""

    offsets: torch.Tensor  # [D+1]
    lengths: torch.Tensor  # [D]
    doc_index: torch.Tensor  # [N] document of each position
    local: torch.Tensor  # [N] position inside its document
    is_last: torch.Tensor  # [N] last byte of its document
    entropies: torch.Tensor | None  # [N] float32, for modes that read entropies
    byte_values: torch.Tensor | None  # [N] int64, for modes that read bytes

    @property
    def rise(self) -> torch.Tensor:
        return self.entropies - _previous(self.entropies)


Rule = Callable[["_Documents", "PatchingParams"], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass(frozen=True)
class PatchMode:
    """One patching mode: its rule (documents -> (starts [N], next_start [D])) and the flags the pipeline reads."""

    name: str
    rule: Rule
    reads: str | None = None  # "entropies" | "bytes" | None: what the rule needs besides positions
    uses: tuple[str, ...] = ()  # parameters in its patch-set key (threshold / threshold_add are required)
    whole_documents: bool = False  # ranks a document as a whole: a split document is patched whole, not inline
    periodic: bool = False  # starts depend on the position in the document (a carried tail needs its phase)
    exact_calibration: bool = False  # the score histogram gives the exact threshold for a target patch size
    rules_revision: str | None = None  # rules changed under this name: never reuse patch sets stored before

    @property
    def budget(self) -> bool:
        """An entropy mode without a threshold (its budget comes from patch_size; it stores no threshold)."""
        return self.reads == "entropies" and "threshold" not in self.uses


MODE_REGISTRY: dict[str, PatchMode] = {}


def register_mode(mode: PatchMode) -> PatchMode:
    MODE_REGISTRY[mode.name] = mode
    return mode


# HF BltConfig.patching_threshold / bytelatent's released patcher threshold (nats): the one default everywhere.
ENTROPY_THRESHOLD = 1.335442066192627


@dataclass(frozen=True)
class PatchingParams:
    mode: str = "entropy"
    threshold: float | None = ENTROPY_THRESHOLD
    threshold_add: float | None = None
    patch_size: int | float = 4
    max_patch_length: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODE_REGISTRY:
            raise ValueError(f"unknown patch mode {self.mode!r}; choose from {tuple(MODE_REGISTRY)}")
        for name, what in _NEEDS.items():
            if name in self.spec.uses and getattr(self, name) is None:
                raise ValueError(f"mode {self.mode!r} needs {what}")
        if self.max_patch_length is not None and self.max_patch_length < 1:
            raise ValueError("max_patch_length must be >= 1")
        if not self.patch_size > 0:
            raise ValueError("patch_size must be > 0")
        if self.spec.periodic and (self.patch_size != int(self.patch_size) or self.patch_size < 1):
            raise ValueError(f"{self.mode} mode needs an integer patch_size >= 1")

    @property
    def spec(self) -> PatchMode:
        return MODE_REGISTRY[self.mode]

    @property
    def needs_entropies(self) -> bool:
        return self.spec.reads == "entropies"

    @property
    def needs_bytes(self) -> bool:
        return self.spec.reads == "bytes"

    @property
    def has_threshold(self) -> bool:
        """Whether a threshold drives the patch count (what calibration can tune)."""
        return "threshold" in self.spec.uses

    def with_threshold(self, threshold: float) -> PatchingParams:
        return PatchingParams(self.mode, threshold, self.threshold_add, self.patch_size, self.max_patch_length)

    def key(self) -> str:
        """Stable, readable directory name for a patch set made with these parameters."""
        parts = [self.mode]
        uses = self.spec.uses
        if "threshold" in uses:
            parts.append(f"t{self.threshold:.6g}")
        if "threshold_add" in uses:
            parts.append(f"a{self.threshold_add:.6g}")
        if "patch_size" in uses:
            parts.append(f"p{self.patch_size:g}")
        if self.max_patch_length is not None:
            parts.append(f"max{self.max_patch_length}")
        identity = asdict(self)
        if self.spec.rules_revision:  # rules changed under the same name: never reuse an older patch set
            identity["rules"] = self.spec.rules_revision
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
        return "-".join(parts) + "-" + digest

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PatchingParams:
        return cls(**data)


def _boundary_bytes(b: torch.Tensor) -> torch.Tensor:
    """bytelatent's space-mode boundary bytes: ASCII non-alphanumerics, UTF-8 lead bytes, special ids (< 0)."""
    return (
        (b < 48) | ((b > 57) & (b < 65)) | ((b > 90) & (b < 97)) | ((b > 122) & (b < 128)) | (b >= 0xC0)
    )


def _space_like(byte_values: torch.Tensor) -> torch.Tensor:
    """SpaceByte's space-like bytes: ASCII bytes that are neither letters nor digits."""
    b = byte_values.long()
    letter = ((b >= 65) & (b <= 90)) | ((b >= 97) & (b <= 122))
    digit = (b >= 48) & (b <= 57)
    return (b < 128) & ~letter & ~digit


def _previous(values: torch.Tensor) -> torch.Tensor:
    """values shifted right by one (the first element repeated); callers mask document starts themselves."""
    return torch.cat([values[:1], values[:-1]])


def _topk_criterion(ent: torch.Tensor, local: torch.Tensor, doc_index: torch.Tensor, doc_lengths: torch.Tensor,
                    patch_size: float) -> torch.Tensor:
    """Per document, the ``len // patch_size - 2`` highest scores among t >= 1 (ties: earlier position first)."""
    crit = torch.zeros_like(local, dtype=torch.bool)
    budget = (torch.div(doc_lengths.double(), float(patch_size), rounding_mode="floor").long() - 2).clamp_min(0)
    candidates = torch.nonzero(local >= 1)[:, 0]
    if candidates.numel() == 0:
        return crit
    docs = doc_index[candidates]
    by_value = torch.sort(-ent[candidates], stable=True).indices  # stable: equal scores keep position order
    order = by_value[torch.sort(docs[by_value], stable=True).indices]
    sorted_docs = docs[order]
    rank = torch.arange(len(order), device=ent.device) - torch.searchsorted(sorted_docs, sorted_docs)
    crit[candidates[order[rank < budget[sorted_docs]]]] = True
    return crit


def _from_criterion(docs: _Documents, crit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A criterion met at t starts a patch at t+1; bytes 0 and 1 always start one."""
    crit = crit & (docs.local >= 1)  # a document's first score is ignored (byte 1 starts a patch anyway)
    starts = docs.local < 2
    starts[1:] |= crit[:-1] & ~docs.is_last[:-1]
    next_start = torch.zeros(len(docs.lengths), dtype=torch.bool, device=crit.device)
    nonempty = docs.lengths > 0
    next_start[nonempty] = crit[(docs.offsets[1:] - 1)[nonempty]]
    # Byte 1 always starts a patch: for a one-byte document that is the next byte (HF and bytelatent agree).
    return starts, next_start | (docs.lengths == 1)


def _entropy(docs: _Documents, params: PatchingParams):
    return _from_criterion(docs, docs.entropies > params.threshold)


def _monotonic(docs: _Documents, params: PatchingParams):
    return _from_criterion(docs, (docs.local == 1) | ((docs.local >= 2) & (docs.rise > params.threshold)))


def _threshold_add(docs: _Documents, params: PatchingParams):
    crit = (docs.local >= 3) & (docs.rise > params.threshold_add) & (docs.entropies > params.threshold)
    return _from_criterion(docs, (docs.local == 1) | crit)


def _threshold_or_rise(docs: _Documents, params: PatchingParams):
    return _from_criterion(docs, (docs.entropies > params.threshold) | (docs.rise > params.threshold_add))


def _topk(docs: _Documents, params: PatchingParams):
    return _from_criterion(docs, _topk_criterion(docs.entropies, docs.local, docs.doc_index, docs.lengths,
                                                 params.patch_size))


def _space(docs: _Documents, params: PatchingParams):
    b = docs.byte_values
    boundary = _boundary_bytes(b)
    return _from_criterion(docs, (boundary & ~(_previous(boundary) & (docs.local >= 1))) | (b < 0))


def _spacebyte(docs: _Documents, params: PatchingParams):
    """A word byte after a space-like byte starts a patch; never the byte past the end."""
    space = _space_like(docs.byte_values)
    return _from_criterion(docs, space & ~torch.cat([space[1:], space[:1]]) & ~docs.is_last)


def _static(docs: _Documents, params: PatchingParams):
    size = int(params.patch_size)
    return (docs.local < 2) | (docs.local % size == 0), (docs.lengths % size == 0) | (docs.lengths == 1)


def _byte(docs: _Documents, params: PatchingParams):
    return torch.ones_like(docs.local, dtype=torch.bool), torch.ones_like(docs.lengths, dtype=torch.bool)


for _mode in (
    PatchMode("entropy", _entropy, "entropies", ("threshold",), exact_calibration=True),
    PatchMode("monotonic", _monotonic, "entropies", ("threshold",), rules_revision="bytelatent"),
    PatchMode("threshold_add", _threshold_add, "entropies", ("threshold", "threshold_add"), rules_revision="bytelatent"),
    PatchMode("threshold_or_rise", _threshold_or_rise, "entropies", ("threshold", "threshold_add")),
    PatchMode("topk", _topk, "entropies", ("patch_size",), whole_documents=True),
    PatchMode("static", _static, None, ("patch_size",), periodic=True),
    PatchMode("space", _space, "bytes", rules_revision="bytelatent"),
    PatchMode("spacebyte", _spacebyte, "bytes"),
    PatchMode("byte", _byte),
):
    register_mode(_mode)
PATCH_MODES = tuple(MODE_REGISTRY)
THRESHOLD_MODES = tuple(name for name, m in MODE_REGISTRY.items() if "threshold" in m.uses)
ENTROPY_MODES = tuple(name for name, m in MODE_REGISTRY.items() if m.reads == "entropies")
BYTE_MODES = tuple(name for name, m in MODE_REGISTRY.items() if m.reads == "bytes")


def _flat_starts(
    params: PatchingParams,
    doc_offsets: torch.Tensor,
    entropies: torch.Tensor | None,
    byte_values: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(starts [N] bool, next_start [D] bool) for documents laid end to end, by the mode's rule."""
    device = doc_offsets.device
    doc_offsets = doc_offsets.long()
    total = int(doc_offsets[-1])
    doc_lengths = doc_offsets[1:] - doc_offsets[:-1]
    doc_index = torch.repeat_interleave(torch.arange(len(doc_lengths), device=device), doc_lengths)
    local = torch.arange(total, device=device) - doc_offsets[:-1][doc_index]
    spec = params.spec
    if spec.reads == "entropies" and entropies is None:
        raise ValueError(f"mode {params.mode!r} needs entropies")
    if spec.reads == "bytes" and byte_values is None:
        raise ValueError(f"mode {params.mode!r} needs byte values")
    docs = _Documents(doc_offsets, doc_lengths, doc_index, local, local == doc_lengths[doc_index] - 1,
                      entropies.float() if spec.reads == "entropies" else None,
                      byte_values.long() if spec.reads == "bytes" else None)
    return spec.rule(docs, params)


def patch_start_mask(
    params: PatchingParams,
    entropies: torch.Tensor | None = None,
    byte_values: torch.Tensor | None = None,
    length: int | None = None,
    batch: int = 1,
    include_next: bool = False,
    seq_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (starts [B, L] bool, next_starts [B] bool: whether the byte after each row starts a patch).

    ``entropies`` [B, L] for entropy modes, ``byte_values`` [B, L] (raw bytes 0..255, or token ids - 4 so that
    special ids are negative) for ``space``/``spacebyte``; ``seq_lengths`` [B] when rows are right-padded.
    """
    source = entropies if entropies is not None else byte_values
    if source is not None:
        batch, length = source.shape
        device = source.device
    else:
        if length is None:
            raise ValueError("patch_start_mask needs entropies, byte_values or a length")
        device = torch.device("cpu")
    positions = torch.arange(length, device=device)
    if seq_lengths is None:
        seq_lengths = torch.full((batch,), length, dtype=torch.long, device=device)
    seq_lengths = seq_lengths.long().to(device)
    valid = positions[None, :] < seq_lengths[:, None]
    offsets = torch.cat([torch.zeros(1, dtype=torch.long, device=device), seq_lengths.cumsum(0)])
    flat_starts, next_starts = _flat_starts(
        params,
        offsets,
        entropies[valid] if entropies is not None else None,
        byte_values[valid] if byte_values is not None else None,
    )
    starts = torch.zeros((batch, length), dtype=torch.bool, device=device)
    starts[valid] = flat_starts
    if params.max_patch_length is not None:
        starts = split_long_patches(starts, params.max_patch_length)
    return starts, next_starts & include_next


def split_long_patches(starts: torch.Tensor, max_patch_length: int) -> torch.Tensor:
    """Add starts so that no patch exceeds ``max_patch_length`` (pieces of exactly max, then the remainder)."""
    positions = torch.arange(starts.shape[1], device=starts.device).expand_as(starts)
    last_start = torch.where(starts, positions, torch.zeros_like(positions)).cummax(dim=1).values
    return starts | ((positions - last_start) % max_patch_length == 0)


def lengths_from_start_mask(
    starts: torch.Tensor, seq_lengths: torch.Tensor | None = None, next_starts: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, L] start mask -> [B, P] patch lengths, right-padded with zeros.

    ``seq_lengths`` [B] limits each row (positions past it are padding). With ``next_starts`` a zero-length
    patch is appended to the rows where it is True (HF's trailing-patch convention).
    """
    batch, length = starts.shape
    positions = torch.arange(length, device=starts.device).expand(batch, length)
    if seq_lengths is None:
        seq_lengths = torch.full((batch,), length, device=starts.device, dtype=torch.long)
    valid = positions < seq_lengths[:, None]
    starts = starts & valid
    patch_index = starts.long().cumsum(dim=1) - 1
    counts = starts.sum(dim=1)
    extra = next_starts.long() if next_starts is not None else torch.zeros_like(counts)
    width = int((counts + extra).max().item()) if batch else 0
    lengths = torch.zeros((batch, width + 1), dtype=torch.long, device=starts.device)
    # Padding positions go to the spare last column, which is dropped.
    target = torch.where(valid & (patch_index >= 0), patch_index, torch.full_like(patch_index, width))
    lengths.scatter_add_(1, target, torch.ones_like(target))
    return lengths[:, :width]


def patch_lengths(
    params: PatchingParams,
    entropies: torch.Tensor | None = None,
    byte_values: torch.Tensor | None = None,
    seq_lengths: torch.Tensor | None = None,
    include_next: bool = False,
) -> torch.Tensor:
    """One call from scores/bytes to padded patch lengths [B, P]."""
    starts, next_starts = patch_start_mask(
        params, entropies, byte_values, include_next=include_next, seq_lengths=seq_lengths
    )
    return lengths_from_start_mask(starts, seq_lengths, next_starts)


def patch_ids_from_lengths(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[B, P] lengths -> [B, L] index of the patch holding each position (HF ``_patch_ids_from_lengths``)."""
    ends = lengths.cumsum(dim=1)
    starts = torch.cat([torch.zeros_like(ends[:, :1]), ends[:, :-1]], dim=1).contiguous()
    positions = torch.arange(seq_len, device=lengths.device).expand(lengths.shape[0], seq_len).contiguous()
    return torch.searchsorted(starts, positions, right=True) - 1


def patch_lengths_flat(
    params: PatchingParams,
    doc_offsets: torch.Tensor,
    entropies: torch.Tensor | None = None,
    byte_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch many documents laid end to end in one pass, without padding.

    doc_offsets [D+1] (doc d spans offsets[d]:offsets[d+1]); entropies / byte_values [N] for the whole
    stream. Returns (lengths [total patches], patches_per_doc [D]); equal to patching each document alone.
    """
    total = int(doc_offsets[-1])
    device = doc_offsets.device
    starts, _ = _flat_starts(params, doc_offsets, entropies, byte_values)
    start_positions = torch.nonzero(starts)[:, 0]
    lengths = torch.diff(start_positions, append=torch.tensor([total], device=device))
    first_patch = torch.searchsorted(start_positions, doc_offsets)  # [D+1]: index of each doc's first patch
    if params.max_patch_length is not None:
        lengths, first_patch = _split_lengths(lengths, first_patch, params.max_patch_length)
    return lengths, torch.diff(first_patch)


def _split_lengths(lengths: torch.Tensor, first_patch: torch.Tensor, max_len: int):
    """Cut patches longer than ``max_len`` into pieces of max_len and a remainder (same as on the mask).

    Works on the (few) patches instead of every byte; ``first_patch`` indices move with the added pieces.
    """
    pieces = (lengths + max_len - 1) // max_len
    if not bool((pieces > 1).any()):
        return lengths, first_patch
    ends = pieces.cumsum(0)
    split = torch.full((int(ends[-1]),), max_len, dtype=lengths.dtype, device=lengths.device)
    split[ends - 1] = lengths - (pieces - 1) * max_len
    moved = torch.cat([torch.zeros(1, dtype=ends.dtype, device=ends.device), ends])
    return split, moved[first_patch]

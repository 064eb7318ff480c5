"""Patch boundaries from entropies (or bytes), vectorized and batch-first.

Every mode produces a boolean *start mask* [B, L] (True where a patch begins); lengths follow from it.
Conventions, as in HF ``BltPatcher.patch_lengths_from_entropies`` and the BLT paper:

* entropies[t] scores the prediction of byte t+1, so a criterion met at t starts a patch at t+1;
* positions 0 and 1 always start patches (the first byte is a patch of its own, which the local decoder's
  one-patch shift relies on); the score at t=0 is ignored;
* ``include_next``: when the criterion holds at the last position the *next* byte (beyond the sequence)
  starts a patch; HF then appends a zero-length patch, which we reproduce on request.

Modes: ``entropy`` (H[t] > threshold, the paper's global threshold), ``monotonic`` (H[t] - H[t-1] > threshold,
the paper's approximate monotonic constraint), ``threshold_add`` (either H[t] > threshold or the rise
H[t] - H[t-1] > threshold_add), ``static`` (every ``patch_size`` bytes), ``space`` (a patch starts at
a byte that is not space-like and follows a space-like one, as in SpaceByte), ``byte`` (one byte per patch).
``max_patch_length`` then splits long patches into pieces of at most that many bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch

ENTROPY_MODES = ("entropy", "monotonic", "threshold_add")
PATCH_MODES = ENTROPY_MODES + ("static", "space", "byte")


@dataclass(frozen=True)
class PatchingParams:
    mode: str = "entropy"
    threshold: float | None = 1.335442066192627
    threshold_add: float | None = None
    patch_size: int = 4
    max_patch_length: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in PATCH_MODES:
            raise ValueError(f"unknown patch mode {self.mode!r}; choose from {PATCH_MODES}")
        if self.mode in ENTROPY_MODES and self.threshold is None:
            raise ValueError(f"mode {self.mode!r} needs a threshold")
        if self.mode == "threshold_add" and self.threshold_add is None:
            raise ValueError("mode 'threshold_add' needs threshold_add")
        if self.max_patch_length is not None and self.max_patch_length < 1:
            raise ValueError("max_patch_length must be >= 1")
        if self.patch_size < 1:
            raise ValueError("patch_size must be >= 1")

    @property
    def needs_entropies(self) -> bool:
        return self.mode in ENTROPY_MODES

    def with_threshold(self, threshold: float) -> PatchingParams:
        return PatchingParams(self.mode, threshold, self.threshold_add, self.patch_size, self.max_patch_length)

    def key(self) -> str:
        """Stable, readable directory name for a patch set made with these parameters."""
        parts = [self.mode]
        if self.mode in ENTROPY_MODES:
            parts.append(f"t{self.threshold:.6g}")
        if self.mode == "threshold_add":
            parts.append(f"a{self.threshold_add:.6g}")
        if self.mode == "static":
            parts.append(f"p{self.patch_size}")
        if self.max_patch_length is not None:
            parts.append(f"max{self.max_patch_length}")
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]
        return "-".join(parts) + "-" + digest

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PatchingParams:
        return cls(**data)


def _criterion(entropies: torch.Tensor, params: PatchingParams) -> torch.Tensor:
    """Bool [B, L]: criterion met at position t (so byte t+1 starts a patch)."""
    ent = entropies.float()
    rise = torch.diff(ent, dim=1, prepend=ent[:, :1])
    if params.mode == "entropy":
        return ent > params.threshold
    if params.mode == "monotonic":
        return rise > params.threshold
    return (ent > params.threshold) | (rise > params.threshold_add)


def _space_like(byte_values: torch.Tensor) -> torch.Tensor:
    """ASCII bytes that are neither letters nor digits (UTF-8 multibyte sequences count as word bytes)."""
    b = byte_values.long()
    letter = ((b >= 65) & (b <= 90)) | ((b >= 97) & (b <= 122))
    digit = (b >= 48) & (b <= 57)
    return (b < 128) & ~letter & ~digit


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

    ``entropies`` [B, L] for entropy modes, ``byte_values`` [B, L] (raw bytes 0..255) for ``space``;
    ``seq_lengths`` [B] when rows are right-padded (the "next" byte of a short row is its own length).
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
    starts = (positions < 2).expand(batch, length).clone()
    if seq_lengths is None:
        seq_lengths = torch.full((batch,), length, dtype=torch.long, device=device)
    last = (seq_lengths - 1).clamp_min(0)[:, None]
    next_starts = torch.zeros(batch, dtype=torch.bool, device=device)
    if params.needs_entropies:
        if entropies is None:
            raise ValueError(f"mode {params.mode!r} needs entropies")
        crit = _criterion(entropies, params)
        crit[:, 0] = False
        starts[:, 1:] |= crit[:, :-1]
        next_starts = crit.gather(1, last)[:, 0] & (seq_lengths > 1)
    elif params.mode == "static":
        starts |= (positions % params.patch_size) == 0
        next_starts = seq_lengths % params.patch_size == 0
    elif params.mode == "space":
        if byte_values is None:
            raise ValueError("mode 'space' needs byte values")
        space = _space_like(byte_values)
        starts[:, 1:] |= space[:, :-1] & ~space[:, 1:]
    else:  # byte
        starts[:] = True
        next_starts[:] = True
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
    doc_starts = doc_offsets[:-1]
    doc_lengths = doc_offsets[1:] - doc_starts
    nonempty = doc_lengths > 0
    starts = torch.zeros(total, dtype=torch.bool, device=device)
    starts[doc_starts[nonempty]] = True
    second = doc_starts[doc_lengths > 1] + 1
    starts[second] = True
    is_last = torch.zeros(total, dtype=torch.bool, device=device)
    is_last[(doc_offsets[1:] - 1)[nonempty]] = True
    if params.needs_entropies:
        if entropies is None:
            raise ValueError(f"mode {params.mode!r} needs entropies")
        crit = _criterion(entropies[None], params)[0]
        crit[doc_starts[nonempty]] = False  # a document's first score is ignored
        crit &= ~is_last  # a criterion on the last byte points past the document
        starts[1:] |= crit[:-1]
    elif params.mode == "static":
        doc_index = torch.repeat_interleave(torch.arange(len(doc_lengths), device=device), doc_lengths)
        local = torch.arange(total, device=device) - doc_starts[doc_index]
        starts |= local % params.patch_size == 0
    elif params.mode == "space":
        if byte_values is None:
            raise ValueError("mode 'space' needs byte values")
        space = _space_like(byte_values)
        follow = space[:-1] & ~space[1:] & ~is_last[:-1]
        starts[1:] |= follow
    else:
        starts[:] = True
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

"""Optimizers for both trainers: ``OptimizerSet`` (optimizers + their LR schedules as one stateful object), AdamW,
and the sparse path for the BLT's hash n-gram tables.

At HF's hash vocabulary (500,002 rows per n-gram size, six sizes) the hash tables hold most of a BLT's parameters
(about 3B of blt-1b's), yet a batch touches only a few rows of them. With ``sparse_hash_grad`` those tables get
sparse gradients and ``torch.optim.SparseAdam`` (lazy Adam: moments and weights of untouched rows stay as they
are; no weight decay on the tables), while everything else keeps AdamW. DDP cannot reduce sparse gradients
(torch 2.13: "Cannot access storage of SparseTensorImpl"), so the tables are left out of DDP and
``sync_sparse_grads`` averages their gradients itself with all-gathers, which gloo and NCCL both support.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

HASH_TABLE_PARAM = "encoder_hash_tok_embedding.weight"
BETAS = (0.9, 0.95)


class OptimizerSet:
    """The run's optimizers and one LR schedule, stepped, zeroed and checkpointed together.

    A BLT with sparse hash gradients has two optimizers (AdamW + SparseAdam); callers never see the difference.
    ``state_dict`` holds the schedule (the steps taken); the optimizers' tensors go through DCP with the model
    (``training.checkpoint``), which reshards them by parameter name."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], schedule: Callable[[int], float]) -> None:
        self.optimizers = optimizers
        self._schedulers = [torch.optim.lr_scheduler.LambdaLR(o, schedule) for o in optimizers]

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()
        for scheduler in self._schedulers:
            scheduler.step()

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""
        return self._schedulers[0].get_last_lr()[0]

    def state_dict(self) -> dict:
        return {"lr_schedule": self._schedulers[0].state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for scheduler in self._schedulers:
            scheduler.load_state_dict(state["lr_schedule"])

    def prepare_load(self) -> None:
        """Before DCP loads optimizer state into these optimizers (SparseAdam needs its state created first)."""
        init_sparse_optimizer_state(self.optimizers)


def build_optimizers(model: torch.nn.Module, lr: float, weight_decay: float,
                     sparse_hash_grad: bool) -> list[torch.optim.Optimizer]:
    """[AdamW over every parameter] or, on the sparse path, [AdamW over the rest, SparseAdam over the tables]."""
    if not sparse_hash_grad:
        return [torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=BETAS)]
    named = dict(model.named_parameters())
    table = named.pop(HASH_TABLE_PARAM)
    return [torch.optim.AdamW(list(named.values()), lr=lr, weight_decay=weight_decay, betas=BETAS),
            torch.optim.SparseAdam([table], lr=lr, betas=BETAS)]


@torch.no_grad()
def init_sparse_optimizer_state(optimizers: list[torch.optim.Optimizer]) -> None:
    """Create SparseAdam's state with an empty sparse step before a checkpoint is loaded into it: torch's
    ``set_state_dict`` would otherwise initialise it with a dense zero gradient, which SparseAdam rejects."""
    for optimizer in optimizers:
        if not isinstance(optimizer, torch.optim.SparseAdam) or optimizer.state:
            continue
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for param in params:
            param.grad = torch.sparse_coo_tensor(torch.empty(1, 0, dtype=torch.long, device=param.device),
                                                 param.new_empty(0, *param.shape[1:]), param.shape)
        optimizer.step()  # touches no row
        optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def sync_sparse_grads(params: list[torch.Tensor], world: int) -> None:
    """Average sparse gradients over all ranks (what DDP does for dense ones), leaving them coalesced."""
    for param in params:
        grad = param.grad
        if grad is None or not grad.is_sparse:
            continue
        grad = grad.coalesce()
        if world > 1:
            indices, values = grad.indices(), grad.values()
            counts = torch.tensor([values.shape[0]], device=values.device)
            all_counts = [torch.zeros_like(counts) for _ in range(world)]
            dist.all_gather(all_counts, counts)
            sizes = [int(c.item()) for c in all_counts]
            longest = max(sizes)
            pad = longest - values.shape[0]  # all_gather needs equal shapes; the padding is cut off again below
            indices = torch.cat([indices, indices.new_zeros(indices.shape[0], pad)], 1)
            values = torch.cat([values, values.new_zeros(pad, *values.shape[1:])])
            gathered_idx = [torch.empty_like(indices) for _ in range(world)]
            gathered_val = [torch.empty_like(values) for _ in range(world)]
            dist.all_gather(gathered_idx, indices)
            dist.all_gather(gathered_val, values)
            # Padding rows must not enter the sum: SparseAdam would step row 0 on a zero gradient.
            grad = torch.sparse_coo_tensor(torch.cat([i[:, :n] for i, n in zip(gathered_idx, sizes)], 1),
                                           torch.cat([v[:n] for v, n in zip(gathered_val, sizes)]) / world,
                                           grad.shape).coalesce()
        param.grad = grad


@torch.no_grad()
def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also accepts coalesced sparse gradients (whose norm is that of
    their values); returns the total norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    dense = [g for g in grads if not g.is_sparse]
    norms = [g.values() for g in grads if g.is_sparse]
    total = torch.nn.utils.get_total_norm(dense + norms) if dense or norms else torch.tensor(0.0)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        if g.is_sparse:
            g.values().mul_(coef.to(g.device))
        else:
            g.mul_(coef.to(g.device))
    return total


def reduce_and_clip(model: torch.nn.Module, max_norm: float, world: int, sparse_hash_grad: bool) -> None:
    """After backward: average the hash tables' sparse gradients over ranks (DDP did the dense ones), then clip
    all gradients together to ``max_norm``."""
    if sparse_hash_grad:
        sync_sparse_grads([model.get_parameter(HASH_TABLE_PARAM)], world)
        clip_grad_norm(list(model.parameters()), max_norm)
    else:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

"""Wrap a model for training: meta-device construction, deterministic init, activation checkpointing, FSDP2 or
DDP, torch.compile. Applied from outside the model: ``blt_model`` knows nothing of distributed training.

Models are built on the meta device and materialised on the target device, then initialised one parameter at a
time from a seeded CPU generator in module order. Under FSDP2 each rank keeps only its shard of every parameter, so
the peak is the rank's shard plus the largest single parameter, never the whole model; and the weights equal the
unsharded (DDP) model's for the same seed, so DDP and FSDP2 runs start identical.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from blt_model.layers import RMSNorm, TransformerLayer


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return factory()


@torch.no_grad()
def init_weights(model: nn.Module, seed: int) -> None:
    """Truncated-normal init with std 1/sqrt(fan_in) (as ``ByteLatentTransformer.reset_parameters``), norms at one,
    generated on CPU per parameter and copied into whatever holds it (a plain tensor or this rank's DTensor shard)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    gen = torch.Generator().manual_seed(seed)
    done: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            param = module.weight
            std = (module.in_features if isinstance(module, nn.Linear) else module.embedding_dim) ** -0.5
            full = torch.empty(param.shape)
            nn.init.trunc_normal_(full, std=std, a=-3 * std, b=3 * std, generator=gen)
        elif isinstance(module, RMSNorm):
            param = module.weight
            full = torch.ones(param.shape)
        else:
            continue
        if isinstance(param, DTensor):
            local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local()
            param.to_local().copy_(local)
        else:
            param.copy_(full)
        done.add(id(param))
    missed = [name for name, p in model.named_parameters() if id(p) not in done]
    if missed:
        raise ValueError(f"init_weights has no rule for {missed}")


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute every transformer layer in backward (non-reentrant checkpoint wrapper around each layer)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        checkpoint_wrapper,
    )
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing as apply,
    )

    apply(model, checkpoint_wrapper_fn=functools.partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
          check_fn=lambda m: isinstance(m, TransformerLayer))


def _layer_units(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    wrapped = [m for m in model.modules() if isinstance(m, CheckpointWrapper)]
    return wrapped or [m for m in model.modules() if isinstance(m, TransformerLayer)]


def fully_shard_model(model: nn.Module, param_dtype: torch.dtype | None = None) -> None:
    """FSDP2: each transformer layer its own unit, the rest (embeddings, hash tables, heads) the root.
    ``param_dtype=bf16``: parameters all-gathered and computed in bf16, gradients reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
    kwargs = {"mp_policy": mp} if mp else {}
    for unit in _layer_units(model):
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)


def materialize(model: nn.Module, device: torch.device, seed: int) -> None:
    model.to_empty(device=device)
    init_weights(model, seed)


def wrap_ddp(model: nn.Module, device: torch.device, find_unused: bool, ignore: list[str] = ()) -> nn.Module:
    if ignore:  # e.g. the sparse hash tables, whose gradients are averaged by hand
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(ignore))
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                               find_unused_parameters=find_unused)


def no_sync(train_model: nn.Module, model: nn.Module, sync: bool):
    """Context for one micro-step of gradient accumulation: gradient reduction only on the last one."""
    import contextlib

    if isinstance(train_model, nn.parallel.DistributedDataParallel) and not sync:
        return train_model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()

"""The sparse hash-table path: sparse gradients equal the dense ones, their cross-rank average (2 gloo processes)
equals DDP's dense average, and clipping matches torch's clip_grad_norm_ on the dense equivalents."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ports import free_port

from blt_model import ByteLatentTransformer
from blt_model.presets import blt_preset
from training.optim import HASH_TABLE_PARAM, build_optimizers, clip_grad_norm, sync_sparse_grads


def _model(sparse: bool) -> ByteLatentTransformer:
    torch.manual_seed(0)
    cfg = blt_preset("tiny", encoder_hash_byte_group_vocab=997)
    return ByteLatentTransformer(cfg, sparse_hash_grad=sparse)


def _batch(seed: int, length: int = 64):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, 260, (2, length), generator=gen)
    lengths = torch.full((2, length // 4), 4)
    return tokens, lengths, torch.randint(4, 260, (2, length), generator=gen)


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone()
            for name, p in model.named_parameters() if p.grad is not None}


def test_sparse_hash_gradients_equal_the_dense_ones():
    dense, sparse = _model(False), _model(True)
    for model in (dense, sparse):
        model(*_batch(1)).loss.backward()
    table = dict(sparse.named_parameters())[HASH_TABLE_PARAM].grad
    assert table.is_sparse
    # Only the touched rows are stored: far fewer than the table's.
    assert table.coalesce().values().shape[0] < 0.5 * table.shape[0]
    want, got = _grads(dense), _grads(sparse)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_clip_grad_norm_matches_torch_on_dense_equivalents():
    dense, sparse = _model(False), _model(True)
    for model in (dense, sparse):
        model(*_batch(2)).loss.backward()
    sync_sparse_grads([dict(sparse.named_parameters())[HASH_TABLE_PARAM]], world=1)  # coalesces
    want_norm = torch.nn.utils.clip_grad_norm_(dense.parameters(), 0.05)
    got_norm = clip_grad_norm(list(sparse.parameters()), 0.05)
    torch.testing.assert_close(got_norm, want_norm)
    want, got = _grads(dense), _grads(sparse)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


def test_optimizers_split_the_tables_from_the_rest():
    model = _model(True)
    adamw, sparse_adam = build_optimizers(model, lr=1e-3, weight_decay=0.1, sparse_hash_grad=True)
    table = dict(model.named_parameters())[HASH_TABLE_PARAM]
    assert isinstance(sparse_adam, torch.optim.SparseAdam) and sparse_adam.param_groups[0]["params"] == [table]
    assert all(p is not table for p in adamw.param_groups[0]["params"])
    assert len(adamw.param_groups[0]["params"]) == len(list(model.parameters())) - 1
    before = table.detach().clone()
    model(*_batch(3)).loss.backward()
    sync_sparse_grads([table], world=1)
    touched = table.grad.indices()[0]
    sparse_adam.step()
    changed = (table.detach() != before).any(1)
    assert changed[touched].all() and changed.sum() == touched.numel()  # lazy: untouched rows never move


def _rank_main(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = _model(True)
        model(*_batch(10 + rank)).loss.backward()
        table = dict(model.named_parameters())[HASH_TABLE_PARAM]
        sync_sparse_grads([table], world)
        results[rank] = (table.grad.to_dense(), table.grad.indices()[0].tolist())
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_sparse_gradients_are_averaged_across_ranks_like_ddp():
    world = 2
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_rank_main, args=(world, free_port(), results), nprocs=world, start_method="spawn")
        synced = [results[rank] for rank in range(world)]
    local = []
    for rank in range(world):  # what each rank's dense gradient was; DDP would average them
        model = _model(False)
        model(*_batch(10 + rank)).loss.backward()
        local.append(dict(model.named_parameters())[HASH_TABLE_PARAM].grad)
    mean = (local[0] + local[1]) / 2
    touched = set(((local[0] != 0).any(1) | (local[1] != 0).any(1)).nonzero()[:, 0].tolist())
    for got, rows in synced:
        torch.testing.assert_close(got, mean, rtol=1e-5, atol=1e-7)
        assert set(rows) == touched  # exactly the rows some rank touched: no padding rows for SparseAdam to step

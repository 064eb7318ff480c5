"""Training for both models, cut by concern (after torchtitan's components).

``config`` (dataclasses, LR schedule), ``launch`` (Ray Train with automatic restarts, or in-process),
``distributed`` (rank/world/device helpers), ``parallelize`` (DDP, FSDP2 on the meta device, activation
checkpointing, compile), ``optim`` (AdamW, the sparse hash-table path, clipping), ``checkpoint`` (sharded DCP
checkpoints at any fsspec URL, retention, ``latest.json``), ``metrics`` (chunked, append-only metrics),
``export`` (HF format), and one short loop per model: ``blt_loop`` and ``entropy_loop`` (fed by ``entropy_data``, raw shards
streamed with the preprocessing readers).
``pipeline/`` holds data logic only; ``blt_model/`` the pure-torch models.
"""

"""Training for both models, cut by concern (after torchtitan's components).

``config`` (sections shared by both trainers, LR schedule), ``loop`` (the one loop skeleton: step, accumulate,
log, validate, checkpoint, drills, resume), ``scoring`` (the one bits-per-byte scorer: documents scored whole;
both trainers' validation and ``blt eval``), ``evaluate`` (``blt eval``'s units and held-out selection), ``optim`` (``OptimizerSet``: optimizers
+ LR schedule as one object; AdamW, the sparse hash-table path, clipping), ``checkpoint`` (sharded DCP checkpoints
at any fsspec URL, retention, ``latest.json``), ``metrics`` (chunked, append-only metrics), ``launch`` (Ray Train
with automatic restarts, or in-process), ``distributed`` (rank/world/device helpers), ``parallelize`` (DDP, FSDP2
on the meta device, activation checkpointing, compile), ``export`` (HF format, patching as trained),
``model_source`` (any BLT with its patcher and rule), ``harness`` (the lm-eval model), and the model-specific parts the
loop runs: ``blt_loop`` (``BltTask``) and ``entropy_loop`` (``EntropyTask``, fed by ``entropy_data``: raw shards
streamed with the preprocessing readers).
``pipeline/`` holds data logic only; ``blt_model/`` the pure-torch models.
"""

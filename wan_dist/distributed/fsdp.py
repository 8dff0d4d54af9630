"""FSDP2 inside a replica: `fully_shard` each transformer block, then the root (DESIGN §2).

For T5: each encoder block, then the root. Inference only: parameters keep requires_grad=False, so FSDP2 accepts the
mixed dtypes of diffusers' fp32-kept modules. Applied to meta modules before loading (sharded loading in
models/loading.py fills only this rank's rows) or to loaded modules (the diffusers format).
"""
from __future__ import annotations

from torch.distributed.fsdp import fully_shard


def shard_dit(model, mesh) -> None:
    """Each block, then the root (patch/text/time embeddings, head)."""
    for block in model.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)


def shard_t5(model, mesh) -> None:
    for block in model.encoder.block:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)

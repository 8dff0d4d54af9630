"""Parallelism as a function (like torchtitan's `parallelize_*`): loaded models + the mesh in, what the pipeline
needs out. Single process (mesh None) gets the pipeline's own defaults, so callers never branch on "parallel or not".

    dit_shard_fn(mesh)              -> the FSDP2 plan to apply to a meta DiT while loading (models/loading.py), or None
    parallelize(models, mesh, ...)  -> Parallelized(guidance, decode, describe): FSDP2 (when not done while loading),
                                       Ulysses/ring (diffusers context parallelism), T5 FSDP, the CFG-parallel executor,
                                       the VAE decode split over the replica
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

from ..pipeline import vae as vae_ops
from ..pipeline.denoise import SequentialGuidance

log = logging.getLogger(__name__)

DUMP_ENV = "WAN_DIST_TEST_DUMP"   # test hook: every rank saves (latents, decoded video) of each item it decodes


@dataclass
class Parallelized:
    guidance: Callable           # (model, x, t, prompt_embeds, negative_prompt_embeds, scale, passes) -> v
    decode: Callable             # (vae, latent [z, T, h, w]) -> video [3, F, H, W]
    info: dict = field(default_factory=dict)

    def describe(self) -> dict:
        idle = getattr(self.guidance, "idle_by_half", None)
        if idle is None:
            return dict(self.info)
        # cfg_idle_steps: steps one half idled; cfg_idle_by_half: which half ({"cond": n, "uncond": m})
        return {**self.info, "cfg_idle_steps": sum(idle.values()), "cfg_idle_by_half": dict(idle)}


def _sharding(mesh) -> bool:
    return mesh is not None and mesh.layout.fsdp and mesh.layout.replica_size > 1


def dit_shard_fn(mesh):
    """FSDP2 of the DiT over the replica, applied on meta before the shards are read; None when nothing shards."""
    if not _sharding(mesh):
        return None
    from .fsdp import shard_dit
    return partial(shard_dit, mesh=mesh.replica)


def parallelize(models, mesh=None, *, vae_parallel: bool = True) -> Parallelized:
    if mesh is None:
        par = Parallelized(SequentialGuidance(), vae_ops.decode, {"fsdp": False})
    else:
        par = _parallelize_replica(models, mesh, vae_parallel)
    if os.environ.get(DUMP_ENV):
        par.decode = DumpDecode(par.decode, os.environ[DUMP_ENV], par)
    return par


def _parallelize_replica(models, mesh, vae_parallel: bool) -> Parallelized:
    from .cfg_parallel import CFGParallelGuidance
    from .context_parallel import enable_context_parallel
    from .fsdp import shard_dit, shard_t5
    from .vae_split import SplitDecode
    lay = mesh.layout
    fsdp = _sharding(mesh)
    for dit in models.dits.values():
        if fsdp and not models.dits_sharded:
            shard_dit(dit, mesh.replica)
        enable_context_parallel(dit, mesh)
    if lay.t5_fsdp and lay.replica_size > 1:
        shard_t5(models.text_encoder, mesh.replica)
    guidance = CFGParallelGuidance(mesh, fsdp_spans_cfg=fsdp) if lay.cfg == 2 else SequentialGuidance()
    decode = SplitDecode(mesh) if vae_parallel and lay.replica_size > 1 else vae_ops.decode
    log.info("parallel: fsdp=%s (sharded while loading: %s), ulysses=%d, ring=%d, cfg=%d, t5_fsdp=%s, vae split=%s",
             fsdp, models.dits_sharded, lay.ulysses, lay.ring, lay.cfg, lay.t5_fsdp, decode is not vae_ops.decode)
    return Parallelized(guidance, decode, {**lay.degrees(), "fsdp": fsdp, "t5_fsdp": lay.t5_fsdp,
                                           "vae_split": decode is not vae_ops.decode})


class DumpDecode:
    """Test hook only: `torch.save({"latents", "video", "describe"}, <dir>/rank<r>_<k>.pt)` around the real decode."""

    def __init__(self, inner, out_dir: str, par: Parallelized):
        self.inner, self.dir, self.par, self.k = inner, Path(out_dir), par, 0

    def __call__(self, vae, latent):
        import torch
        import torch.distributed as dist
        video = self.inner(vae, latent)
        rank = dist.get_rank() if dist.is_initialized() else 0
        self.dir.mkdir(parents=True, exist_ok=True)
        torch.save({"latents": latent.float().cpu(), "video": video.cpu(), "describe": self.par.describe()},
                   self.dir / f"rank{rank}_{self.k}.pt")
        self.k += 1
        return video

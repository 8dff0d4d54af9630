"""The parallel plan handed to wan_dist.run.run: how models are loaded, sharded and executed in this layout.

    load_models(cfg, spec, device, layout) -- sharded DiT loading when parallel.fsdp (native layout), else the
                                              single-device loader
    apply(loaded, ctx)                     -- FSDP2 (if not done while loading), Ulysses/ring, T5 FSDP
    guidance_exec(ctx)                     -- CFG-parallel executor when parallel.cfg=2
    decode_fn(ctx)                         -- VAE decode split over the replica when parallel.vae_parallel
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .cfg_parallel import CFGParallelGuidance
from .context_parallel import enable_context_parallel
from .fsdp import load_dit_sharded, shard_dit, shard_t5
from .mesh import Mesh
from .vae_split import SplitDecode

log = logging.getLogger(__name__)


class ParallelPlan:
    def __init__(self, cfg, m: Mesh, ctx):
        self.cfg, self.m, self.ctx = cfg, m, ctx
        self.lay = m.layout
        self.fsdp = self.lay.fsdp and self.lay.replica_size > 1
        self._sharded_on_load = False
        if self.lay.fsdp and not self.fsdp:
            log.warning("parallel.fsdp=true with a replica of 1 rank: nothing to shard, the DiT stays whole")

    # -- loading ------------------------------------------------------------------------------------------------
    def load_models(self, cfg, spec, device, layout: str):
        from ..models.loading import LoadStats
        from ..run import load_models, resolve_dtype
        if not (self.fsdp and layout == "native"):
            return load_models(cfg, spec, device, layout)
        # tokenizer, T5 and VAE load as usual; each DiT is built on meta, sharded and filled with this rank's rows
        import torch
        from ..models import loading
        dtype = resolve_dtype(cfg.dtype, device, "dtype")
        stats = LoadStats()
        ckpt = Path(cfg.ckpt_dir)
        t5_dtype = resolve_dtype(cfg.t5_dtype, device, "t5_dtype")
        t5_dev = "cpu" if cfg.t5_cpu or cfg.offload_model else str(device)
        tok = loading.load_tokenizer(ckpt, stats)
        t5 = loading.load_pth("t5", spec.t5, ckpt / loading.T5_FILE, t5_dtype, t5_dev, stats, "t5")
        vae = loading.load_pth("vae" + spec.vae_version, spec.vae, ckpt / spec.vae_file,
                               loading.parse_dtype(cfg.vae_dtype, "vae_dtype"), str(device), stats, "vae")
        mesh = self.m.replica
        if spec.is_moe:
            dits = {"high": load_dit_sharded(spec, ckpt / spec.experts[0], dtype, device, mesh, stats, "dit_high"),
                    "low": load_dit_sharded(spec, ckpt / spec.experts[1], dtype, device, mesh, stats, "dit_low")}
        else:
            dits = {"single": load_dit_sharded(spec, ckpt, dtype, device, mesh, stats, "dit")}
        self._sharded_on_load = True
        return (loading.LoadedModel(spec, tok, t5, vae, dits, stats), dtype,
                torch.device("cpu") if cfg.t5_cpu else device)

    # -- parallelism on loaded modules -----------------------------------------------------------------------------
    def apply(self, loaded, ctx) -> None:
        for name, dit in loaded.dits.items():
            if self.fsdp and not self._sharded_on_load:
                shard_dit(dit, self.m.replica)
            enable_context_parallel(dit, self.m)
        if self.lay.t5_fsdp and self.lay.replica_size > 1:
            shard_t5(loaded.text_encoder, self.m.replica)
        log.info("parallel plan: fsdp=%s (sharded while loading: %s), ulysses=%d, ring=%d, cfg=%d, t5_fsdp=%s",
                 self.fsdp, self._sharded_on_load, self.lay.ulysses, self.lay.ring, self.lay.cfg, self.lay.t5_fsdp)

    def guidance_exec(self, ctx):
        if self.lay.cfg == 1:
            return None        # the pipeline's SequentialGuidance
        return CFGParallelGuidance(self.m, ctx, fsdp_spans_cfg=self.fsdp)

    def decode_fn(self, ctx):
        fn = SplitDecode(self.m) if self.cfg.parallel.vae_parallel and self.lay.replica_size > 1 else None
        if os.environ.get(DUMP_ENV):
            return DumpDecode(fn, os.environ[DUMP_ENV], ctx)
        return fn


DUMP_ENV = "WAN_DIST_TEST_DUMP"   # test hook: every rank saves (latents, decoded video) of each item it decodes


class DumpDecode:
    """Test hook only: `torch.save({"latents", "video"}, <dir>/rank<r>_<k>.pt)` around the real decode."""

    def __init__(self, inner, out_dir: str, ctx):
        self.inner, self.dir, self.ctx, self.k = inner, Path(out_dir), ctx, 0

    def __call__(self, vae, latent):
        import torch
        from ..pipeline import vae as vae_ops
        video = (self.inner or vae_ops.decode)(vae, latent)
        self.dir.mkdir(parents=True, exist_ok=True)
        torch.save({"latents": latent.float().cpu(), "video": video.cpu(), "describe": self.ctx.describe()},
                   self.dir / f"rank{self.ctx.rank}_{self.k}.pt")
        self.k += 1
        return video

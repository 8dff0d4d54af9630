"""CFG-parallel executor (parallel.cfg=2): cond on cfg half 0, uncond on cfg half 1, predictions exchanged.

Same call signature as pipeline.denoise.SequentialGuidance. Shapes: x [1, C, T, h, w]; each half's prediction
v [z, T, h, w] float32; gathered over the "cfg" axis into [2, z, T, h, w] (index 0 = cond, 1 = uncond).

Truncated (CFG-off) steps: only the cond prediction is needed. The uncond half idles and receives v_cond by a
broadcast on the "cfg" axis -- unless FSDP shards the DiT across both halves (parallel.fsdp with cfg=2): then every
rank of the replica must take part in each FSDP all-gather, so the idle half runs the same cond forward and
discards it (a "shadow" forward). That choice cannot deadlock: both halves always run the same sequence of
forwards on the same modules. Idle steps are counted in `idle_steps` either way.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..pipeline.denoise import dit_forward


class CFGParallelGuidance:
    def __init__(self, m, fsdp_spans_cfg: bool):
        self.group = m.group("cfg")
        self.cfg_rank = m.local_rank("cfg")
        self.shadow = fsdp_spans_cfg
        # steps this replica ran with CFG off: the unconditional half had nothing to do (cumulative over the run;
        # per item it equals the count of false entries in the sidecar's cfg_on)
        self.idle_steps = 0

    def __call__(self, model, x, t, prompt_embeds, negative_prompt_embeds, scale: float,
                 do_cfg: bool) -> torch.Tensor:
        if do_cfg:
            embeds = prompt_embeds if self.cfg_rank == 0 else negative_prompt_embeds
            # each half keeps the step-cache state of its own pass, as one process keeps both (pipeline/cache.py)
            mine = dit_forward(model, x, t, embeds, "cond" if self.cfg_rank == 0 else "uncond")  # [z, T, h, w]
            both = torch.empty((2 * mine.shape[0], *mine.shape[1:]), dtype=mine.dtype, device=mine.device)
            dist.all_gather_into_tensor(both, mine.contiguous(), group=self.group)               # axis: cfg
            both = both.view(2, *mine.shape)                                                     # [2, z, T, h, w]
            cond, uncond = both[0], both[1]
            return uncond + scale * (cond - uncond)
        self.idle_steps += 1
        if self.cfg_rank == 0 or self.shadow:
            # contiguous: the DiT's unpatchify returns a permuted view, and gloo broadcasts raw storage
            # the idle half's shadow forward is discarded: its cache state is kept apart from the real passes
            ctx = "cond" if self.cfg_rank == 0 else "shadow"
            v = dit_forward(model, x, t, prompt_embeds, ctx).contiguous()                       # [z, T, h, w]
        else:   # the idle half: receive v_cond, same shape as the cond half's prediction
            v = torch.empty((model.config.out_channels, *x.shape[2:]), dtype=torch.float32, device=x.device)
        dist.broadcast(v, group=self.group, group_src=0)                                       # axis: cfg
        return v

"""CFG-parallel executor (parallel.cfg=2): cond on cfg half 0, uncond on cfg half 1, predictions exchanged.

Same call signature as pipeline.denoise.SequentialGuidance. Shapes: x [1, C, T, h, w]; each half's prediction
v [z, T, h, w] float32; gathered over the "cfg" axis into [2, z, T, h, w] (index 0 = cond, 1 = uncond).

Steps with one pass (schedule.COND: guidance 1.0 or truncated with keep=cond; schedule.UNCOND: truncated with
keep=uncond, the seed's default): only the half that owns that pass has work (COND -> half 0, UNCOND -> half 1).
The other half idles and receives the prediction by a broadcast from the working half on the "cfg" axis -- unless
FSDP shards the DiT across both halves (parallel.fsdp with cfg=2): then every rank of the replica must take part in
each FSDP all-gather, so the idle half runs the same forward (same module, same conditioning) and discards it (a
"shadow" forward). That choice cannot deadlock: both halves always run the same sequence of forwards on the same
modules. Idle steps are counted per idle half (`idle_by_half`) either way.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..pipeline.denoise import dit_forward
from ..pipeline.schedule import BOTH, COND, UNCOND

HALF = {COND: 0, UNCOND: 1}     # which cfg half computes each pass


class CFGParallelGuidance:
    def __init__(self, m, fsdp_spans_cfg: bool):
        self.group = m.group("cfg")
        self.cfg_rank = m.local_rank("cfg")
        self.shadow = fsdp_spans_cfg
        # steps on which one half had nothing to do, by the half that idled (cumulative over this executor's life;
        # per item: a step with passes UNCOND idles the cond half, COND the uncond half)
        self.idle_by_half = {COND: 0, UNCOND: 0}

    @property
    def idle_steps(self) -> int:
        return sum(self.idle_by_half.values())

    def __call__(self, model, x, t, prompt_embeds, negative_prompt_embeds, scale: float,
                 passes: str) -> torch.Tensor:
        if passes == BOTH:
            embeds = prompt_embeds if self.cfg_rank == 0 else negative_prompt_embeds
            mine = dit_forward(model, x, t, embeds)                                             # [z, T, h, w]
            both = torch.empty((2 * mine.shape[0], *mine.shape[1:]), dtype=mine.dtype, device=mine.device)
            dist.all_gather_into_tensor(both, mine.contiguous(), group=self.group)               # axis: cfg
            both = both.view(2, *mine.shape)                                                     # [2, z, T, h, w]
            cond, uncond = both[0], both[1]
            return uncond + scale * (cond - uncond)
        src = HALF[passes]                       # the working half; the other one idles
        self.idle_by_half[UNCOND if src == 0 else COND] += 1
        if self.cfg_rank == src or self.shadow:
            embeds = prompt_embeds if passes == COND else negative_prompt_embeds
            # contiguous: the DiT's unpatchify returns a permuted view, and gloo broadcasts raw storage
            v = dit_forward(model, x, t, embeds).contiguous()                                   # [z, T, h, w]
        else:   # the idle half: receive the working half's prediction, same shape
            v = torch.empty((model.config.out_channels, *x.shape[2:]), dtype=torch.float32, device=x.device)
        dist.broadcast(v, group=self.group, group_src=src)                                     # axis: cfg
        return v

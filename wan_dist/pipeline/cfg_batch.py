"""`sample.cfg_batch=true`: the conditional and unconditional passes of a step as ONE batch-2 DiT forward.

Same call signature as pipeline.denoise.SequentialGuidance. Shapes: x [1, C, T, h, w] -> [2, C, T, h, w]; timestep
[1] -> [2] (or per token [1, L] -> [2, L] for TI2V); text [1, 512, D] -> [2, 512, D] (both prompts are padded to
exactly 512 tokens, which Wan's attention processor assumes when it splits image tokens off the text); prediction
[2, z, T, h, w] with row 0 = cond, row 1 = uncond. A step with one pass (CFG off, or a CFG-truncated step: passes
COND or UNCOND, pipeline/schedule.py) runs that pass alone (batch 1). The result
equals two batch-1 forwards within float tolerance (row-wise independent ops; the kernels may differ in the last bit).
"""
from __future__ import annotations

import torch

from .denoise import dit_call, dit_forward
from .schedule import BOTH, COND


class BatchedGuidance:
    def __call__(self, model, x, t, prompt_embeds, negative_prompt_embeds, scale: float,
                 passes: str) -> torch.Tensor:
        if passes != BOTH:
            if passes == COND:
                return dit_forward(model, x, t, prompt_embeds, "cond")
            return dit_forward(model, x, t, negative_prompt_embeds, "uncond")
        both = dit_call(model, torch.cat([x, x]), torch.cat([t, t]),
                        torch.cat([prompt_embeds, negative_prompt_embeds]), "cond_uncond")   # [2, z, T, h, w]
        cond, uncond = both[0], both[1]
        return uncond + scale * (cond - uncond)

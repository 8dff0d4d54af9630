"""Denoise stage: the sampling loop (expert choice, CFG, CFG truncation, timing).

Shapes: latents [z, T, h, w] float32; DiT input [1, C, T, h, w] in the run dtype; prediction [z, T, h, w] float32.
Per step: expert = 'high' if t >= boundary*1000 else 'low' (native rule); the step's passes (schedule.cfg_plan):
BOTH -> v = v_u + g (v_c - v_u); COND -> v_c alone (guidance 1.0, or truncated with keep=cond); UNCOND -> v_u alone
(truncated with keep=uncond, the seed's behaviour); scheduler step; ti2v image mode re-pins the first frame.

Guidance executor interface (SequentialGuidance here, distributed.cfg_parallel.CFGParallelGuidance for cfg=2):
    executor(model, x, t, prompt_embeds, negative_prompt_embeds, scale, passes) -> v [z, T, h, w] float32
with `passes` one of schedule.BOTH / COND / UNCOND. It runs exactly the forwards `passes` names.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..observability.timer import sync
from .latents import Conditioning
from .schedule import BOTH, COND, UNCOND, forward_counts


def dit_forward(model, x: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
    """[1, C, T, h, w] -> [z, T, h, w] float32."""
    return model(hidden_states=x, timestep=t, encoder_hidden_states=prompt_embeds, return_dict=False)[0][0].float()


class SequentialGuidance:
    """Default CFG executor: conditional then unconditional forward on the same device (as the native code)."""

    def __call__(self, model, x, t, prompt_embeds, negative_prompt_embeds, scale: float,
                 passes: str) -> torch.Tensor:
        if passes == COND:
            return dit_forward(model, x, t, prompt_embeds)
        if passes == UNCOND:
            return dit_forward(model, x, t, negative_prompt_embeds)
        assert passes == BOTH, passes
        cond = dit_forward(model, x, t, prompt_embeds)
        uncond = dit_forward(model, x, t, negative_prompt_embeds)
        return uncond + scale * (cond - uncond)


@dataclass
class DenoiseResult:
    latents: torch.Tensor
    timesteps: list[int]
    step_experts: list[str]
    step_passes: list[str]                 # per step: schedule.BOTH / COND / UNCOND
    per_step_s: list[float] = field(default_factory=list)
    expert_switches: int = 0
    expert_switch_s: float = 0.0

    @property
    def cfg_on(self) -> list[bool]:
        """Per step whether both passes ran (full CFG)."""
        return [p == BOTH for p in self.step_passes]

    @property
    def forwards(self) -> dict[str, int]:
        return forward_counts(self.step_passes)

    @property
    def expert_steps(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.step_experts:
            out[e] = out.get(e, 0) + 1
        return out


def denoise(models: dict, cond: Conditioning, prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor,
            scheduler, *,
            step_experts: list[str], guidance: dict[str, float], step_passes: list[str], dtype, device,
            activate: Callable[[str], None] | None = None, guidance_exec=None,
            on_step: Callable[[int, int], None] | None = None) -> DenoiseResult:
    """Run the loop. `activate(expert)` puts that expert on the device (offload); its time is the switch cost."""
    guidance_exec = guidance_exec or SequentialGuidance()
    timesteps = scheduler.timesteps
    res = DenoiseResult(cond.latents, [int(t) for t in timesteps], list(step_experts), list(step_passes))
    latents = cond.latents
    prompt_embeds = prompt_embeds.to(device, dtype)
    negative_prompt_embeds = negative_prompt_embeds.to(device, dtype)
    current = None
    for i, t in enumerate(timesteps):
        expert = step_experts[i]
        if expert != current:
            t0 = time.perf_counter()
            if activate is not None:
                activate(expert)
            sync(device)
            if current is not None:  # the first activation is model placement, not a switch
                res.expert_switches += 1
                res.expert_switch_s += time.perf_counter() - t0
            current = expert
        sync(device)
        t0 = time.perf_counter()
        x = cond.model_input(latents, dtype)
        v = guidance_exec(models[expert], x, cond.timestep(t.to(device)), prompt_embeds, negative_prompt_embeds,
                          guidance[expert], step_passes[i])
        latents = scheduler.step(v[None], t, latents[None], return_dict=False)[0][0]
        latents = cond.after_step(latents)
        sync(device)
        res.per_step_s.append(time.perf_counter() - t0)
        if on_step is not None:
            on_step(i, len(timesteps))
    res.latents = latents
    return res

"""One video from one request, with every stage named and timed. Models are loaded once by the caller.

Stages: text_encode -> latents (noise + image conditioning) -> denoise (incl. expert_switch) -> vae_decode.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..models.loading import LoadedModel
from ..observability.timer import StageTimer
from . import latents as latents_mod
from . import vae as vae_ops
from .denoise import DenoiseResult, denoise
from .request import GenerationRequest, step_plan
from .schedule import make_scheduler
from .text import encode_prompt, pad_embeds


@dataclass
class GenerationResult:
    request: GenerationRequest
    frames: torch.Tensor                  # uint8 [F, H, W, 3]
    latents: torch.Tensor                 # float32 [z, T, h, w], final denoised latent before decode
    size: tuple[int, int]                 # actual (W, H)
    denoise: DenoiseResult
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)


class WanGenerator:
    """`place`: models.device.Placement; `guidance_exec` / `decode_fn`: what distributed.parallelize returned (the
    single-device defaults when None); `boundary`: the MoE switch (conf model.boundary), None for one expert."""

    def __init__(self, loaded: LoadedModel, place, *, boundary: float | None = None, guidance_exec=None,
                 decode_fn: Callable | None = None, check_finite: bool = True):
        self.m = loaded
        self.boundary = boundary
        self.spec = loaded.spec
        self.device, self.dtype, self.t5_device = place.device, place.dtype, place.t5_device
        self.offload = place.offload_model
        self.guidance_exec = guidance_exec
        self.decode_fn = decode_fn or vae_ops.decode
        self.check_finite = check_finite
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.on_step: Callable[[int, int], None] | None = None

    # -- placement ------------------------------------------------------------------------------------------------
    def _activate(self, expert: str) -> None:
        """Offload mode: only the expert in use lives on the device (the native MoE swap)."""
        if not self.offload:
            return
        for name, model in self.m.dits.items():
            if name != expert:
                model.to("cpu")
        self.m.dits[expert].to(self.device)

    def set_placement(self, place) -> None:
        """Between two videos, a new offload_model / t5_cpu choice (the UI's advanced group): the models move to
        where `place` keeps them. Device and dtypes stay; a single-device run only (sharded models do not move)."""
        if place.t5_device != self.t5_device:
            self._text_cache.clear()       # embeddings made on the other device may differ in the last bits
        self.offload, self.t5_device = place.offload_model, place.t5_device
        for model in self.m.dits.values():
            model.to(place.dit_load_device)
        self.m.text_encoder.to(place.t5_load_device)

    def clear_text_cache(self) -> None:
        """Forget the encoded prompts: each run of a sweep encodes its own (its timings then do not depend on which
        job ran first; a sweep's jobs differ in sampling settings, not in what a prompt encodes to)."""
        self._text_cache.clear()

    def _encode(self, text: str) -> torch.Tensor:
        if text in self._text_cache:
            self._text_cache.move_to_end(text)
            return self._text_cache[text]
        enc = self.m.text_encoder
        if self.offload and self.t5_device.type != "cpu":
            enc.to(self.t5_device)
        embeds = encode_prompt(self.m.tokenizer, enc, text, self.t5_device)
        if self.offload and self.t5_device.type != "cpu":
            enc.to("cpu")
        self._text_cache[text] = embeds
        while len(self._text_cache) > 8:
            self._text_cache.popitem(last=False)
        return embeds

    # -- one video ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, req: GenerationRequest, image=None, timer: StageTimer | None = None) -> GenerationResult:
        timer = timer or StageTimer(self.device)
        with timer.stage("text_encode"):
            prompt_embeds = pad_embeds(self._encode(req.prompt))
            negative_prompt_embeds = pad_embeds(self._encode(req.negative_prompt))
        with timer.stage("latents"):
            cond = latents_mod.prepare(self.spec, self.m.vae, size=req.size, frame_num=req.frame_num,
                                       seed=req.seed, device=self.device, image=image)
        experts, passes = step_plan(req, self.boundary)
        scheduler = make_scheduler(req.solver, req.steps, req.shift, device=self.device)
        with timer.stage("denoise"):
            res = denoise(self.m.dits, cond, prompt_embeds, negative_prompt_embeds, scheduler, step_experts=experts,
                          guidance=req.guidance(), step_passes=passes, dtype=self.dtype, device=self.device,
                          activate=self._activate, guidance_exec=self.guidance_exec, on_step=self.on_step)
        timer.add("expert_switch", res.expert_switch_s)
        if self.offload:
            for model in self.m.dits.values():
                model.to("cpu")
        if req.id in os.environ.get("WAN_DIST_TEST_INJECT_NAN", "").split(","):
            res.latents = torch.full_like(res.latents, float("nan"))  # TEST HOOK (see wan_dist.batch.runner)
        if self.check_finite and not torch.isfinite(res.latents).all():
            raise FloatingPointError(f"item {req.id}: latents contain NaN or Inf after denoising")
        with timer.stage("vae_decode"):
            video = self.decode_fn(self.m.vae, res.latents)
            frames = vae_ops.to_uint8_frames(video)
        return GenerationResult(req, frames, res.latents.float().cpu(), cond.size, res, timer.as_dict(),
                                list(req.warnings))


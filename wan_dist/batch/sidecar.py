"""Per-video sidecar JSON. Field names are fixed (other tools read them); extra fields may be added, never renamed."""
from __future__ import annotations

import resource
import sys

import torch

from ..observability.stages import INFERENCE_STAGES, STAGES
from ..pipeline.generator import GenerationResult


def peak_memory(device) -> dict:
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return {"kind": "cuda_max_allocated", "bytes": int(torch.cuda.max_memory_allocated(device))}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": "host_peak_rss", "bytes": int(rss if sys.platform == "darwin" else rss * 1024)}


def build_sidecar(result: GenerationResult, *, model: str, fps: int, is_moe: bool, timings: dict, layout: dict,
                  run: dict, outputs: dict, video: dict, memory: dict) -> dict:
    req, dn = result.request, result.denoise
    # denoise includes the expert switches (they happen inside the loop); expert_switch is reported on its own too
    inference = sum(timings.get(k, 0.0) for k in INFERENCE_STAGES)
    frame_count = int(result.frames.shape[0])
    expert_steps = dn.expert_steps
    return {
        "id": req.id, "prompt": req.prompt, "negative_prompt": req.negative_prompt, "seed": req.seed,
        "size": [result.size[0], result.size[1]], "size_requested": list(req.size),
        "frame_num_requested": req.frame_num_requested, "frame_num": req.frame_num, "fps": fps,
        "steps": req.steps, "shift": req.shift, "solver": req.solver,
        "guide_scale": req.guide_scale, "guide_scale_high": req.guide_scale_high,
        "cfg_truncate_steps": req.cfg_truncate_steps,
        "cfg_truncate_high_noise_steps": req.cfg_truncate_high_noise_steps,
        "cfg_truncate_keep": req.cfg_truncate_keep,
        "image": req.image, "model": model,
        "forwards": dn.forwards,             # DiT forwards by conditioning: {"cond": n, "uncond": m}
        "expert_steps": ({"high": expert_steps.get("high", 0), "low": expert_steps.get("low", 0)} if is_moe
                         else {"single": expert_steps.get("single", 0)}),
        "expert_switches": dn.expert_switches,
        "timings": {k: round(float(timings.get(k, 0.0)), 6) for k in STAGES} | {"total": round(timings["total"], 6)},
        "inference_s": round(inference, 6),
        "per_step_s": [round(x, 6) for x in dn.per_step_s],
        "step_experts": dn.step_experts, "timesteps": dn.timesteps,
        "step_passes": dn.step_passes,       # per step: both | cond | uncond (what ran; see pipeline/schedule.py)
        "cfg_on": dn.cfg_on,                 # per step: both passes ran (kept for older readers)
        "frames_per_second": round(frame_count / inference, 4) if inference > 0 else None,
        "warnings": list(result.warnings),
        "video": video, "outputs": outputs, "peak_memory": memory, "layout": layout, "run": run,
    }

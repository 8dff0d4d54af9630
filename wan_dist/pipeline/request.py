"""GenerationRequest: one validated item (manifest row or single prompt) with every config default resolved.

Precedence: manifest column > sample.* > model.* (the task's native defaults). All rules raise ValueError naming the
field, the value and the rule, before any model work.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..config import MAX_SEED, RunConfig, check_value
from ..models.registry import NATIVE_NEGATIVE_PROMPT, ModelSpec
from .schedule import cfg_plan, expert_plan, timesteps_for
from .sizes import check_size, correct_frame_num, parse_size


def derive_seed(run_seed: int, item_id: str) -> int:
    """Seed of a row without one: a hash of (run seed, id), independent of rank, order and layout."""
    digest = hashlib.sha256(f"{run_seed}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & MAX_SEED


@dataclass(frozen=True)
class GenerationRequest:
    id: str
    prompt: str
    negative_prompt: str
    seed: int
    size: tuple[int, int]                    # (W, H) requested (a max area for i2v / ti2v image mode)
    frame_num_requested: int
    frame_num: int
    steps: int
    shift: float
    solver: str
    guide_scale: float                       # low-noise expert (or the only one)
    guide_scale_high: float | None           # MoE only
    cfg_truncate_steps: int
    cfg_truncate_high_noise_steps: int
    image: str | None = None                 # path of the conditioning image
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def guidance(self) -> dict[str, float]:
        return {"single": self.guide_scale, "low": self.guide_scale,
                "high": self.guide_scale_high if self.guide_scale_high is not None else self.guide_scale}


def _pick(row: dict, key: str, *fallbacks):
    v = row.get(key)
    if v is not None and v != "":
        return v
    for f in fallbacks:
        if f is not None:
            return f
    return None


def build_request(cfg: RunConfig, spec: ModelSpec, row: dict, item_id: str) -> GenerationRequest:
    """`row` holds already-typed values (ints/floats/strs) for the manifest columns that were given."""
    s, m = cfg.sample, cfg.model
    prompt = row.get("prompt")
    if prompt is None or not str(prompt).strip():
        raise ValueError(f"prompt={prompt!r}: must be a non-empty string")
    warnings = []
    size_str = _pick(row, "size", s.size, m.size)
    size = parse_size(size_str, "size")
    check_size(spec, size, "size", m.sizes)
    frames_req = int(_pick(row, "frame_num", s.frame_num, m.frame_num))
    check_value("frame_num", frames_req)
    frames, warn = correct_frame_num(frames_req)
    if warn:
        warnings.append(warn)
    steps = int(_pick(row, "steps", s.steps, m.steps))
    check_value("steps", steps)
    shift = float(_pick(row, "shift", s.shift, m.shift))
    check_value("shift", shift)
    solver = str(_pick(row, "solver", s.solver))
    check_value("solver", solver)
    g_low = float(_pick(row, "guide_scale", s.guide_scale, m.guide_scale))
    g_high = _pick(row, "guide_scale_high", s.guide_scale_high, m.guide_scale_high)
    if not spec.is_moe and row.get("guide_scale_high") not in (None, ""):
        raise ValueError(f"guide_scale_high={row['guide_scale_high']}: {spec.name} has a single expert; "
                         "use guide_scale")
    g_high = float(g_high) if spec.is_moe and g_high is not None else None
    check_value("guide_scale", g_low)
    check_value("guide_scale_high", g_high)
    trunc_low = int(_pick(row, "cfg_truncate_steps", s.cfg_truncate_steps))
    trunc_high = int(_pick(row, "cfg_truncate_high_noise_steps", s.cfg_truncate_high_noise_steps))
    experts = expert_plan(timesteps_for(solver, steps, shift), m.boundary)
    n_low = sum(e in ("low", "single") for e in experts)
    n_high = sum(e == "high" for e in experts)
    if not 0 <= trunc_low <= n_low:
        raise ValueError(f"cfg_truncate_steps={trunc_low}: must be between 0 and {n_low}, the steps the "
                         f"{'low-noise expert' if spec.is_moe else 'model'} runs ({steps} steps, shift {shift})")
    if not 0 <= trunc_high <= n_high:
        raise ValueError(f"cfg_truncate_high_noise_steps={trunc_high}: must be between 0 and {n_high}, the steps "
                         f"the high-noise expert runs" + ("" if spec.is_moe else f" ({spec.name} has no experts)"))
    image = _pick(row, "image")
    if image is not None and spec.image == "none":
        raise ValueError(f"image={image!r}: {spec.name} is text-to-video and takes no image")
    if image is None and spec.image == "required":
        raise ValueError(f"image=None: {spec.name} needs a conditioning image")
    neg = _pick(row, "negative_prompt", s.negative_prompt)
    seed = row.get("seed")
    seed = derive_seed(s.seed, item_id) if seed in (None, "") else int(seed)
    check_value("seed", seed)
    return GenerationRequest(
        id=item_id, prompt=str(prompt), negative_prompt=NATIVE_NEGATIVE_PROMPT if neg is None else str(neg),
        seed=seed, size=size, frame_num_requested=frames_req, frame_num=frames, steps=steps, shift=shift,
        solver=solver, guide_scale=g_low, guide_scale_high=g_high, cfg_truncate_steps=trunc_low,
        cfg_truncate_high_noise_steps=trunc_high, image=None if image is None else str(image),
        warnings=tuple(warnings))


def step_plan(req: GenerationRequest, boundary: float | None):
    """(scheduler-independent) per-step experts and CFG flags for a request."""
    experts = expert_plan(timesteps_for(req.solver, req.steps, req.shift), boundary)
    return experts, cfg_plan(experts, req.guidance(), req.cfg_truncate_steps, req.cfg_truncate_high_noise_steps)

"""GenerationRequest: one validated item (manifest row or single prompt) with every config default resolved.

Precedence: manifest column > sample.* > model.* (the task's native defaults). All rules raise ValueError naming the
field, the value and the rule, before any model work.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

from ..config import MAX_SEED, RunConfig, check_value
from ..models.registry import NATIVE_NEGATIVE_PROMPT, ModelSpec, get_model
from .schedule import cfg_plan, expert_plan, timesteps_for
from .sizes import check_frame_num, check_size, image_output_size, parse_size


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
    cfg_truncate_keep: str = "uncond"        # the pass a truncated step keeps (pipeline.schedule.KEEP_MODES)
    warnings: tuple[str, ...] = field(default_factory=tuple)
    cache: str = "none"                      # step caching method (pipeline/cache.py)
    cache_threshold: float | None = None     # its threshold (None = the method's default)

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


def _checked(row: dict, key: str, cfg: RunConfig, cast):
    """_value cast to its type and checked against its rule (config.VALUE_RULES), the message naming its field."""
    value, field = _value(row, key, cfg)
    value = cast(value)
    check_value(key, value, field)
    return value


def _value(row: dict, key: str, cfg: RunConfig):
    """(value, the field it came from): the manifest column, else sample.<key>, else model.<key> (the task's
    native default). Messages name the field the user can change."""
    v = row.get(key)
    if v is not None and v != "":
        return v, key
    for section in ("sample", "model"):
        v = getattr(getattr(cfg, section), key, None)
        if v is not None:
            return v, f"{section}.{key}"
    return None, key


@functools.lru_cache(maxsize=4096)
def _timesteps(solver: str, steps: int, shift: float) -> tuple[int, ...]:
    """The native timestep grid, built once per (solver, steps, shift): building a diffusers scheduler costs about
    3 ms, and a 100k-row manifest has a handful of distinct settings."""
    return tuple(timesteps_for(solver, steps, shift))


@functools.lru_cache(maxsize=4096)
def _expert_steps(solver: str, steps: int, shift: float, boundary: float | None) -> tuple[int, int]:
    """(steps of the low-noise expert or the only one, steps of the high-noise expert)."""
    experts = expert_plan(list(_timesteps(solver, steps, shift)), boundary)
    return sum(e in ("low", "single") for e in experts), sum(e == "high" for e in experts)


@functools.lru_cache(maxsize=4096)
def _size_rule(model: str, value, field: str, sizes: tuple) -> tuple[int, int]:
    """A size string checked once per (model, value): a manifest repeats a handful of sizes."""
    size = parse_size(value, field)
    check_size(get_model(model), size, field, sizes)
    return size


@functools.lru_cache(maxsize=4096)
def _frames_rule(model: str, n: int, field: str) -> tuple[int, str | None]:
    check_value("frame_num", n, field)
    return check_frame_num(get_model(model), n, field)


def build_request(cfg: RunConfig, spec: ModelSpec, row: dict, item_id: str, *,
                  image_size: tuple[int, int] | None = None, image_label: str | None = None) -> GenerationRequest:
    """`row` holds already-typed values (ints/floats/strs) for the manifest columns that were given; `image_size`:
    the conditioning image's (W, H) in pixels when known (the output size it leads to is checked here), named
    `image_label` in messages. Every rule is the config's (config.check_value), whichever field the value came
    from."""
    s, m = cfg.sample, cfg.model
    prompt = row.get("prompt")
    if prompt is None or not str(prompt).strip():
        raise ValueError(f"prompt={prompt!r}: must be a non-empty string")
    warnings = []
    size_str, f_size = _value(row, "size", cfg)
    size = _size_rule(spec.name, size_str, f_size, tuple(m.sizes))
    frames_req, f_frames = _value(row, "frame_num", cfg)
    frames_req = int(frames_req)
    frames, warn = _frames_rule(spec.name, frames_req, f_frames)
    if warn:
        warnings.append(warn)
    steps = _checked(row, "steps", cfg, int)
    shift = _checked(row, "shift", cfg, float)
    solver = _checked(row, "solver", cfg, str)
    g_low = _checked(row, "guide_scale", cfg, float)
    g_high, f_gh = _value(row, "guide_scale_high", cfg)
    if not spec.is_moe and row.get("guide_scale_high") not in (None, ""):
        raise ValueError(f"guide_scale_high={row['guide_scale_high']}: {spec.name} has a single expert; "
                         "use guide_scale")
    g_high = float(g_high) if spec.is_moe and g_high is not None else None
    check_value("guide_scale_high", g_high, f_gh)
    trunc_low, f_tl = _value(row, "cfg_truncate_steps", cfg)
    trunc_high, f_th = _value(row, "cfg_truncate_high_noise_steps", cfg)
    trunc_low, trunc_high = int(trunc_low), int(trunc_high)
    keep = _checked(row, "cfg_truncate_keep", cfg, str)
    n_low, n_high = _expert_steps(solver, steps, shift, m.boundary)
    if not 0 <= trunc_low <= n_low:
        raise ValueError(f"{f_tl}={trunc_low}: must be between 0 and {n_low}, the steps the "
                         f"{'low-noise expert' if spec.is_moe else 'model'} runs ({steps} steps, shift {shift})")
    if not 0 <= trunc_high <= n_high:
        raise ValueError(f"{f_th}={trunc_high}: must be between 0 and {n_high}, the steps "
                         f"the high-noise expert runs" + ("" if spec.is_moe else f" ({spec.name} has no experts)"))
    image = _pick(row, "image")
    if image is not None and spec.image == "none":
        raise ValueError(f"image={image!r}: {spec.name} is text-to-video and takes no image")
    if image is None and spec.image == "required":
        raise ValueError(f"image=None: {spec.name} needs a conditioning image")
    if image is not None and image_size is not None:
        image_output_size(spec, size, image_size, f"image={image_label or image!r}")
    cache = str(_pick(row, "cache", s.cache))
    check_value("cache", cache)
    if cache == "mag" and s.cache_mag_ratios is None:
        raise ValueError("cache='mag': MagCache needs sample.cache_mag_ratios=<json> (per-expert ratios; a sidecar of "
                         "a run with sample.cache_calibrate=true holds them)")
    if cache != "none" and s.cache_calibrate:
        raise ValueError(f"cache={cache!r}: sample.cache_calibrate=true measures uncached videos only")
    cache_threshold = _pick(row, "cache_threshold", s.cache_threshold)
    cache_threshold = None if cache_threshold is None else float(cache_threshold)
    check_value("cache_threshold", cache_threshold)
    neg = _pick(row, "negative_prompt", s.negative_prompt)
    seed = row.get("seed")
    seed = derive_seed(s.seed, item_id) if seed in (None, "") else int(seed)
    check_value("seed", seed)
    return GenerationRequest(
        id=item_id, prompt=str(prompt), negative_prompt=NATIVE_NEGATIVE_PROMPT if neg is None else str(neg),
        seed=seed, size=size, frame_num_requested=frames_req, frame_num=frames, steps=steps, shift=shift,
        solver=solver, guide_scale=g_low, guide_scale_high=g_high, cfg_truncate_steps=trunc_low,
        cfg_truncate_high_noise_steps=trunc_high, cfg_truncate_keep=keep, image=None if image is None else str(image),
        warnings=tuple(warnings), cache=cache, cache_threshold=cache_threshold)


def step_plan(req: GenerationRequest, boundary: float | None) -> tuple[list[str], list[str]]:
    """(scheduler-independent) per-step experts and passes (schedule.BOTH / COND / UNCOND) for a request."""
    experts = expert_plan(list(_timesteps(req.solver, req.steps, req.shift)), boundary)
    return experts, cfg_plan(experts, req.guidance(), req.cfg_truncate_steps, req.cfg_truncate_high_noise_steps,
                             req.cfg_truncate_keep)

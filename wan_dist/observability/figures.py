"""The seed's four figures (model load, pure inference, expert switch, frames per second), the replica reduction of
per-rank times, and the timing rule the sidecars obey.

Timing rule (every sidecar, seconds):
  * every stage >= 0; `expert_switch` <= `denoise` (the switches happen inside the denoising loop);
  * `model_load` is the one-time load, charged only to the first video a process makes (0 on the others);
    the run's load is in `run.model_load_s` and per component in `run.load_seconds`;
  * `inference_s` = text_encode + latents + denoise + vae_decode (pure inference: no load, no save);
  * `total` >= model_load + text_encode + latents + denoise + vae_decode + save (expert_switch is NOT added again);
    single-process it is the item's wall clock (plus model_load on the first video);
  * `frames_per_second` = frames / inference_s.
With several ranks per replica each stage (and each denoising step) is the max over the replica's ranks
(`ctx.replica_max`), and `total` is the slowest rank's wall, never less than the sum of the reduced stages.
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger("wan_dist.figures")

GEN_STAGES = ("text_encode", "latents", "denoise", "expert_switch", "vae_decode")
SUM_STAGES = ("model_load", "text_encode", "latents", "denoise", "vae_decode", "save")


def stage_sum(timings: dict) -> float:
    """The stages `total` must cover (expert_switch is inside denoise, so it is not added twice)."""
    return sum(float(timings.get(k, 0.0)) for k in SUM_STAGES)


def reduce_item_times(ctx, timer, denoise, t0: float) -> float:
    """Collective over the replica (call on every rank of it, after generate): stage and step times become the
    replica's (max over ranks). Returns a start time to measure the item's total from, moved back so the elapsed
    time is the slowest rank's."""
    now = time.perf_counter()
    values = {k: float(timer.seconds.get(k, 0.0)) for k in GEN_STAGES}
    values["_elapsed"] = now - t0
    steps = list(getattr(denoise, "per_step_s", []) or [])
    values.update({f"_step{i}": s for i, s in enumerate(steps)})
    red = ctx.replica_max(values)
    for k in GEN_STAGES:
        if k in timer.seconds or red.get(k, 0.0) > 0:
            timer.seconds[k] = red[k]
    if steps:
        denoise.per_step_s = [red[f"_step{i}"] for i in range(len(steps))]
    return now - red["_elapsed"]


def item_total(timings: dict, elapsed: float) -> float:
    """`total` of one item: its wall clock (+ model_load when charged), at least the sum of its stages."""
    return max(elapsed + float(timings.get("model_load", 0.0)), stage_sum(timings))


def reduce_load(ctx, model_load_s: float, component_seconds: dict) -> tuple[float, dict]:
    """Model load of the replica: max over its ranks, total and per component (collective; every rank calls it)."""
    vals = {"_total": float(model_load_s)} | {k: float(v) for k, v in (component_seconds or {}).items()}
    red = ctx.replica_max(vals)
    return red["_total"], {k: round(red[k], 6) for k in (component_seconds or {})}


def _s(x) -> str:
    if x is None:
        return "n/a"
    x = float(x)
    return f"{x:.3f} s" if x >= 0.1 else f"{x * 1000:.2f} ms"


def video_line(sc: dict) -> str:
    """One line with the four figures of one video."""
    run = sc.get("run") or {}
    t = sc.get("timings") or {}
    fps = sc.get("frames_per_second")
    n = sc.get("expert_switches", 0)
    single = "single" in (sc.get("expert_steps") or {})
    switch = ("n/a (single model)" if single
              else f"{_s(t.get('expert_switch', 0.0))} ({n} switch{'es' if n != 1 else ''})")
    return (f"[figures] {sc.get('id')}: model load {_s(run.get('model_load_s', t.get('model_load')))} (once per run)"
            f" | inference {_s(sc.get('inference_s'))} | expert switch {switch}"
            f" | {fps if fps is not None else 'n/a'} frames/s"
            f" ({(sc.get('video') or {}).get('frames', sc.get('frame_num'))} frames)")


def run_figures(sidecars: list[dict], model_load_s: float | None) -> dict:
    inf = sum(float(s.get("inference_s") or 0.0) for s in sidecars)
    frames = sum(int((s.get("video") or {}).get("frames", s.get("frame_num") or 0)) for s in sidecars)
    sw_s = sum(float((s.get("timings") or {}).get("expert_switch", 0.0)) for s in sidecars)
    sw_n = sum(int(s.get("expert_switches") or 0) for s in sidecars)
    if model_load_s is None:
        model_load_s = max([float((s.get("run") or {}).get("model_load_s", 0.0)) for s in sidecars] or [0.0])
    return {"videos": len(sidecars), "model_load_s": round(model_load_s, 6), "inference_s": round(inf, 6),
            "inference_s_per_video": round(inf / len(sidecars), 6) if sidecars else None,
            "expert_switch_s": round(sw_s, 6), "expert_switches": sw_n, "frames": frames,
            "frames_per_second": round(frames / inf, 4) if inf > 0 else None}


def run_line(fig: dict) -> str:
    per = f", {_s(fig['inference_s_per_video'])}/video" if fig["videos"] else ""
    return (f"[figures] run, {fig['videos']} video(s): model load {_s(fig['model_load_s'])}"
            f" | inference {_s(fig['inference_s'])}{per} | expert switch {_s(fig['expert_switch_s'])}"
            f" ({fig['expert_switches']} switches) | {fig['frames_per_second'] or 'n/a'} frames/s"
            f" ({fig['frames']} frames)")

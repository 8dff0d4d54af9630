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

from .stages import GEN_STAGES, SUM_STAGES


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
    load = ("reused (loaded earlier in this process)" if (run.get("engine") or {}).get("reused")
            else f"{_s(run.get('model_load_s', t.get('model_load')))} (once per run)")
    return (f"[figures] {sc.get('id')}: model load {load}"
            f" | inference {_s(sc.get('inference_s'))} | expert switch {switch}"
            f" | {fps if fps is not None else 'n/a'} frames/s"
            f" ({(sc.get('video') or {}).get('frames', sc.get('frame_num'))} frames)")


class RunTotals:
    """Running sums for the run line: O(1) memory however many videos a batch makes (a 10k-prompt batch must not keep
    10k sidecars alive just to print one line at the end)."""

    def __init__(self):
        self.videos = 0
        self.inference_s = 0.0
        self.frames = 0
        self.expert_switch_s = 0.0
        self.expert_switches = 0
        self.max_model_load_s = 0.0   # from the sidecars' `run` block (fallback for the run's load)

    def add(self, s: dict) -> None:
        self.videos += 1
        self.inference_s += float(s.get("inference_s") or 0.0)
        self.frames += int((s.get("video") or {}).get("frames", s.get("frame_num") or 0))
        self.expert_switch_s += float((s.get("timings") or {}).get("expert_switch", 0.0))
        self.expert_switches += int(s.get("expert_switches") or 0)
        self.max_model_load_s = max(self.max_model_load_s, float((s.get("run") or {}).get("model_load_s", 0.0)))

    def figures(self, model_load_s: float | None) -> dict:
        if model_load_s is None:
            model_load_s = self.max_model_load_s
        inf, n = self.inference_s, self.videos
        return {"videos": n, "model_load_s": round(model_load_s, 6), "inference_s": round(inf, 6),
                "inference_s_per_video": round(inf / n, 6) if n else None,
                "expert_switch_s": round(self.expert_switch_s, 6), "expert_switches": self.expert_switches,
                "frames": self.frames, "frames_per_second": round(self.frames / inf, 4) if inf > 0 else None}


def run_figures(sidecars, model_load_s: float | None) -> dict:
    totals = RunTotals()
    for s in sidecars:
        totals.add(s)
    return totals.figures(model_load_s)


def run_line(fig: dict) -> str:
    per = f", {_s(fig['inference_s_per_video'])}/video" if fig["videos"] else ""
    return (f"[figures] run, {fig['videos']} video(s): model load {_s(fig['model_load_s'])}"
            f" | inference {_s(fig['inference_s'])}{per} | expert switch {_s(fig['expert_switch_s'])}"
            f" ({fig['expert_switches']} switches) | {fig['frames_per_second'] or 'n/a'} frames/s"
            f" ({fig['frames']} frames)")

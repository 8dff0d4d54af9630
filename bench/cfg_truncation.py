"""CFG truncation: denoise time saved against DiT forwards skipped, measured side by side, and the bound the forward
count alone sets on the real A14B defaults.

1. A tiny MoE model whose DiT dominates (the tiny-t2v-moe structure with a wider, deeper DiT built here, random
   weights, native layout): for (N, M) in {0, 5} x {0, 3} (N = cfg_truncate_steps, M = cfg_truncate_high_noise_steps)
   and both keep modes, `rounds` interleaved rounds of one video each; per setting the minimum over rounds (other
   processes only ever add time) of the denoise and whole-video seconds, as this process's CPU time (robust on a
   shared machine; threads: OMP_NUM_THREADS) and as wall time. Reported: forwards skipped (fraction of the
   baseline's), time saved (fraction), and their ratio (1.0 = each skipped forward saves exactly its share); also
   `denoise_step_medians`: each step's median wall time over the rounds, summed (short load spikes drop out). And a
   per-step estimate robust to noise: the median wall time of a step running both passes against one running one
   pass, over every step of every video: (T_both - T_one) / (T_both / 2) is the share of an average forward's time a
   skipped forward saves.
2. The bound: on t2v-A14B's defaults (40 steps: 26 high-noise + 14 low-noise, CFG on every step = 80 forwards), the
   fraction of DiT forwards a setting skips is the most it can save of the denoise time if every forward costs the
   same; of the total time it saves less (text encoding, VAE decode and saving do not shrink).

    OMP_NUM_THREADS=1 .venv/bin/python bench/cfg_truncation.py [--rounds 5] [--steps 20] [--json out.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SETTINGS = [(n, m, keep) for keep in ("uncond", "cond") for n, m in ((0, 0), (5, 0), (0, 3), (5, 3))]


def bench_spec(dim: int, layers: int, heads: int):
    """tiny-t2v-moe with a DiT wide and deep enough to dominate a video's time (T5 and VAE stay tiny)."""
    from wan_dist.models.registry import MODELS
    base = MODELS["tiny-t2v-moe"]
    dit = dict(base.dit, dim=dim, ffn_dim=4 * dim, num_heads=heads, num_layers=layers)
    return dataclasses.replace(base, name="bench-moe", dit=dit)


def a14b_bound() -> list[dict]:
    """Forward counts on t2v-A14B's defaults from the real plan (pipeline.schedule), per setting."""
    from wan_dist.config import compose
    from wan_dist.pipeline.schedule import cfg_plan, expert_plan, forward_counts, timesteps_for
    m = compose(["model=t2v-A14B", "ckpt_dir=/x", "prompt=x"]).model
    experts = expert_plan(timesteps_for("unipc", m.steps, m.shift), m.boundary)
    g = {"high": m.guide_scale_high, "low": m.guide_scale, "single": m.guide_scale}
    base = sum(forward_counts(cfg_plan(experts, g, 0, 0)).values())
    rows = []
    for n, mm in ((5, 0), (0, 3), (5, 3), (3, 0), (8, 0), (0, 2), (0, 5), (8, 5)):
        f = sum(forward_counts(cfg_plan(experts, g, n, mm)).values())
        rows.append({"N": n, "M": mm, "steps": f"{experts.count('high')} high + {experts.count('low')} low",
                     "forwards": f, "baseline_forwards": base,
                     "max_denoise_saved_pct": round(100 * (base - f) / base, 2)})
    return rows


def measure(work: Path, rounds: int, steps: int, dim: int, layers: int, heads: int, size: str, frames: int) -> dict:
    import torch

    from wan_dist.config import compose
    from wan_dist.models.device import placement
    from wan_dist.models.loading import load_models
    from wan_dist.models.tiny import write_tiny_checkpoint
    from wan_dist.pipeline.generator import WanGenerator
    from wan_dist.pipeline.request import build_request
    torch.manual_seed(0)
    spec = bench_spec(dim, layers, heads)
    ckpt = write_tiny_checkpoint(spec.name, work / "ckpt", spec=spec)
    place = placement(device="cpu", dtype="fp32", t5_dtype="fp32", vae_dtype="fp32", t5_cpu=False,
                      offload_model=False)
    models = load_models(spec, ckpt, place)
    cfg0 = compose(["model=tiny-t2v-moe", f"ckpt_dir={ckpt}", "prompt=x", f"sample.steps={steps}",
                    f"sample.size={size}", f"sample.frame_num={frames}"])
    gen = WanGenerator(models, place, boundary=cfg0.model.boundary)
    row = {"prompt": "a red fox running through fresh snow", "seed": 11}
    reqs = {}
    for n, m, keep in SETTINGS:
        s = dataclasses.replace(cfg0.sample, cfg_truncate_steps=n, cfg_truncate_high_noise_steps=m,
                                cfg_truncate_keep=keep)
        reqs[(n, m, keep)] = build_request(dataclasses.replace(cfg0, sample=s), spec, row, "bench")
    import wan_dist.pipeline.generator as gen_mod
    real_denoise, cpu_box = gen_mod.denoise, []

    def denoise_cpu(*args, **kw):                 # the real loop, with this process's CPU time around it
        c0 = time.process_time()
        try:
            return real_denoise(*args, **kw)
        finally:
            cpu_box.append(time.process_time() - c0)
    gen_mod.denoise = denoise_cpu
    gen.generate(reqs[(0, 0, "uncond")])                     # warm-up (lazy initialisation), not measured
    times: dict[tuple, list] = {k: [] for k in reqs}
    fw, experts, steps_s = {}, None, {"both": [], "one": []}
    for r in range(rounds):                                   # interleaved: load drifts hit every setting alike
        for k in (SETTINGS if r % 2 == 0 else SETTINGS[::-1]):
            c0 = time.process_time()
            res = gen.generate(reqs[k])
            cpu = time.process_time() - c0
            inf = sum(res.timings.get(s, 0.0) for s in ("text_encode", "latents", "denoise", "vae_decode"))
            times[k].append({"denoise": res.timings["denoise"], "inference": inf, "denoise_cpu": cpu_box[-1],
                             "inference_cpu": cpu, "steps": list(res.denoise.per_step_s)})
            fw[k] = sum(res.denoise.forwards.values())
            experts = res.denoise.expert_steps
            for i, (sec, passes) in enumerate(zip(res.denoise.per_step_s, res.denoise.step_passes)):
                if i:                                          # step 0 carries the solver's first-step set-up
                    steps_s["both" if passes == "both" else "one"].append(sec)
    gen_mod.denoise = real_denoise
    # min over rounds: interference from other processes only ever adds time
    best = {k: {m: min(t[m] for t in v) for m in v[0] if m != "steps"} for k, v in times.items()}
    for k, v in times.items():          # per step, the median over rounds; summed: a spike-proof denoise time
        best[k]["denoise_step_medians"] = sum(statistics.median(t["steps"][i] for t in v) for i in range(steps))
    out = []
    for k in SETTINGS:
        n, m, keep = k
        b0, b, f0, f = best[(0, 0, keep)], best[k], fw[(0, 0, keep)], fw[k]
        row = {"N": n, "M": m, "keep": keep, "forwards": f, "forwards_skipped_pct": round(100 * (f0 - f) / f0, 2)}
        for metric in ("denoise_step_medians", "denoise_cpu", "inference_cpu", "denoise", "inference"):
            row[f"{metric}_s"] = round(b[metric], 4)
            row[f"{metric}_saved_pct"] = round(100 * (b0[metric] - b[metric]) / b0[metric], 2)
        if f < f0:
            for metric in ("denoise_step_medians", "denoise_cpu", "denoise"):
                row[f"{metric}_saved_per_skipped"] = round(row[f"{metric}_saved_pct"] / row["forwards_skipped_pct"],
                                                           3)
        out.append(row)
    b = best[(0, 0, "uncond")]
    t2, t1 = statistics.median(steps_s["both"]), statistics.median(steps_s["one"])
    per_step = {"both_passes_step_ms": round(1e3 * t2, 3), "one_pass_step_ms": round(1e3 * t1, 3),
                "samples": [len(steps_s["both"]), len(steps_s["one"])],
                # a skipped forward saves this share of an average forward's time (1.0 = all of it)
                "saved_per_skipped_forward": round((t2 - t1) / (t2 / 2), 3)}
    return {"per_step_wall": per_step,
            "model": {"dit": {k: spec.dit[k] for k in ("dim", "ffn_dim", "num_heads", "num_layers")},
                      "steps": steps, "expert_steps": experts, "size": size, "frames": frames},
            "rounds": rounds, "denoise_share_of_inference_cpu": round(b["denoise_cpu"] / b["inference_cpu"], 3),
            "load_average_after": os.getloadavg(), "settings": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--size", default="64*64")
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
               "measured": measure(Path(d), a.rounds, a.steps, a.dim, a.layers, a.heads, a.size, a.frames),
               "a14b_bound": a14b_bound()}
    print(json.dumps(res, indent=2))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

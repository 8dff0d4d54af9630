"""Speed vs fidelity of the speed options (step caches, cfg_batch, compile) against the plain run, side by side.

    .venv/bin/python bench/speed.py [--out runs/bench-speed] [--videos 3] [--models tiny,width1.3B]

Two DiTs with random weights (diffusers' own init, which changes smoothly from step to step like trained weights
do; a re-randomised N(0, 0.2) init does not), each inside the real pipeline (WanGenerator: the same denoising loop,
executors, step cache and compile code a run uses) with a tiny checkpoint's T5 and VAE:
  tiny       two experts (tiny-t2v-moe), DiT dim 256, 8 heads, ffn 1024, 8 layers: the DiT dominates the step
  width1.3B  one DiT of t2v-1.3B widths (dim 1536, 12 heads, ffn 8960), 3 layers, few tokens (CPU)
For each setting and video: DiT calls, blocks computed / called, denoise CPU seconds (one thread; see CPUTimer) and
wall seconds, and fidelity against the plain
video of the same request (PSNR and SSIM of the uint8 frames, relative L2 of the final latents). MagCache uses the
ratios the plain run calibrated (sample.cache_calibrate), as a user would. `compile` runs last (compiling is not
undone). Settings run interleaved on the same videos (see bench_model). Prints a markdown table; writes
OUT/results.json.

Fidelity uses the functions of `wan-dist compare` (wan_dist/analysis/fidelity.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS = ["a red fox running through fresh snow", "waves breaking on a rocky shore at sunset",
           "a cat jumping onto a wooden table", "city traffic at night in the rain"]
MODELS = {
    "tiny": {"base": "tiny-t2v-moe", "dit": {"dim": 256, "num_heads": 8, "ffn_dim": 1024, "num_layers": 8},
             "steps": 20, "size": "128*128", "frames": 17},
    "width1.3B": {"base": "tiny-t2v", "dit": {"dim": 1536, "num_heads": 12, "ffn_dim": 8960, "num_layers": 3},
                  "steps": 12, "size": "128*128", "frames": 5},
}
# name -> (cfg_batch, cache overrides for the row, run-wide cache params, compile)
SETTINGS = {
    "plain": (False, {}, {}, False),
    "cfg_batch": (True, {}, {}, False),
    "first_block 0.05": (False, {"cache": "first_block", "cache_threshold": 0.05}, {}, False),
    "first_block 0.1": (False, {"cache": "first_block", "cache_threshold": 0.1}, {}, False),
    "first_block 0.2": (False, {"cache": "first_block", "cache_threshold": 0.2}, {}, False),
    "mag 0.06": (False, {"cache": "mag", "cache_threshold": 0.06}, {}, False),
    "mag 0.15": (False, {"cache": "mag", "cache_threshold": 0.15}, {}, False),
    "taylorseer 2": (False, {"cache": "taylorseer"}, {"interval": 2, "warmup_steps": 3}, False),
    "taylorseer 3": (False, {"cache": "taylorseer"}, {"interval": 3, "warmup_steps": 3}, False),
    "mag 0.15 + cfg_batch": (True, {"cache": "mag", "cache_threshold": 0.15}, {}, False),
    "compile": (False, {}, {}, True),
}


# -- fidelity: the compare tool's functions (wan_dist/analysis/fidelity.py: torchmetrics PSNR / SSIM, latent L2) ---
def fidelity(frames, latents, ref_frames, ref_latents) -> dict:
    """PSNR (mean over frames) and SSIM of uint8 frames [F, H, W, 3], relative L2 of the final latents."""
    from wan_dist.analysis.fidelity import frame_metrics, latent_metrics
    f = frame_metrics(frames.cpu().numpy(), ref_frames.cpu().numpy())
    return {"psnr": f["psnr_db"], "ssim": f["ssim"], "rel_l2": latent_metrics(latents, ref_latents)["latent_rel_l2"]}


# -- the models ---------------------------------------------------------------------------------------------------
def build(kind: str, root: Path):
    """Loaded tiny checkpoint (T5, VAE, tokenizer) whose DiT(s) are replaced by random ones of the bench's widths."""
    import torch

    from wan_dist.models import convert
    from wan_dist.models.device import placement
    from wan_dist.models.loading import load_models
    from wan_dist.models.registry import get_model
    from wan_dist.models.tiny import write_tiny_checkpoint
    m = MODELS[kind]
    spec = get_model(m["base"])
    ckpt = root / f"ckpt-{m['base']}"
    if not ckpt.exists():
        write_tiny_checkpoint(m["base"], ckpt, seed=0)
    place = placement(device="cpu", dtype="fp32", t5_dtype="fp32", vae_dtype="fp32", t5_cpu=False,
                      offload_model=False)
    loaded = load_models(spec, ckpt, place)
    for i, name in enumerate(loaded.dits):
        torch.manual_seed(1000 + i)
        loaded.dits[name] = convert.build_library_module("dit", {**spec.dit, **m["dit"]}, device="cpu") \
            .eval().requires_grad_(False)
    return spec, ckpt, place, loaded


def make_generator(kind, name, spec, ckpt, place, loaded, ratios_file):
    """The generator of one setting (all settings share the loaded models) and its request builder."""
    from wan_dist.config import compose
    from wan_dist.pipeline.cache import CacheSetting, StepCache, load_mag_ratios
    from wan_dist.pipeline.cfg_batch import BatchedGuidance
    from wan_dist.pipeline.denoise import SequentialGuidance
    from wan_dist.pipeline.generator import WanGenerator
    from wan_dist.pipeline.request import build_request
    m = MODELS[kind]
    cfg_batch, row_cache, params, _ = SETTINGS[name]
    over = [f"model={m['base']}", f"ckpt_dir={ckpt}", "prompt=x", f"sample.steps={m['steps']}",
            f"sample.size={m['size']}", f"sample.frame_num={m['frames']}"]
    if ratios_file is not None:
        over.append(f"sample.cache_mag_ratios={ratios_file}")
    cfg = compose(over)
    ratios = load_mag_ratios(str(ratios_file), tuple(loaded.dits)) if ratios_file else ()
    gen = WanGenerator(loaded, place, boundary=cfg.model.boundary,
                       guidance_exec=BatchedGuidance() if cfg_batch else SequentialGuidance(),
                       step_cache=StepCache(loaded.dits, calibrate=name == "plain"),
                       cache_base=CacheSetting(**params, mag_ratios=ratios))

    def request(v: int):
        row = {"prompt": PROMPTS[v % len(PROMPTS)], "seed": 100 + v, **row_cache}
        return build_request(cfg, spec, row, f"v{v}")
    return gen, request


class CPUTimer:
    """Stage timer reading this process's CPU time (time.process_time) instead of the wall clock: on a shared CPU
    machine the wall clock of a stage swings with other processes' load (x4 between neighbouring videos here), the
    CPU time a single-threaded torch spends on it does not. The denoise wall time is kept too (per-step sums)."""

    def __new__(cls):
        from wan_dist.observability.timer import StageTimer

        class _T(StageTimer):
            def now(self) -> float:
                return time.process_time()
        return _T("cpu")


def measure(gen, request, v: int, plain: list | None) -> dict:
    timer = CPUTimer()
    res = gen.generate(request(v), timer=timer)
    c = res.denoise.cache
    row = {"video": v, "denoise_s": timer.seconds["denoise"], "denoise_wall_s": sum(res.denoise.per_step_s),
           "dit_calls": sum(e["dit_calls"] for e in c["experts"].values()),
           "blocks_computed": sum(e["blocks_computed"] for e in c["experts"].values()),
           "blocks_called": sum(e["blocks_called"] for e in c["experts"].values()),
           "_latents": res.latents, "_frames": res.frames, "_ratios": c.get("mag_ratios")}
    if plain is not None:
        ref = plain[v]
        row.update(fidelity(res.frames, res.latents, ref["_frames"], ref["_latents"]))
    return row


def bench_model(kind: str, root: Path, names: list[str], n_videos: int) -> dict:
    """Every setting on the same videos, interleaved (video 0 of every setting, then video 1, ...) so that a change
    of machine load hits all settings alike; one uncounted plain video first pays the one-time costs and calibrates
    MagCache. `compile` runs after the others (compiling is not undone)."""
    from wan_dist.pipeline.compile import compile_dits, warm_up
    spec, ckpt, place, loaded = build(kind, root)
    gen, request = make_generator(kind, "plain", spec, ckpt, place, loaded, None)
    ratios = measure(gen, lambda v: request(len(PROMPTS) + 1), 0, None)["_ratios"]
    ratios_file = root / f"mag_ratios-{kind}.json"
    ratios_file.write_text(json.dumps(ratios))
    eager = [n for n in names if not SETTINGS[n][3]]
    gens = {n: make_generator(kind, n, spec, ckpt, place, loaded, ratios_file) for n in eager}
    rows: dict[str, list] = {n: [] for n in names}
    for v in range(n_videos):
        for n in eager:
            rows[n].append(measure(*gens[n], v, None if n == "plain" else rows["plain"]))
            print(kind, n, v, round(rows[n][-1]["denoise_s"], 3), flush=True)
    compile_s = {}
    for n in names:
        if SETTINGS[n][3]:
            t0 = time.perf_counter()
            compile_dits(loaded.dits, with_cache=False)
            warm_up(loaded.dits, spec, size=tuple(int(x) for x in MODELS[kind]["size"].split("*")),
                    frame_num=MODELS[kind]["frames"], device=place.device, dtype=place.dtype)
            compile_s[n] = time.perf_counter() - t0
            g = make_generator(kind, n, spec, ckpt, place, loaded, ratios_file)
            rows[n] = [measure(*g, v, rows["plain"]) for v in range(n_videos)]
    return {n: summarize(rows[n], rows["plain"], compile_s.get(n, 0.0)) for n in names}


def summarize(rows, plain_rows, compile_s) -> dict:
    """denoise: median CPU seconds over the videos; vs plain: median over the videos of this setting's CPU seconds
    over the plain run's on the same video; blocks: summed over the videos."""
    d = statistics.median(r["denoise_s"] for r in rows)
    ratio = statistics.median(r["denoise_s"] / p["denoise_s"] for r, p in zip(rows, plain_rows))
    out = {"videos": len(rows), "dit_calls": rows[0]["dit_calls"],
           "blocks": f"{sum(r['blocks_computed'] for r in rows)}/{sum(r['blocks_called'] for r in rows)}",
           "denoise_cpu_s": round(d, 3), "denoise_vs_plain": round(ratio, 3),
           "denoise_wall_s": round(statistics.median(r["denoise_wall_s"] for r in rows), 3)}
    if "psnr" in rows[0]:
        out.update(psnr_db=round(min(r["psnr"] for r in rows), 2), ssim=round(min(r["ssim"] for r in rows), 4),
                   rel_l2=round(max(r["rel_l2"] for r in rows), 5))
    if compile_s:
        out["compile_s"] = round(compile_s, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-speed"))
    ap.add_argument("--videos", type=int, default=3)
    ap.add_argument("--models", default="tiny,width1.3B")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)      # CPU time is only a stable measure of the work with one thread (no spinning)
    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    names = ["plain"] + [s for s in a.settings.split(",") if s != "plain"]
    t0 = time.time()
    results = {kind: bench_model(kind, root, names, a.videos) for kind in a.models.split(",")}
    (root / "results.json").write_text(json.dumps(results, indent=2))
    cols = ["dit_calls", "blocks", "denoise_cpu_s", "denoise_vs_plain", "denoise_wall_s", "psnr_db", "ssim",
            "rel_l2", "compile_s"]
    print(f"\n{time.strftime('%Y-%m-%d')}, {time.time() - t0:.0f} s")
    for kind, table in results.items():
        m = MODELS[kind]
        print(f"\n{kind}: DiT {m['dit']}, {m['steps']} steps, {m['size']} x {m['frames']} frames, "
              f"{a.videos} videos per setting (denoise: CPU seconds, median; fidelity: the worst video)\n")
        print("| setting | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for name, r in table.items():
            print(f"| {name} | " + " | ".join(str(r.get(c, "")) for c in cols) + " |")


if __name__ == "__main__":
    main()

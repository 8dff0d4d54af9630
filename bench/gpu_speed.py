"""One NVIDIA GPU, one prepared pass (bench/gpu.sh runs it): real-width Wan DiTs with random weights built on the
device, timed inside wan-dist's own denoising loop (pipeline.denoise with its executors and step cache).

    python bench/gpu_speed.py [--budget 420] [--out runs/bench-gpu] [--dry-run] [--cpu-smoke]

Measures, in this order (the cheapest and most important first; whatever the time budget does not reach is listed
as skipped, never silently dropped):
  1. tolerance: bf16 against fp32 of the layouts that fit one GPU (one process: sequential CFG, cfg_batch), t2v-1.3B
     widths at the 480p token count: relative L2 and max |d| of one step's prediction and of a 4-step latent;
  2. seconds per step (CFG on: two passes) of t2v-1.3B and ti2v-5B widths at 480p and 720p token counts, per
     attention backend available here (native, _native_cudnn, _native_flash, _native_efficient, flex, flash, sage);
  3. at 480p: cfg_batch, compile=regional (compile seconds reported apart) and each step cache (first_block, mag with
     a flat schedule, taylorseer), seconds per step over a 10-step loop with the blocks computed/called;
and peak CUDA memory (max_memory_allocated) for each. Writes OUT/gpu.json and prints a markdown table.

--dry-run lists the plan (shapes, token counts, settings) without touching a GPU. --cpu-smoke runs the whole code
path on CPU with tiny widths and token counts (what the tests here can check without a GPU).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (model whose widths are used, size W*H, frames): the token counts of the official 480p / 720p settings
SHAPES = [("t2v-1.3B", "832*480", 81), ("t2v-1.3B", "1280*720", 81), ("ti2v-5B", "832*480", 121),
          ("ti2v-5B", "1280*704", 121)]
BACKENDS = ("native", "_native_cudnn", "_native_flash", "_native_efficient", "flex", "flash", "sage")
CACHES = {"first_block": {"threshold": 0.05}, "mag": {"threshold": 0.06},
          "taylorseer": {"interval": 3, "warmup_steps": 3}}
LOOP_STEPS = 10


def plan(cpu_smoke: bool) -> list[dict]:
    from wan_dist.models.registry import get_model
    from wan_dist.pipeline.sizes import parse_size, token_count
    items = [{"kind": "tolerance", "model": "t2v-1.3B", "size": "832*480", "frames": 81}]
    for model, size, frames in SHAPES:
        for b in BACKENDS:
            items.append({"kind": "backend", "model": model, "size": size, "frames": frames, "backend": b})
    for model, size, frames in SHAPES:
        if size == "832*480":
            items.append({"kind": "cfg_batch", "model": model, "size": size, "frames": frames})
            items += [{"kind": "cache", "model": model, "size": size, "frames": frames, "cache": c} for c in CACHES]
            items.append({"kind": "compile", "model": model, "size": size, "frames": frames})
    for it in items:
        w, h = parse_size(it["size"])
        it["tokens"] = token_count(get_model(it["model"]), it["frames"], w, h)
        if cpu_smoke:   # the same code path, tiny: 2 layers of width 64, a few hundred tokens
            it.update(size="64*64", frames=5)
            it["tokens"] = token_count(get_model(it["model"]), 5, 64, 64)
    return items


class Bench:
    def __init__(self, device: str, cpu_smoke: bool):
        import torch
        self.torch, self.device, self.smoke = torch, torch.device(device), cpu_smoke
        self._dits: dict = {}

    def dit(self, model: str, dtype):
        """A random DiT of `model`'s widths on the device (diffusers' init), cached per (model, dtype)."""
        from wan_dist.models import convert
        from wan_dist.models.registry import get_model
        key = (model, dtype)
        if key not in self._dits:
            self._dits.clear()
            self.torch.cuda.empty_cache() if self.device.type == "cuda" else None
            cfg = dict(get_model(model).dit)
            if self.smoke:
                cfg.update(dim=64, ffn_dim=128, num_heads=2, num_layers=2)
            self.torch.manual_seed(0)
            self._dits[key] = convert.build_library_module("dit", cfg, device=str(self.device)) \
                .to(dtype).eval().requires_grad_(False)
        return self._dits[key]

    def loop(self, it: dict, dtype, steps: int, guidance, cache_setting=None, model=None):
        """`steps` denoising steps (CFG on) in wan-dist's loop; returns (DenoiseResult, latents)."""
        from wan_dist.models.registry import get_model
        from wan_dist.pipeline.cache import CacheSetting, StepCache
        from wan_dist.pipeline.denoise import denoise
        from wan_dist.pipeline.latents import Conditioning
        from wan_dist.pipeline.schedule import make_scheduler
        from wan_dist.pipeline.sizes import latent_frames, parse_size
        torch = self.torch
        spec = get_model(it["model"])
        model = model or self.dit(it["model"], dtype)
        w, h = parse_size(it["size"])
        g = torch.Generator(device="cpu").manual_seed(0)
        z = torch.randn(spec.z_dim, latent_frames(it["frames"], spec), h // spec.vae_stride[1],
                        w // spec.vae_stride[2], generator=g).to(self.device)
        text = torch.randn(2, 512, model.config.text_dim, generator=g).to(self.device)
        cond = Conditioning(spec.family, z, (w, h), mask2=torch.ones_like(z) if spec.family == "ti2v" else None)
        cache = StepCache({"single": model})
        sched = make_scheduler("unipc", steps, 5.0, device=self.device)
        cache.begin(cache_setting or CacheSetting(), ["single"] * steps)
        try:
            res = denoise({"single": model}, cond, text[:1], text[1:], sched, step_experts=["single"] * steps,
                          guidance={"single": 5.0}, step_passes=["both"] * steps, dtype=dtype, device=self.device,
                          guidance_exec=guidance)
        finally:
            res_cache = cache.end()
        res.cache = res_cache.as_dict()
        return res

    def peak(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return round(self.torch.cuda.max_memory_allocated(self.device) / 2**30, 2)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.reset_peak_memory_stats(self.device)

    # -- the measurements ---------------------------------------------------------------------------------------
    def measure(self, it: dict) -> dict:
        from wan_dist.models.attention import apply_backend, resolve_backend
        from wan_dist.pipeline.cache import CacheSetting
        from wan_dist.pipeline.cfg_batch import BatchedGuidance
        from wan_dist.pipeline.compile import compile_dits, warm_up
        from wan_dist.pipeline.denoise import SequentialGuidance
        from wan_dist.models.registry import get_model
        torch = self.torch
        bf16 = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        seq, bat = SequentialGuidance(), BatchedGuidance()
        self.reset_peak()
        if it["kind"] == "tolerance":
            out = {}
            ref = {k: self.loop(it, torch.float32, 4, g) for k, g in (("sequential", seq), ("cfg_batch", bat))}
            for k, g in (("sequential", seq), ("cfg_batch", bat)):
                got = self.loop(it, bf16, 4, g)
                d = (got.latents.float() - ref[k].latents.float())
                out[k] = {"rel_l2": round((d.norm() / ref[k].latents.float().norm()).item(), 5),
                          "max_abs": round(d.abs().max().item(), 5)}
            return out
        model = self.dit(it["model"], bf16)
        if it["kind"] == "backend":
            name = resolve_backend(it["backend"], self.device)      # ValueError: not usable here (recorded)
            apply_backend(model, name)
            try:
                self.loop(it, bf16, 1, seq)                          # warm-up (kernel selection, allocator)
                res = self.loop(it, bf16, 2, seq)
            finally:   # back to the default for the next measurement
                model.reset_attention_backend()
                apply_backend(model, "native")
            return {"s_per_step": round(min(res.per_step_s), 4)}
        if it["kind"] == "cfg_batch":
            self.loop(it, bf16, 1, bat)
            res = self.loop(it, bf16, 2, bat)
            return {"s_per_step": round(min(res.per_step_s), 4)}
        if it["kind"] == "cache":
            params = dict(CACHES[it["cache"]])
            if it["cache"] == "mag":     # a flat schedule: skips by the step counts alone (no calibration here)
                params["mag_ratios"] = (("single", (1.0,) * LOOP_STEPS),)
            setting = CacheSetting(method=it["cache"], **params)
            res = self.loop(it, bf16, LOOP_STEPS, seq, setting)
            c = res.cache["experts"]["single"]
            return {"s_per_step": round(sum(res.per_step_s) / len(res.per_step_s), 4),
                    "blocks": f"{c['blocks_computed']}/{c['blocks_called']}"}
        if it["kind"] == "compile":
            from wan_dist.pipeline.sizes import parse_size
            t0 = time.perf_counter()
            compile_dits({"single": model}, with_cache=False)
            warm_up({"single": model}, get_model(it["model"]), size=parse_size(it["size"]), frame_num=it["frames"],
                    device=self.device, dtype=bf16)
            compile_s = time.perf_counter() - t0
            res = self.loop(it, bf16, 2, seq, model=model)
            self._dits.clear()                                         # compiled for good: build afresh later
            return {"s_per_step": round(min(res.per_step_s), 4), "compile_s": round(compile_s, 1)}
        raise ValueError(it["kind"])


def label(it: dict) -> str:
    extra = it.get("backend") or it.get("cache") or ""
    return f"{it['kind']} {it['model']} {it['size']}x{it['frames']} ({it['tokens']} tokens) {extra}".strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=420.0, help="seconds; later items are skipped past it")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-gpu"))
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--cpu-smoke", action="store_true")
    ap.add_argument("--kinds", default="tolerance,backend,cfg_batch,cache,compile", help="which measurements")
    ap.add_argument("--models", default="t2v-1.3B,ti2v-5B", help="whose widths")
    a = ap.parse_args()
    items = [it for it in plan(a.cpu_smoke) if it["kind"] in a.kinds.split(",") and it["model"] in a.models.split(",")]
    if a.dry_run:
        for it in items:
            print(label(it))
        print(f"{len(items)} measurements planned")
        return 0
    import torch
    if not a.cpu_smoke and not torch.cuda.is_available():
        print("bench/gpu_speed.py: no CUDA device; use --dry-run or --cpu-smoke here", file=sys.stderr)
        return 2
    bench = Bench("cpu" if a.cpu_smoke else "cuda", a.cpu_smoke)
    t_start, results = time.perf_counter(), []
    for it in items:
        row = {"what": label(it), **it}
        if time.perf_counter() - t_start > a.budget:
            row["skipped"] = "time budget"
        else:
            try:
                row.update(bench.measure(it))
                row["peak_gib"] = bench.peak()
            except (ValueError, RuntimeError) as e:       # a backend not installed here, an OOM: recorded
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                if bench.device.type == "cuda":
                    torch.cuda.empty_cache()
        results.append(row)
        print(json.dumps(row), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if bench.device.type == "cuda"
            else "cpu (smoke)", "date": time.strftime("%Y-%m-%d"), "seconds": round(time.perf_counter() - t_start)}
    (out / "gpu.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\n{meta}\n\n| measurement | s/step | peak GiB | other |\n|---|---|---|---|")
    for r in results:
        other = {k: r[k] for k in ("sequential", "cfg_batch", "blocks", "compile_s", "error", "skipped") if k in r}
        print(f"| {r['what']} | {r.get('s_per_step', '')} | {r.get('peak_gib', '')} | "
              f"{json.dumps(other) if other else ''} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Speed options on tiny native checkpoints, one process: step caching per expert (forward and block counts, state
reset per video, CFG truncation, TaylorSeer identifiers, MagCache calibration), cfg_batch equality, compile=regional
as its own stage, attention_backend validation and the layout rules of the speed options.

The multi-process checks (ring, Ulysses x ring, caching under Ulysses/ring/CFG-parallel with the ranks' agreement)
are in tests/test_distributed.py.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from wan_dist.batch.extras import load_latents
from wan_dist.config import compose
from wan_dist.worker import run

MODEL = "tiny-t2v-moe"        # two experts: 8 steps split 6 high / 2 low
STEPS = 8
BASE = ["sample.frame_num=5", "sample.size=32*32", "batch.progress=false", "output.save_latents=true",
        f"sample.steps={STEPS}"]
LAYERS = 2                    # blocks per tiny DiT
# same prompt and seed under two ids: the second video must equal the first (every hook state reset in between);
# the third and fourth truncate CFG in the last 2 (low-noise) steps: keep=uncond (the default: the conditional pass
# is skipped) and keep=cond (the unconditional pass is skipped); each cache context keeps its own state
ROWS = ("id,prompt,seed,cfg_truncate_steps,cfg_truncate_keep\na,a cat on the beach,7,0,\nb,a cat on the beach,7,0,\n"
        "c,a dog,8,2,\nd,a dog,8,2,cond\n")
METHODS = {
    "none": [],
    "first_block": ["sample.cache=first_block", "sample.cache_threshold=0.3"],
    "mag": ["sample.cache=mag", "sample.cache_threshold=0.2"],      # + the ratios calibrated by the `none` run
    "taylorseer": ["sample.cache=taylorseer", "sample.cache_interval=2", "sample.cache_warmup_steps=2"],
}


def _run(ckpt, out: Path, manifest: Path, extra, model=MODEL) -> dict[str, dict]:
    assert run(compose([f"model={model}", f"ckpt_dir={ckpt}", f"out_dir={out}", f"manifest={manifest}", *BASE,
                        *extra])) == 0
    return {p.stem: json.loads(p.read_text()) for p in (out / "videos").glob("*.json")}


def _lat(out: Path, item: str) -> torch.Tensor:
    return load_latents(out / "videos" / f"{item}.latents.safetensors")[0]


@pytest.fixture(scope="module")
def cache_runs(tiny_ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cache")
    man = tmp / "rows.csv"
    man.write_text(ROWS)
    ck = tiny_ckpt(MODEL)
    out = {}
    out["none"] = (tmp / "none", _run(ck, tmp / "none", man, ["sample.cache_calibrate=true"]))
    ratios = tmp / "ratios.json"
    ratios.write_text(json.dumps(out["none"][1]["a"]))       # a whole sidecar is a valid ratios file
    for name, extra in METHODS.items():
        if name != "none":
            extra = extra + ([f"sample.cache_mag_ratios={ratios}"] if name == "mag" else [])
            out[name] = (tmp / name, _run(ck, tmp / name, man, extra))
    return out


@pytest.mark.parametrize("method", list(METHODS))
def test_cache_counts_per_expert(cache_runs, method):
    out, scs = cache_runs[method]
    for item, forwards in (("a", {"cond": STEPS, "uncond": STEPS}), ("c", {"cond": STEPS - 2, "uncond": STEPS}),
                           ("d", {"cond": STEPS, "uncond": STEPS - 2})):
        sc = scs[item]
        cache, steps = sc["cache"], sc["expert_steps"]
        assert sc["forwards"] == forwards
        assert cache["method"] == method
        assert set(cache["experts"]) == {"high", "low"}
        calls = {"high": 2 * steps["high"], "low": 2 * steps["low"] - (item != "a") * 2}   # truncation: low expert
        for e, c in cache["experts"].items():
            assert c["dit_calls"] == calls[e], (e, c)
            assert c["blocks_called"] == LAYERS * c["dit_calls"]
            assert c["blocks_computed"] + c["blocks_skipped"] == c["blocks_called"]
        skipped = sum(c["blocks_skipped"] for c in cache["experts"].values())
        # every method skips something here; TaylorSeer only because its identifiers match Wan's blocks (its
        # defaults, ^blocks.*attn, match no Wan module and would skip nothing)
        assert (skipped == 0) if method == "none" else (skipped > 0), cache
    # the second video of the same request is the same video: no hook state leaked from the first
    assert scs["a"]["cache"] == scs["b"]["cache"]
    assert torch.equal(_lat(out, "a"), _lat(out, "b"))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "none"])
def test_cache_changes_the_result_a_little(cache_runs, method):
    plain, out = cache_runs["none"][0], cache_runs[method][0]
    ref, got = _lat(plain, "a"), _lat(out, "a")
    rel = ((got - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.5, rel          # a skipped block is an approximation, not a different video


def test_mag_calibration_in_the_sidecar(cache_runs):
    scs = cache_runs["none"][1]
    ratios = scs["a"]["cache"]["mag_ratios"]
    assert {e: len(r) for e, r in ratios.items()} == scs["a"]["expert_steps"]     # one ratio per step, per expert
    assert all(r[0] == 1.0 and all(v > 0 for v in r) for r in ratios.values())
    assert "mag_ratios" not in cache_runs["mag"][1]["a"]["cache"]


def test_cfg_batch_equals_two_forwards(tiny_ckpt, test_image, tmp_path):
    """One batch-2 forward per CFG step: same latents within fp32 tolerance, half the DiT calls on those steps."""
    for model, image in (("tiny-t2v-moe", ""), ("tiny-ti2v", test_image), ("tiny-i2v-moe", test_image)):
        man = tmp_path / f"{model}.csv"
        man.write_text(f"id,prompt,seed,image,cfg_truncate_steps\nx,a cat,3,{image},1\n")
        seq = _run(tiny_ckpt(model), tmp_path / f"{model}-seq", man, [], model)["x"]
        bat = _run(tiny_ckpt(model), tmp_path / f"{model}-bat", man, ["sample.cfg_batch=true"], model)["x"]
        diff = (_lat(tmp_path / f"{model}-seq", "x") - _lat(tmp_path / f"{model}-bat", "x")).abs().max().item()
        assert diff <= 1e-5, (model, diff)
        assert bat["forwards"] == seq["forwards"]                        # passes are passes, batched or not
        calls = sum(c["dit_calls"] for c in bat["cache"]["experts"].values())
        assert calls == STEPS == sum(c["dit_calls"] for c in seq["cache"]["experts"].values()) - (STEPS - 1)


def test_pinned_magcache_updates_its_schedule_in_place(tiny_ckpt, tmp_path):
    """Under Ulysses/ring the MagCache hooks are installed once (inside the sequence split) and only their schedule
    changes per video: that path gives the same videos as re-enabling the cache for each video."""
    from wan_dist.config import compose as comp
    from wan_dist.models.device import placement
    from wan_dist.models.loading import load_models
    from wan_dist.models.registry import get_model
    from wan_dist.pipeline.cache import CacheSetting, StepCache
    from wan_dist.pipeline.generator import WanGenerator
    from wan_dist.pipeline.request import build_request, step_plan
    spec, ck = get_model(MODEL), tiny_ckpt(MODEL)
    (tmp_path / "r.json").write_text(json.dumps({"high": [1.0] * 6, "low": [1.0] * 6}))
    cfg = comp([f"model={MODEL}", f"ckpt_dir={ck}", "prompt=x", *BASE[:3],
                f"sample.cache_mag_ratios={tmp_path}/r.json"])
    place = placement(device="cpu", dtype="fp32", t5_dtype="fp32", vae_dtype="fp32", t5_cpu=False,
                      offload_model=False)
    ratios = (("high", (1.0,) * 6), ("low", (1.0,) * 6))
    base = CacheSetting(threshold=0.5, max_skip_steps=2, warmup_steps=1, mag_ratios=ratios)
    reqs = [build_request(cfg, spec, {"prompt": "a cat", "steps": n, "seed": 5, "cache": "mag"}, f"r{n}")
            for n in (8, 12, 8)]
    results = {}
    for pinned in (False, True):
        models = load_models(spec, ck, place)
        cache = StepCache(models.dits, pinned=pinned)
        if pinned:
            cache.install(dataclasses.replace(base, method="mag"), step_plan(reqs[0], cfg.model.boundary)[0])
        gen = WanGenerator(models, place, boundary=cfg.model.boundary, step_cache=cache, cache_base=base)
        results[pinned] = [gen.generate(r) for r in reqs]
    for a, b in zip(results[False], results[True]):
        assert a.denoise.cache == b.denoise.cache
        assert sum(c["blocks_skipped"] for c in a.denoise.cache["experts"].values()) > 0
        assert torch.equal(a.latents, b.latents)


def test_pinned_without_a_cache_takes_videos_of_any_step_count(tiny_ckpt):
    """Under Ulysses/ring with sample.cache=none (the default) nothing is installed, and videos with different step
    counts follow each other (a 2-node Slurm run whose rows had 30 and 2 steps failed every row after the first)."""
    from wan_dist.models.device import placement
    from wan_dist.models.loading import load_models
    from wan_dist.models.registry import get_model
    from wan_dist.pipeline.cache import StepCache
    from wan_dist.pipeline.generator import WanGenerator
    from wan_dist.pipeline.request import build_request
    spec, ck = get_model(MODEL), tiny_ckpt(MODEL)
    cfg = compose([f"model={MODEL}", f"ckpt_dir={ck}", "prompt=x", *BASE[:3]])
    place = placement(device="cpu", dtype="fp32", t5_dtype="fp32", vae_dtype="fp32", t5_cpu=False,
                      offload_model=False)
    models = load_models(spec, ck, place)
    gen = WanGenerator(models, place, boundary=cfg.model.boundary, step_cache=StepCache(models.dits, pinned=True))
    for n in (6, 2, 6):
        res = gen.generate(build_request(cfg, spec, {"prompt": "a cat", "steps": n, "seed": 5}, f"r{n}"))
        assert res.denoise.cache["method"] == "none"
        assert sum(c["dit_calls"] for c in res.denoise.cache["experts"].values()) == 2 * n


def test_a_cache_switched_off_elsewhere_is_switched_on_again(tiny_ckpt):
    """Two generators over the same loaded DiTs (bench/speed.py does this): each video gets its own generator's
    cache, whatever the other one did to the shared models in between."""
    from wan_dist.models.device import placement
    from wan_dist.models.loading import load_models
    from wan_dist.models.registry import get_model
    from wan_dist.pipeline.cache import CacheSetting, StepCache
    from wan_dist.pipeline.generator import WanGenerator
    from wan_dist.pipeline.request import build_request
    spec, ck = get_model(MODEL), tiny_ckpt(MODEL)
    cfg = compose([f"model={MODEL}", f"ckpt_dir={ck}", "prompt=x", *BASE[:3]])
    place = placement(device="cpu", dtype="fp32", t5_dtype="fp32", vae_dtype="fp32", t5_cpu=False,
                      offload_model=False)
    models = load_models(spec, ck, place)
    gens = {m: WanGenerator(models, place, boundary=cfg.model.boundary, step_cache=StepCache(models.dits),
                            cache_base=CacheSetting()) for m in ("first_block", "none")}
    req = {m: build_request(cfg, spec, {"prompt": "a cat", "steps": 8, "seed": 5, "cache": m,
                                        "cache_threshold": 0.3}, m) for m in gens}
    first = gens["first_block"].generate(req["first_block"])
    plain = gens["none"].generate(req["none"])
    again = gens["first_block"].generate(req["first_block"])
    assert first.denoise.cache == again.denoise.cache and torch.equal(first.latents, again.latents)
    assert sum(c["blocks_skipped"] for c in again.denoise.cache["experts"].values()) > 0
    assert not torch.equal(plain.latents, again.latents)


@pytest.mark.slow
def test_compile_regional_is_its_own_stage(tiny_ckpt, tmp_path):
    """Compiling happens at load time (the `compile` stage of the first video, run.compile_s): no graph is
    compiled while the videos are made, and the compiled blocks give the eager result."""
    import torch._dynamo.utils as dynamo_utils
    man = tmp_path / "rows.csv"
    man.write_text("id,prompt,seed\na,a cat,1\nb,a dog,2\n")
    eager = _run(tiny_ckpt("tiny-t2v"), tmp_path / "eager", man, [], "tiny-t2v")
    graphs = []

    from wan_dist.pipeline import generator as gen_mod
    real = gen_mod.WanGenerator.generate

    def counting(self, *a, **k):
        before = dynamo_utils.counters["stats"]["unique_graphs"]
        out = real(self, *a, **k)
        graphs.append(dynamo_utils.counters["stats"]["unique_graphs"] - before)
        return out
    gen_mod.WanGenerator.generate = counting
    try:
        comp = _run(tiny_ckpt("tiny-t2v"), tmp_path / "comp", man, ["compile=regional"], "tiny-t2v")
    finally:
        gen_mod.WanGenerator.generate = real
    assert graphs == [0, 0]                                  # nothing compiled inside a video
    assert comp["a"]["run"]["compile_s"] > 0 and comp["a"]["run"]["compile_targets"] == "blocks"
    first, second = sorted(comp.values(), key=lambda s: s["timings"]["compile"], reverse=True)
    assert first["timings"]["compile"] == comp["a"]["run"]["compile_s"] and second["timings"]["compile"] == 0
    assert first["timings"]["total"] >= first["timings"]["compile"] + first["timings"]["denoise"]
    for item in ("a", "b"):
        assert (_lat(tmp_path / "comp", item) - _lat(tmp_path / "eager", item)).abs().max().item() <= 1e-4
    assert all(s["timings"]["compile"] == 0 for s in eager.values())


# -- configuration and layout rules (no model work) ---------------------------------------------------------------
def _cfg(tiny_ckpt, *extra):
    source = [] if any(x.startswith("manifest=") for x in extra) else ["prompt=a cat"]
    return compose(["model=tiny-t2v", f"ckpt_dir={tiny_ckpt('tiny-t2v')}", *source, "sample.size=32*32",
                    "sample.frame_num=13", *extra])


@pytest.mark.parametrize("extra,message", [
    (["sample.cache=fast"], "sample.cache='fast': must be one of none, first_block, mag, taylorseer"),
    (["sample.cache=mag"], "sample.cache='mag': MagCache needs per-expert magnitude ratios"),
    (["sample.cache=taylorseer", "sample.cache_calibrate=true"], "sample.cache_calibrate=true: measures the"),
    (["sample.cache_threshold=-1"], "sample.cache_threshold=-1.0: must be >= 0.0"),
    (["sample.cache_interval=0"], "sample.cache_interval=0: must be >= 1"),
    (["sample.cfg_batch=true", "parallel.cfg=2"], "sample.cfg_batch=true: with parallel.cfg=2"),
    (["compile=max"], "compile='max': must be one of none, regional"),
])
def test_speed_config_errors(tiny_ckpt, extra, message):
    with pytest.raises(ValueError, match=None) as e:
        _cfg(tiny_ckpt, *extra)
    assert message in str(e.value)


@pytest.mark.parametrize("extra,world,message", [
    (["parallel.ulysses=2", "sample.cache=first_block"], 2, "sample.cache='first_block': under parallel.ulysses=2"),
    (["parallel.ring=2", "attention_backend=native"], 2,
     "attention_backend='native': parallel.ring=2 merges partial attention with the log-sum-exp"),
    (["attention_backend=_native_cudnn"], 1, "attention_backend='_native_cudnn': runs on GPUs only"),
    (["attention_backend=flash"], 1, "attention_backend='flash': not usable in this environment"),
    (["attention_backend=fast"], 1, "attention_backend='fast': unknown attention backend"),
    (["parallel.ulysses=2", "attention_backend=_native_math"], 2,
     "attention_backend='_native_math': does not support context parallelism"),
])
def test_layout_rules_of_the_speed_options(tiny_ckpt, extra, world, message):
    from wan_dist.distributed.layout import check_layout
    with pytest.raises(ValueError) as e:
        check_layout(_cfg(tiny_ckpt, "device=cpu", *extra), world)
    assert message in str(e.value)


def test_ring_on_cpu_resolves_to_the_project_lse_backend(tiny_ckpt):
    from wan_dist.distributed.layout import check_layout
    from wan_dist.models.attention import CPU_LSE, resolve_backend
    assert check_layout(_cfg(tiny_ckpt, "device=cpu", "parallel.ring=2"), 2).ring == 2
    assert resolve_backend("auto", torch.device("cpu"), ring=2) == CPU_LSE
    assert resolve_backend("auto", torch.device("cpu"), ulysses=2) == "native"
    assert resolve_backend("auto", torch.device("cuda"), ring=2) == "_native_cudnn"
    for name in ("flex", "_native_math", CPU_LSE):
        assert resolve_backend(name, torch.device("cpu")) == name
    with pytest.raises(ValueError, match="does not run on CUDA tensors"):
        resolve_backend(CPU_LSE, torch.device("cuda"))


def test_cpu_lse_backend_equals_native_attention():
    """The project backend, with and without the log-sum-exp, against plain SDPA (the CPU `native` backend)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry
    from wan_dist.models.attention import WanDistBackend, register_cpu_lse_backend
    register_cpu_lse_backend()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 24, 4, 16, generator=g) for _ in range(3))           # [B, S, H, D]
    ref = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    fn = _AttentionBackendRegistry._backends[WanDistBackend.CPU_FLASH_LSE]
    out = fn(q, k, v)
    out2, lse = fn(q, k, v, return_lse=True)
    assert (out - ref).abs().max().item() <= 1e-6 and (out2 - ref).abs().max().item() <= 1e-6
    scores = torch.einsum("bshd,bthd->bhst", q, k) / 4.0                              # D ** 0.5 = 4
    assert (lse - torch.logsumexp(scores, dim=-1).transpose(1, 2)).abs().max().item() <= 1e-5   # [B, S, H]


def test_manifest_rows_choose_their_cache(tiny_ckpt, tmp_path):
    """`cache` and `cache_threshold` are manifest columns; a bad value is a row error before any model work, and
    under Ulysses the method is fixed per run."""
    from wan_dist.distributed.layout import check_items, resolve_layout
    from wan_dist.models.registry import get_model
    from wan_dist.batch.manifest import load_items
    man = tmp_path / "m.csv"
    man.write_text("id,prompt,cache,cache_threshold\na,x,first_block,0.2\nb,y,,\n")
    cfg = _cfg(tiny_ckpt, f"manifest={man}")
    items = load_items(str(man), cfg, get_model("tiny-t2v"))
    assert [(i.request.cache, i.request.cache_threshold) for i in items] == [("first_block", 0.2), ("none", None)]
    with pytest.raises(ValueError, match="manifest row a cache='first_block': under parallel.ulysses=2"):
        check_items([i.request for i in items], get_model("tiny-t2v"),
                    resolve_layout(_cfg(tiny_ckpt, "parallel.ulysses=2"), 2), run_cache="none")
    man.write_text("id,prompt,cache\na,x,turbo\n")
    with pytest.raises(ValueError, match="cache='turbo': must be one of"):
        load_items(str(man), cfg, get_model("tiny-t2v"))


@pytest.mark.slow
def test_gpu_bench_script_plans_and_runs_its_code_path_on_cpu(tmp_path):
    """bench/gpu.sh cannot be measured without a GPU here: its plan is listed (--dry-run) and its measuring code runs
    on CPU with tiny widths (--cpu-smoke), so a broken script is found before a GPU machine is booked for it."""
    import os
    import subprocess
    import sys
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PY=sys.executable, OMP_NUM_THREADS="1")
    plan = subprocess.run(["bash", "bench/gpu.sh", "--dry-run"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=120)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "backend t2v-1.3B 1280*720x81 (75600 tokens) _native_cudnn" in plan.stdout
    assert "39 measurements planned" in plan.stdout
    smoke = subprocess.run(["bash", "bench/gpu.sh", "--cpu-smoke", "--kinds", "tolerance,cfg_batch,cache",
                            "--models", "t2v-1.3B", "--out", str(tmp_path)], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=300)
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    rows = {r["what"]: r for r in json.loads((tmp_path / "gpu.json").read_text())["results"]}
    assert len(rows) == 5 and not any("error" in r or "skipped" in r for r in rows.values()), rows
    assert rows["cache t2v-1.3B 64*64x5 (32 tokens) mag"]["blocks"] == "16/40"      # 10 steps x 2 passes x 2 blocks
    assert all(r["s_per_step"] > 0 for r in rows.values() if r["kind"] != "tolerance")

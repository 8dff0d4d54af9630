"""Sweeps that work: job directories named by the swept keys only (slashes in out_dir / ckpt_dir never leak into
them), a rejected job leaves nothing and makes the sweep exit non-zero with the failures listed, one model load per
process for a whole sweep over sampling settings (also under torchrun, where the process group and meshes survive
between jobs, and a layout change reloads), `wan-dist report` and `wan-dist compare` on the sweep directory (compare's
numbers against a direct computation), the W&B group of a sweep, and the pinned experiments.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
WAN_DIST = Path(sys.executable).with_name("wan-dist")
FAST = ["sample.steps=4", "sample.frame_num=5", "sample.size=32*32", "batch.progress=false"]
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}, "OMP_NUM_THREADS": "1",
       "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}
OK_JOBS = ["0_sample.cfg_truncate_keep=uncond,sample.cfg_truncate_steps=0",
           "1_sample.cfg_truncate_keep=cond,sample.cfg_truncate_steps=0",
           "2_sample.cfg_truncate_keep=uncond,sample.cfg_truncate_steps=1",
           "3_sample.cfg_truncate_keep=cond,sample.cfg_truncate_steps=1"]
BAD_JOBS = ["4_sample.cfg_truncate_keep=uncond,sample.cfg_truncate_steps=9",
            "5_sample.cfg_truncate_keep=cond,sample.cfg_truncate_steps=9"]


def sidecars(d: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((d / "videos").glob("*.json"))}


@pytest.fixture(scope="module")
def sweep(tiny_ckpt, tmp_path_factory):
    """The README's sweep, as a new user types it: a nested out_dir (slashes), an absolute ckpt_dir, a manifest path;
    truncation 9 is more than the low-noise window holds, so its two jobs are rejected."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "prompts").mkdir()
    m = root / "prompts" / "p.csv"
    m.write_text("id,prompt,seed\ncat,a cat,1\ndog,a dog on a skateboard,2\n")
    out = root / "runs" / "a14b" / "sweep"
    args = [sys.executable, "launch/run.py", "-m", "model=tiny-t2v-moe", f"ckpt_dir={tiny_ckpt('tiny-t2v-moe')}",
            f"manifest={m}", f"out_dir={out}", *FAST, "output.save_latents=true", "output.lossless=true",
            "logger=wandb", "sample.cfg_truncate_steps=0,1,9", "sample.cfg_truncate_keep=uncond,cond"]
    p = subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    return p, out


@pytest.mark.slow
def test_sweep_dirs_exit_code_and_failures_listed(sweep):
    p, out = sweep
    log = p.stdout + p.stderr
    assert p.returncode == 2, log[-4000:]                    # the worst job: a user error
    assert sorted(x.name for x in out.iterdir() if x.is_dir()) == OK_JOBS   # nothing nested, nothing for 4 and 5
    assert sorted(x.name for x in out.iterdir() if x.is_file()) == ["multirun.yaml"]
    assert f"sweep: 2 of 6 job(s) failed: {BAD_JOBS[0]}, {BAD_JOBS[1]}" in log, log[-3000:]
    for name in OK_JOBS:
        assert f"  {name}: exit 0 (every item ok)" in log
        assert sorted(sidecars(out / name)) == ["cat", "dog"]
    assert "cfg_truncate_steps=9: must be between 0 and 1" in log and "Traceback" not in log


@pytest.mark.slow
def test_sweep_loads_the_models_once(sweep):
    _, out = sweep
    seen = []
    for name in OK_JOBS:
        for sc in sidecars(out / name).values():
            eng = sc["run"]["engine"]
            assert eng["loads"] == 1                          # one load in the process for the whole sweep
            seen.append((name, sc["id"], eng["reused"], sc["timings"]["model_load"] > 0))
    assert [s for s in seen if not s[2]] == [(OK_JOBS[0], "cat", False, True), (OK_JOBS[0], "dog", False, False)]
    assert sum(s[3] for s in seen) == 1                      # the load is charged to one video only


@pytest.mark.slow
def test_sweep_wandb_runs_share_the_sweeps_group(sweep):
    from wan_dist.observability.wandb_sink import read_offline_records
    _, out = sweep
    groups = {}
    for name in OK_JOBS:
        (f,) = (out / name / "wandb").glob("offline-run-*/run-*.wandb")
        runs = [r.run for r in read_offline_records(f) if r.WhichOneof("record_type") == "run"]
        groups[name] = (runs[0].run_group, runs[0].display_name)
    assert groups == {n: ("sweep", n) for n in OK_JOBS}


@pytest.mark.slow
def test_report_finds_every_job(sweep):
    from wan_dist.cli import main
    _, out = sweep
    assert main(["report", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO((out / "report" / "videos.csv").read_text())))
    assert sorted((r["setting"], r["id"]) for r in rows) == sorted((n, i) for n in OK_JOBS for i in ("cat", "dog"))
    assert "swept: cfg_truncate_steps, cfg_truncate_keep" in (out / "report" / "report.md").read_text()


def gaussian_window(size=11, sigma=1.5) -> np.ndarray:
    g = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma ** 2))
    g /= g.sum()
    return np.outer(g, g)


def ssim_direct(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of one RGB uint8 frame pair (Wang et al. 2004: 11x11 Gaussian, sigma 1.5, K1 .01, K2 .03, L 255),
    borders reflect-padded, averaged over channels and pixels; written out with numpy."""
    from numpy.lib.stride_tricks import sliding_window_view
    w = gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for c in range(3):
        x = np.pad(a[..., c].astype(np.float64), 5, mode="reflect")
        y = np.pad(b[..., c].astype(np.float64), 5, mode="reflect")

        def filt(img):
            return np.einsum("ijkl,kl->ij", sliding_window_view(img, (11, 11)), w)
        mx, my = filt(x), filt(y)
        sxx, syy, sxy = filt(x * x) - mx ** 2, filt(y * y) - my ** 2, filt(x * y) - mx * my
        vals.append(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2)))
    return float(np.mean(vals))


@pytest.mark.slow
def test_compare_numbers_equal_a_direct_computation(sweep):
    from wan_dist.batch.extras import load_latents
    from wan_dist.cli import main
    from wan_dist.pipeline.video_io import read_mp4
    from wan_dist.observability.wandb_sink import offline_history
    _, out = sweep
    assert main(["compare", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO((out / "compare" / "compare_videos.csv").read_text())))
    assert sorted((r["setting"], r["id"]) for r in rows) == sorted((n, i) for n in OK_JOBS for i in ("cat", "dog"))
    first = sidecars(out / OK_JOBS[0])
    for r in rows:
        # truncation 0: the earliest job, or the next one (keep=cond, no window) for the process's first video,
        # which carries the one-time warm-up
        base_name = OK_JOBS[1] if first[r["id"]]["timings"]["model_load"] > 0 else OK_JOBS[0]
        sc, b = sidecars(out / r["setting"])[r["id"]], sidecars(out / base_name)[r["id"]]
        assert r["baseline"] == base_name and r["warmup"] == str(r["setting"] == OK_JOBS[0] and r["id"] == "cat")
        fw, bfw = sum(sc["forwards"].values()), sum(b["forwards"].values())
        assert int(r["forwards_skipped"]) == bfw - fw == sc["cfg_truncate_steps"]
        saved = b["timings"]["denoise"] - sc["timings"]["denoise"]
        assert float(r["denoise_saved_s"]) == pytest.approx(saved, abs=2e-6)
        tot = (b["timings"]["total"] - b["timings"]["model_load"]) - (sc["timings"]["total"]
                                                                        - sc["timings"]["model_load"])
        assert float(r["total_saved_s"]) == pytest.approx(tot, abs=2e-6)
        fa = read_mp4(out / r["setting"] / sc["outputs"]["mp4"])
        fb = read_mp4(out / base_name / b["outputs"]["mp4"])
        mse = ((fa.astype(np.float64) - fb.astype(np.float64)) ** 2).reshape(len(fa), -1).mean(axis=1)
        psnr = [math.inf if m == 0 else 10 * math.log10(255 ** 2 / m) for m in mse]
        assert r["frames_source"] == "mp4 lossless" and r["frames_exact"] == "True"
        if math.isinf(float(r["psnr_db"])):
            assert all(math.isinf(x) for x in psnr) and float(r["ssim"]) == 1.0
        else:
            assert float(r["psnr_db"]) == pytest.approx(float(np.mean(psnr)), rel=1e-5)
        ssim = np.mean([ssim_direct(x, y) for x, y in zip(fa, fb)])
        assert float(r["ssim"]) == pytest.approx(ssim, abs=1e-4)
        la = load_latents(out / r["setting"] / sc["outputs"]["latents"])[0].double()
        lb = load_latents(out / base_name / b["outputs"]["latents"])[0].double()
        assert float(r["latent_rel_l2"]) == pytest.approx(float((la - lb).norm() / lb.norm()), rel=1e-6, abs=1e-12)
        cos = float((la * lb).sum() / (la.norm() * lb.norm()))
        assert float(r["latent_cosine"]) == pytest.approx(cos, rel=1e-9)
        # the keep=cond baseline job (no window) is the same video; a truncated setting is not
        assert (r["setting"] in OK_JOBS[:2]) == (float(r["latent_rel_l2"]) == 0.0)
    per = {r["setting"]: r for r in csv.DictReader(io.StringIO((out / "compare" / "compare.csv").read_text()))}
    assert float(per[OK_JOBS[2]]["forwards_skipped_pct"]) == pytest.approx(100 * 2 / 16)
    assert per[OK_JOBS[1]]["identical"] == "2" and per[OK_JOBS[1]]["psnr_db"] == "inf"
    png = (out / "compare" / "time_vs_fidelity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # logger=wandb: one comparison run in the sweep's group, offline under the sweep directory
    (f,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    (h,) = [h for h in offline_history(f) if "comparison.nrows" in h]
    assert h["comparison.nrows"] == len(OK_JOBS) and h["comparison._type"] == "table-file"
    (tf,) = (f.parent / "files" / "media" / "table").glob("comparison_*.table.json")
    table = json.loads(tf.read_text())
    assert [r[table["columns"].index("setting")] for r in table["data"]] == OK_JOBS
    (run,) = [r.run for r in __import__("wan_dist.observability.wandb_sink", fromlist=["x"]).read_offline_records(f)
              if r.WhichOneof("record_type") == "run"]
    assert run.run_group == "sweep" and run.display_name == "sweep-compare"


# -- in-process: the engine cache, the job directory names, the experiments ------------------------------------
def test_engine_cache_loads_once_per_model_setting(tiny_ckpt, tmp_path, monkeypatch):
    import wan_dist.worker as worker
    from wan_dist.config import compose
    loads = []
    real = worker.load_models
    monkeypatch.setattr(worker, "load_models", lambda *a, **k: loads.append(1) or real(*a, **k))
    cache = worker.EngineCache()
    base = ["model=tiny-t2v", f"ckpt_dir={tiny_ckpt('tiny-t2v')}", "prompt=a cat", "sample.steps=2",
            "sample.frame_num=5", "sample.size=32*32", "batch.progress=false"]
    sampling = [["sample.cfg_truncate_steps=1"], ["sample.cfg_truncate_keep=cond", "sample.cfg_truncate_steps=2"],
                ["sample.steps=3", "sample.guide_scale=3.0", "sample.seed=5", "sample.shift=3.0"]]
    for k, extra in enumerate(sampling):
        assert worker.run(compose(base + [f"out_dir={tmp_path / f's{k}'}", *extra]), engines=cache) == 0
    assert len(loads) == 1 and cache.loads == 1             # sampling settings only: one load
    assert worker.run(compose(base + [f"out_dir={tmp_path / 'cpu'}", "t5_cpu=true", "dtype=fp32"]),
                      engines=cache) == 0
    assert len(loads) == 1                                   # on CPU: the same resolved placement
    assert worker.run(compose(base + [f"out_dir={tmp_path / 'bf16'}", "t5_dtype=bf16"]), engines=cache) == 0
    assert worker.run(compose(base + [f"out_dir={tmp_path / 'again'}"]), engines=cache) == 0
    assert len(loads) == 3 and cache.loads == 3              # a dtype change reloads; one engine kept at a time
    (first,), (reused,) = sidecars(tmp_path / "s0").values(), sidecars(tmp_path / "s2").values()
    assert first["run"]["engine"] == {"reused": False, "loads": 1, "loaded_s": first["run"]["model_load_s"]}
    assert first["timings"]["model_load"] > 0 and reused["timings"]["model_load"] == 0
    assert reused["run"]["engine"] == {"reused": True, "loads": 1, "loaded_s": first["run"]["model_load_s"]}
    assert reused["run"]["model_load_s"] == 0
    # a speed setting fixed at load (cfg_batch picks the guidance executor) reloads; the same one again reuses
    for name in ("batched", "batched-again"):
        assert worker.run(compose(base + [f"out_dir={tmp_path / name}", "sample.cfg_batch=true"]), engines=cache) == 0
    assert len(loads) == 4 and cache.loads == 4
    assert worker.run(compose(base + [f"out_dir={tmp_path / 'plain'}"]), engines=cache) == 0
    assert len(loads) == 5
    cache.drop()


def test_job_dir_names_hold_only_the_swept_keys():
    from wan_dist.entry import job_dir_name, sweep_keys
    argv = ["out_dir=runs/a/b", "ckpt_dir=/ckpt/Wan2.2 T2V", "manifest=../p.csv", "model=t2v-A14B",
            "sample.cfg_truncate_steps=0,3", "sample.size=1280*720,832*480", "prompt=a,b"]
    swept = sweep_keys(argv)
    assert swept == {"sample.cfg_truncate_steps", "sample.size", "prompt"}
    job = ["out_dir=runs/a/b", "ckpt_dir=/ckpt/Wan2.2 T2V", "manifest=../p.csv", "model=t2v-A14B",
           "sample.cfg_truncate_steps=3", "sample.size=1280*720", "prompt=a"]
    assert job_dir_name(7, job, swept) == "7_sample.cfg_truncate_steps=3,sample.size=1280_720"
    assert job_dir_name(0, ["out_dir=x/y"], {"out_dir"}) == "0_base"
    long = job_dir_name(1, ["sample.negative_prompt=" + "x/" * 200], {"sample.negative_prompt"})
    assert len(long) <= 152 and "/" not in long and long.startswith("1_sample.negative_prompt=x_x_")


@pytest.mark.parametrize("experiment,models,keys", [
    ("cfg_truncation", ("t2v-A14B", "i2v-A14B"),
     {"sample.cfg_truncate_steps": "0,3,5,8", "sample.cfg_truncate_high_noise_steps": "0,2,3,5",
      "sample.cfg_truncate_keep": "uncond,cond"}),
    ("cfg_truncation_single", ("t2v-1.3B", "t2v-14B", "ti2v-5B"),
     {"sample.cfg_truncate_steps": "0,3,5,8", "sample.cfg_truncate_keep": "uncond,cond"}),
])
def test_experiments_pin_the_seeds_values_and_each_job_is_valid(experiment, models, keys):
    import dataclasses
    import itertools

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from wan_dist.config import CONF_DIR, compose
    from wan_dist.models.registry import get_model
    from wan_dist.pipeline.request import build_request
    for model in models:
        over = [f"experiment={experiment}", f"model={model}", "ckpt_dir=/x", "prompt=a cat"]
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            hc = hydra_compose("config", overrides=over, return_hydra_config=True).hydra
        assert OmegaConf.to_container(hc.sweeper.params) == keys and str(hc.mode) == "RunMode.MULTIRUN"
        cfg = compose(over)
        assert cfg.output.save_latents
        spec = get_model(model)
        row = {"prompt": "a cat", "image": "/x.png" if spec.image == "required" else None}
        values = [[(k.split(".")[1], int(v) if v.isdigit() else v) for v in vs.split(",")] for k, vs in keys.items()]
        for combo in itertools.product(*values):             # every job of the sweep passes validation
            build_request(dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, **dict(combo))), spec,
                          row, "x")


@pytest.mark.slow
def test_torchrun_sweep_keeps_the_group_and_reloads_on_a_layout_change(tiny_ckpt, tmp_path):
    """2 ranks, 4 jobs: cfg=1 (two replicas) then cfg=2 (one replica, CFG-parallel), truncation 0 and 1. The process
    group survives between jobs, each process loads twice (once per layout), and the same seed gives the same video
    on both layouts."""
    m = tmp_path / "p.csv"
    m.write_text("id,prompt,seed\nr0,a cat,3\nr1,a dog,4\n")
    out = tmp_path / "tr"
    args = [str(WAN_DIST), "torchrun", "--standalone", "--nproc_per_node", "2", "launch/run.py", "-m",
            "model=tiny-t2v", f"ckpt_dir={tiny_ckpt('tiny-t2v')}", f"manifest={m}", f"out_dir={out}", *FAST,
            "sample.steps=3", "output.save_latents=true", "parallel.cfg=1,2", "sample.cfg_truncate_steps=0,1"]
    p = subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    names = sorted((x.name for x in out.iterdir() if x.is_dir()), key=lambda n: int(n.split("_")[0]))
    assert names == ["0_parallel.cfg=1,sample.cfg_truncate_steps=0", "1_parallel.cfg=1,sample.cfg_truncate_steps=1",
                     "2_parallel.cfg=2,sample.cfg_truncate_steps=0", "3_parallel.cfg=2,sample.cfg_truncate_steps=1"]
    engines = [[sc["run"]["engine"] for sc in sidecars(out / n).values()] for n in names]
    # cfg=1: the two replicas each make one row (their own process); cfg=2: rank 0 writes both rows
    assert [[(e["loads"], e["reused"]) for e in job] for job in engines] == [
        [(1, False)] * 2, [(1, True)] * 2, [(2, False)] * 2, [(2, True)] * 2]
    from wan_dist.batch.extras import load_latents
    for trunc in (0, 1):
        for rid in ("r0", "r1"):
            a = load_latents(out / names[trunc] / "videos" / f"{rid}.latents.safetensors")[0]
            b = load_latents(out / names[2 + trunc] / "videos" / f"{rid}.latents.safetensors")[0]
            assert (a - b).abs().max().item() <= 1e-5
    assert torch.is_tensor(a)

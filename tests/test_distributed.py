"""Distributed layouts on CPU/gloo, 2 processes (torchrun --standalone: a free port, never a fixed one).

For each tiny model, the latents and decoded frames of fsdp (across the cfg halves), ulysses=2, cfg=2, dp=2 and
fsdp+ulysses=2 equal the single-process result (max |d| <= 1e-5 in fp32 latents), with one CFG-truncated step per
video in the default keep mode (uncond: the cond half idles); for the MoE model also cfg=2 and fsdp with
keep=cond (the uncond half idles). All 23 runs share ONE torchrun launch (tests/dist_worker.py) to keep the
start-up cost at ~5 s. Plus: uneven splits never hang (3 rows on 2 replicas here, 1 row on 4 replicas in a
4-process launch), several writers keep results.jsonl whole, and a bad layout exits with code 2 before any process
group exists.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MODELS = ("tiny-t2v", "tiny-ti2v", "tiny-t2v-moe", "tiny-i2v-moe")
LAYOUTS = {
    "fsdp": ["parallel.cfg=2", "parallel.fsdp=true"],           # FSDP across both cfg halves (shadow forwards)
    "ulysses": ["parallel.ulysses=2"],
    "cfg": ["parallel.cfg=2"],
    "dp": [],                                                   # dp=-1 -> 2 replicas
    "fsdp_ulysses": ["parallel.ulysses=2", "parallel.fsdp=true"],
}
COMMON = ["sample.steps=3", "sample.frame_num=13", "sample.size=32*32", "sample.cfg_truncate_steps=1",
          "batch.progress=false"]
# keep=cond on the tiny MoE model: the other half idles (compared with a single-process keep=cond run)
KEEP_COND = {"cfg_keep_cond": LAYOUTS["cfg"], "fsdp_keep_cond": LAYOUTS["fsdp"]}
LATENT_TOL = 1e-5
VIDEO_TOL = 1e-4


def torchrun(nproc: int, args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), WANDB_MODE="offline")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def manifest(tmp: Path, model: str, image: Path, rows: int = 2) -> Path:
    img = str(image) if model == "tiny-i2v-moe" else ""
    lines = ["id,prompt,seed,image"] + [f"r{i},a cat number {i} on the beach,{11 + i},{img}" for i in range(rows)]
    p = tmp / f"{model}-{rows}.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


def overrides(model, ckpt, man, out) -> list[str]:
    return [f"model={model}", f"ckpt_dir={ckpt}", f"manifest={man}", f"out_dir={out}", *COMMON]


@pytest.fixture(scope="module")
def layout_runs(tiny_ckpt, test_image, tmp_path_factory):
    from wan_dist import config as config_mod
    from wan_dist.distributed.parallelize import DUMP_ENV
    from wan_dist.worker import run
    tmp = tmp_path_factory.mktemp("dist")
    runs, refs = [], {}
    for model in MODELS:
        ckpt = tiny_ckpt(model)
        man = manifest(tmp, model, test_image)
        ref = tmp / f"ref-{model}"
        os.environ[DUMP_ENV] = str(ref)    # single process: the same worker.run, only the dump hook added
        try:
            assert run(config_mod.compose(overrides(model, ckpt, man, tmp / f"out-ref-{model}"))) == 0
        finally:
            del os.environ[DUMP_ENV]
        refs[model] = [torch.load(ref / f"rank0_{k}.pt") for k in range(2)]
        for name, extra in LAYOUTS.items():
            runs.append({"model": model, "layout": name, "dump": str(tmp / f"dump-{model}-{name}"),
                         "out": str(tmp / f"out-{model}-{name}"),
                         "overrides": overrides(model, ckpt, man, tmp / f"out-{model}-{name}") + extra})
    model, ckpt = "tiny-t2v-moe", tiny_ckpt("tiny-t2v-moe")
    man = manifest(tmp, model, test_image)
    ref = tmp / "ref-keep-cond"
    os.environ[DUMP_ENV] = str(ref)
    try:
        assert run(config_mod.compose(overrides(model, ckpt, man, tmp / "out-ref-keep-cond")
                                      + ["sample.cfg_truncate_keep=cond"])) == 0
    finally:
        del os.environ[DUMP_ENV]
    refs["keep_cond"] = [torch.load(ref / f"rank0_{k}.pt") for k in range(2)]
    for name, extra in KEEP_COND.items():
        runs.append({"model": model, "layout": name, "dump": str(tmp / f"dump-{name}"), "out": str(tmp / f"out-{name}"),
                     "overrides": overrides(model, ckpt, man, tmp / f"out-{name}") + extra
                     + ["sample.cfg_truncate_keep=cond"]})
    # uneven split: 3 rows over 2 replicas
    man3 = manifest(tmp, "tiny-t2v", test_image, rows=3)
    runs.append({"model": "tiny-t2v", "layout": "dp3", "dump": str(tmp / "dump-dp3"), "out": str(tmp / "out-dp3"),
                 "overrides": overrides("tiny-t2v", tiny_ckpt("tiny-t2v"), man3, tmp / "out-dp3")})
    spec = tmp / "runs.json"
    spec.write_text(json.dumps(runs))
    proc = torchrun(2, ["tests/dist_worker.py", str(spec)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return runs, refs


def _dumps(run) -> dict[tuple[int, int], dict]:
    d = Path(run["dump"])
    return {(int(p.stem[4:].split("_")[0]), int(p.stem.split("_")[1])): torch.load(p) for p in d.glob("rank*_*.pt")}


@pytest.mark.parametrize("model,layout", [(m, lay) for m in MODELS for lay in LAYOUTS]
                         + [("tiny-t2v-moe", lay) for lay in KEEP_COND])
def test_layout_matches_single_process(layout_runs, model, layout):
    runs, refs = layout_runs
    run = next(r for r in runs if r["model"] == model and r["layout"] == layout)
    ref_rows = refs["keep_cond" if layout in KEEP_COND else model]
    for rank in (0, 1):
        assert Path(run["dump"], f"rc{rank}").read_text() == "0"
    dumps = _dumps(run)
    # which row each rank decoded: dp=2 deals row r to replica r; otherwise both ranks make both rows in lock-step
    expect = {(0, 0): 0, (1, 0): 1} if layout == "dp" else {(0, 0): 0, (0, 1): 1, (1, 0): 0, (1, 1): 1}
    assert set(dumps) == set(expect)
    for key, row in expect.items():
        got, ref = dumps[key], ref_rows[row]
        assert (got["latents"] - ref["latents"]).abs().max().item() <= LATENT_TOL, (key, layout)
        assert got["video"].shape == ref["video"].shape
        assert (got["video"] - ref["video"]).abs().max().item() <= VIDEO_TOL, (key, layout)
        if layout in ("cfg", "fsdp", *KEEP_COND):
            # one truncated step per video: the half whose pass is not kept idled (cumulative over the run)
            idle = got["describe"]["cfg_idle_by_half"]
            assert got["describe"]["cfg"] == 2 and got["describe"]["cfg_idle_steps"] == row + 1
            assert idle == ({"cond": 0, "uncond": row + 1} if layout in KEEP_COND else {"cond": row + 1, "uncond": 0})
    ledger = [json.loads(line) for line in Path(run["out"], "results.jsonl").read_text().splitlines()]
    assert sorted(x["id"] for x in ledger) == ["r0", "r1"] and all(x["status"] == "ok" for x in ledger)
    writers = {x["writer"] for x in ledger}            # one ledger file per writer: one per replica
    assert len(writers) == (2 if layout == "dp" else 1)
    assert sorted(p.stem for p in Path(run["out"], "ledger").glob("*.jsonl")) == sorted(writers)


def test_uneven_three_rows_on_two_replicas(layout_runs):
    runs, _ = layout_runs
    run = next(r for r in runs if r["layout"] == "dp3")
    assert set(_dumps(run)) == {(0, 0), (0, 1), (1, 0)}       # replica 0: rows 0 and 2; replica 1: row 1
    ledger = [json.loads(line) for line in Path(run["out"], "results.jsonl").read_text().splitlines()]
    assert sorted(x["id"] for x in ledger) == ["r0", "r1", "r2"]


def test_one_row_on_four_replicas(tiny_ckpt, test_image, tmp_path):
    man = manifest(tmp_path, "tiny-t2v", test_image, rows=1)
    out = tmp_path / "out"
    proc = torchrun(4, ["launch/run.py", *overrides("tiny-t2v", tiny_ckpt("tiny-t2v"), man, out),
                        "sample.steps=2"], timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ledger = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [x["id"] for x in ledger] == ["r0"] and ledger[0]["status"] == "ok"


def test_bad_layout_exits_before_process_group(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    proc = torchrun(2, ["launch/run.py", "model=tiny-t2v", f"ckpt_dir={tiny_ckpt('tiny-t2v')}", "prompt=a cat",
                        f"out_dir={out}", "parallel.dp=3"], timeout=120)
    assert proc.returncode != 0
    assert "parallel.dp=3" in proc.stderr and "must equal the world size 2" in proc.stderr
    assert not out.exists()                                    # nothing written, no model loaded
    assert "mesh {" not in proc.stderr                          # no mesh was built

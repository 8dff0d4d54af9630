"""A Hydra sweep loads the models once per process: a 4-setting CFG-truncation sweep on a tiny model, as the README
runs it (`launch/run.py -m ... sample.cfg_truncate_steps=0,1,2,3`), against the ideal "one load + the inference of
every video" (target: sweep time <= 1.15 x that), and against the same 4 settings as 4 separate processes (each
loading the models: how sweeps ran before).

Sweep time = the sum of the jobs' own wall times the sweep prints (`sweep: 4 job(s) in X s`): from a job's start to
its exit code, so validation, output setup, saving, ledger and the per-job Hydra composition all count; the
process's one-time start-up (interpreter, torch / diffusers / transformers imports: worker.import_libraries when the
Session opens) does not, just as a single run's model_load does not. The process's wall time is reported too. One
load = the sidecars' `run.model_load_s` of the first job; inference = the sum of every video's `inference_s`.

    .venv/bin/python bench/sweep_reuse.py [--prompts 4] [--steps 10]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SETTINGS = (0, 1, 2, 3)


def sidecars(d: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(d.rglob("videos/*.json"))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    from wan_dist.models.tiny import write_tiny_checkpoint
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        ckpt = write_tiny_checkpoint("tiny-t2v-moe", work / "ckpt")
        m = work / "p.csv"
        m.write_text("id,prompt,seed\n" + "".join(f"p{i},a test prompt number {i},{i}\n" for i in range(a.prompts)))
        common = [sys.executable, str(REPO / "launch/run.py"), "model=tiny-t2v-moe", f"ckpt_dir={ckpt}",
                  f"manifest={m}", f"sample.steps={a.steps}", "batch.progress=false", "device=cpu"]
        t0 = time.perf_counter()
        p = subprocess.run(common[:2] + ["-m"] + common[2:] + [f"out_dir={work / 'sweep'}",
                           "sample.cfg_truncate_steps=" + ",".join(map(str, SETTINGS))],
                           env=env, capture_output=True, text=True, check=True)
        sweep_wall = time.perf_counter() - t0
        jobs_s = float(re.search(r"sweep: \d+ job\(s\) in ([0-9.]+) s", p.stderr).group(1))
        scs = sidecars(work / "sweep")
        load = max(sc["run"]["model_load_s"] for sc in scs)
        inference = sum(sc["inference_s"] for sc in scs)
        loads = max(sc["run"]["engine"]["loads"] for sc in scs)
        t0 = time.perf_counter()
        sep_load, sep_inf = 0.0, 0.0
        for n in SETTINGS:
            out = work / f"sep{n}"
            subprocess.run(common + [f"out_dir={out}", f"sample.cfg_truncate_steps={n}"], env=env,
                           capture_output=True, text=True, check=True)
            s = sidecars(out)
            sep_load += max(sc["run"]["model_load_s"] for sc in s)
            sep_inf += sum(sc["inference_s"] for sc in s)
        sep_wall = time.perf_counter() - t0
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
           "model": "tiny-t2v-moe", "settings": len(SETTINGS), "prompts": a.prompts, "steps": a.steps,
           "sweep": {"jobs_s": jobs_s, "process_wall_s": round(sweep_wall, 2), "loads": loads,
                     "one_load_s": round(load, 3), "sum_inference_s": round(inference, 3),
                     "ratio_jobs_over_load_plus_inference": round(jobs_s / (load + inference), 3)},
           "separate_processes": {"wall_s": round(sep_wall, 2), "loads": len(SETTINGS),
                                  "sum_load_s": round(sep_load, 3), "sum_inference_s": round(sep_inf, 3)},
           "speedup_sweep_over_separate_wall": round(sep_wall / sweep_wall, 2)}
    print(json.dumps(res, indent=2))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

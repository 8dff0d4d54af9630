"""Batch scaling on a tiny model (CPU is fine).

1. One batch process over 200 prompts: wall seconds per item over items 1-10, 11-50, 51-200 (per-item overhead must
   stay constant) and host RSS after item 10, 50, 200 (must stay flat: RSS@200 / RSS@10 <= 1.05).
2. 8 prompts in one batch process vs 8 separate one-prompt processes (how the official scripts are used): the
   wall-clock ratio.

    .venv/bin/python bench/batch_scaling.py [--n 200] [--sep 8]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BASE = ["sample.steps=1", "sample.frame_num=5", "sample.size=32*32", "batch.progress=true", "device=cpu"]


def manifest(path: Path, n: int) -> Path:
    path.write_text("id,prompt\n" + "".join(f"p{i:04d},a tiny test prompt number {i}\n" for i in range(n)))
    return path


def scaling(ckpt: Path, work: Path, n: int) -> dict:
    import psutil

    from wan_dist.config import compose
    from wan_dist.worker import main as run_distributed_or_local
    from wan_dist.observability import progress as progress_mod
    proc = psutil.Process()
    marks, ends = {}, []
    orig_end = progress_mod.Progress.item_end

    def item_end(self, ok):
        orig_end(self, ok)
        ends.append(time.perf_counter())
        if len(ends) in (10, 50, n):
            marks[len(ends)] = proc.memory_info().rss

    progress_mod.Progress.item_end = item_end
    progress_mod.Progress.item_start = lambda self, *a: None
    progress_mod.Progress.step = lambda self, *a: None
    try:
        m = manifest(work / f"m{n}.csv", n)
        t0 = time.perf_counter()
        cfg = compose(["model=tiny-t2v", f"ckpt_dir={ckpt}", f"manifest={m}", f"out_dir={work / f'o{n}'}", *BASE])
        rc = run_distributed_or_local(cfg)
        total = time.perf_counter() - t0
    finally:
        progress_mod.Progress.item_end = orig_end
    assert rc == 0, rc
    per = [b - a for a, b in zip(ends, ends[1:])]          # item k: end(k) - end(k-1), k >= 2

    def mean(xs):
        return sum(xs) / len(xs)
    out = {"n": n, "total_s": round(total, 2),
           "s_per_item_2_10": round(mean(per[:9]), 4), "s_per_item_11_50": round(mean(per[9:49]), 4),
           f"s_per_item_51_{n}": round(mean(per[49:]), 4),
           "rss_mib": {k: round(v / 2**20, 1) for k, v in sorted(marks.items())}}
    out["rss_ratio_last_over_10"] = round(marks[n] / marks[10], 4)
    out["per_item_ratio_last_over_first"] = round(out[f"s_per_item_51_{n}"] / out["s_per_item_2_10"], 3)
    return out


def separate_vs_batch(ckpt: Path, work: Path, k: int) -> dict:
    launch = [sys.executable, str(REPO / "launch/run.py"), "model=tiny-t2v", f"ckpt_dir={ckpt}", *BASE]
    m = manifest(work / f"sep{k}.csv", k)
    t0 = time.perf_counter()
    subprocess.run(launch + [f"manifest={m}", f"out_dir={work / 'batch8'}"], check=True, capture_output=True)
    batch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(k):
        one = manifest(work / f"one{i}.csv", 1)
        one.write_text(f"id,prompt\np{i:04d},a tiny test prompt number {i}\n")
        subprocess.run(launch + [f"manifest={one}", f"out_dir={work / f'one{i}'}"], check=True, capture_output=True)
    sep_s = time.perf_counter() - t0
    return {"prompts": k, "one_batch_process_s": round(batch_s, 2), "separate_processes_s": round(sep_s, 2),
            "speedup_batch_over_separate": round(sep_s / batch_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--sep", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    from wan_dist.models.tiny import write_tiny_checkpoint
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        ckpt = write_tiny_checkpoint("tiny-t2v", work / "ckpt")
        res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "settings": BASE,
               "date": time.strftime("%Y-%m-%d"), "scaling": scaling(ckpt, work, a.n),
               "batch_vs_separate": separate_vs_batch(ckpt, work, a.sep)}
    print(json.dumps(res, indent=2))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

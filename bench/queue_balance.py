"""Dynamic queue vs static split on Ray gangs, with a skewed manifest (tiny model, CPU is fine).

Half the rows are heavy (more steps, frames and pixels; the measured heavy/light work ratio is printed, >= 4),
on 2 gangs x 1 rank of a private local Ray. The same job runs twice, side by side:
  dynamic   the Ray queue: a gang leases the next row when it is free (launch/ray_run.py's behaviour)
  static    the same gangs, a fixed split: gang k makes rows i % 2 == k (torchrun's `work.source=static`)
Makespan = first row started .. last row finished, from the ledger times and the sidecars' per-item totals (the
gangs' start-up and model load are the same in both and left out; the job's wall time is printed too). Patterns:
`alternate` (heavy rows at even positions: the static split gives one gang every heavy row) and `shuffle` (a
seeded random order).

    .venv/bin/python bench/queue_balance.py [--rows 16] [--light 2,5,32*32] [--heavy 20,17,64*64] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BASE = ["model=tiny-t2v", "device=cpu", "batch.progress=false",
        "ray.gangs=2", "ray.gpus_per_rank=0", "ray.cpus_per_rank=1"]


def manifest(path: Path, n: int, light: str, heavy: str, pattern: str) -> tuple[Path, set]:
    """light / heavy: 'steps,frame_num,size' of the two kinds of rows (manifest columns override the config)."""
    kinds = [heavy if i % 2 == 0 else light for i in range(n)]
    if pattern == "shuffle":
        random.Random(0).shuffle(kinds)
    path.write_text("id,prompt,steps,frame_num,size\n" + "".join(f"q{i:03d},a tiny test prompt {i},{k}\n"
                                                                  for i, k in enumerate(kinds)))
    return path, {f"q{i:03d}" for i, k in enumerate(kinds) if k == heavy}


def measure(out: Path) -> dict:
    """Makespan and per-row work from the ledger (t_ns at the ok line) and the sidecars (item total - model load)."""
    from wan_dist.batch.ledger import Ledger
    spans, work, gangs = [], {}, {}
    for r in Ledger(out, "bench").records():
        if r["status"] != "ok":
            continue
        sc = json.loads((out / "videos" / f"{r['id']}.json").read_text())
        t = sc["timings"]
        busy = t["total"] - t.get("model_load", 0.0)
        end = r["t_ns"] / 1e9
        spans.append((end - busy, end))
        work[r["id"]] = busy
        gangs.setdefault(sc["layout"]["gang"], []).append(busy)
    return {"makespan_s": max(e for _, e in spans) - min(s for s, _ in spans), "work": work,
            "per_gang_busy_s": {g: round(sum(v), 3) for g, v in sorted(gangs.items())},
            "per_gang_rows": {g: len(v) for g, v in sorted(gangs.items())}}


def job(ckpt: Path, m: Path, out: Path, static: bool) -> dict:
    from wan_dist.config import compose
    from wan_dist.gangs.driver import main
    shutil.rmtree(out, ignore_errors=True)
    cfg = compose([*BASE, f"ckpt_dir={ckpt}", f"manifest={m}", f"out_dir={out}"])
    t0 = time.perf_counter()
    code = int(main(cfg, static_split=static))
    wall = time.perf_counter() - t0
    assert code == 0, code
    return {**measure(out), "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--light", default="2,5,32*32", help="steps,frame_num,size of the light rows")
    ap.add_argument("--heavy", default="20,17,64*64", help="steps,frame_num,size of the heavy rows")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--patterns", default="alternate,shuffle")
    ap.add_argument("--work", default=str(REPO / "runs" / "bench-queue"))
    a = ap.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from wan_dist.models.tiny import write_tiny_checkpoint
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "ckpt"
    if not (ckpt / "config.json").exists():
        write_tiny_checkpoint("tiny-t2v", ckpt, seed=0, overwrite=True)
    tmp = tempfile.mkdtemp(prefix="wdbench", dir="/tmp")
    ray.init(_node_ip_address="127.0.0.1", _temp_dir=tmp, num_cpus=2, include_dashboard=False)
    results = {}
    try:
        for pattern in a.patterns.split(","):
            m, heavy = manifest(work / f"{pattern}.csv", a.rows, a.light, a.heavy, pattern)
            runs = {"dynamic": [], "static": []}
            for rep in range(a.repeats):          # side by side, alternating, so drift hits both alike
                for mode in ("dynamic", "static"):
                    runs[mode].append(job(ckpt, m, work / f"{pattern}-{mode}-{rep}", static=mode == "static"))
            w = runs["dynamic"][0]["work"]
            h = statistics.mean(v for k, v in w.items() if k in heavy)
            lt = statistics.mean(v for k, v in w.items() if k not in heavy)
            dyn = statistics.median(r["makespan_s"] for r in runs["dynamic"])
            sta = statistics.median(r["makespan_s"] for r in runs["static"])
            results[pattern] = {"heavy_over_light": round(h / lt, 2), "heavy_s": round(h, 3), "light_s": round(lt, 3),
                                "dynamic_makespan_s": round(dyn, 3), "static_makespan_s": round(sta, 3),
                                "ratio": round(dyn / sta, 3),
                                "dynamic_wall_s": [round(r["wall_s"], 2) for r in runs["dynamic"]],
                                "static_wall_s": [round(r["wall_s"], 2) for r in runs["static"]],
                                "dynamic_rows_per_gang": runs["dynamic"][0]["per_gang_rows"],
                                "dynamic_busy_per_gang_s": runs["dynamic"][0]["per_gang_busy_s"],
                                "static_busy_per_gang_s": runs["static"][0]["per_gang_busy_s"]}
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"machine": f"{platform.node()} {os.cpu_count()} cores", "rows": a.rows,
                      "light": a.light, "heavy": a.heavy, "repeats": a.repeats,
                      "date": time.strftime("%Y-%m-%d"), "results": results}, indent=2))
    for pattern, r in results.items():
        print(f"{pattern}: heavy/light work {r['heavy_over_light']}x; makespan dynamic {r['dynamic_makespan_s']} s "
              f"vs static {r['static_makespan_s']} s -> ratio {r['ratio']} (target <= 0.8)")


if __name__ == "__main__":
    main()

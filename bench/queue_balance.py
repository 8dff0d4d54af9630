"""Dynamic queue vs static split on Ray gangs, with a skewed manifest (tiny model, CPU is fine).

Half the rows are heavy (>= 4x the work of the others; the measured ratio is printed), on 2 gangs x 1 rank of a
private local Ray. The same job runs side by side (alternating, `--repeats` times) in two ways:
  dynamic   the Ray queue: a gang leases the next row when it is free (launch/ray_run.py's behaviour)
  static    the same gangs, a fixed split: gang k makes rows i % 2 == k (torchrun's `work.source=static`)
Makespan = first row started .. last row finished, from the ledger times and the sidecars' per-item totals (the
gangs' start-up and model load are the same in both and left out; the job's wall time is printed too).

Two kinds of work:
  gpu-like  every row is a light real item (2 steps, 32*32) plus WAN_DIST_TEST_ITEM_SLEEP seconds inside its timed
            work (heavy rows more): the gangs do not compete for this host's CPUs, as replicas on their own GPUs do
            not. This is what the queue is for.
  cpu       heavy rows really compute more (steps, frames, pixels). On a host whose CPUs both gangs share (the
            busy 2-vCPU test machine), the total throughput is about fixed and no split can beat another by much;
            reported to show exactly that.
Row orders: `alternate` (heavy rows at even positions: the static split gives one gang every heavy row) and
`shuffle` (a seeded random order).

    .venv/bin/python bench/queue_balance.py [--rows 16] [--heavy-s 4.0] [--light-s 0.1] [--repeats 2]
        [--kinds gpu-like,cpu] [--patterns alternate,shuffle]
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
BASE = ["model=tiny-t2v", "device=cpu", "batch.progress=false", "ray.gangs=2", "ray.gpus_per_rank=0",
        "ray.cpus_per_rank=1"]
LIGHT = "2,5,32*32"                     # steps,frame_num,size of a light row
HEAVY_CPU = "20,17,64*64"               # of a heavy row in the cpu kind


def manifest(path: Path, n: int, pattern: str, kind: str, heavy_s: float, light_s: float) -> tuple[Path, set, str]:
    heavy = [i % 2 == 0 for i in range(n)]
    if pattern == "shuffle":
        random.Random(0).shuffle(heavy)
    ids = [f"q{i:03d}" for i in range(n)]
    cols = [HEAVY_CPU if h and kind == "cpu" else LIGHT for h in heavy]
    path.write_text("id,prompt,steps,frame_num,size\n" + "".join(f"{i},a tiny test prompt {i},{c}\n"
                                                                 for i, c in zip(ids, cols)))
    sleep = ",".join(f"{i}:{heavy_s if h else light_s}" for i, h in zip(ids, heavy)) if kind == "gpu-like" else ""
    return path, {i for i, h in zip(ids, heavy) if h}, sleep


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
            "busy_per_gang_s": {g: round(sum(v), 2) for g, v in sorted(gangs.items())},
            "rows_per_gang": {g: len(v) for g, v in sorted(gangs.items())}}


def job(ckpt: Path, m: Path, out: Path, static: bool, sleep: str) -> dict:
    from wan_dist.config import compose
    from wan_dist.gangs.driver import main
    shutil.rmtree(out, ignore_errors=True)
    os.environ["WAN_DIST_TEST_ITEM_SLEEP"] = sleep          # the driver hands WAN_DIST_TEST_* to the ranks
    cfg = compose([*BASE, f"ckpt_dir={ckpt}", f"manifest={m}", f"out_dir={out}"])
    t0 = time.perf_counter()
    code = int(main(cfg, static_split=static))
    wall = time.perf_counter() - t0
    assert code == 0, code
    return {**measure(out), "wall_s": wall}


def compare(ckpt, work: Path, a, kind: str, pattern: str) -> dict:
    m, heavy, sleep = manifest(work / f"{kind}-{pattern}.csv", a.rows, pattern, kind, a.heavy_s, a.light_s)
    runs = {"dynamic": [], "static": []}
    for rep in range(a.repeats):                  # side by side, alternating, so drift hits both alike
        for mode in ("dynamic", "static"):
            runs[mode].append(job(ckpt, m, work / f"{kind}-{pattern}-{mode}-{rep}", mode == "static", sleep))
    w = {k: statistics.mean(r["work"][k] for r in runs["dynamic"] + runs["static"]) for k in runs["dynamic"][0]["work"]}
    h = statistics.mean(v for k, v in w.items() if k in heavy)
    lt = statistics.mean(v for k, v in w.items() if k not in heavy)
    dyn = [round(r["makespan_s"], 2) for r in runs["dynamic"]]
    sta = [round(r["makespan_s"], 2) for r in runs["static"]]
    return {"heavy_over_light": round(h / lt, 2), "heavy_s": round(h, 3), "light_s": round(lt, 3),
            "dynamic_makespan_s": dyn, "static_makespan_s": sta,
            "ratio": round(statistics.median(dyn) / statistics.median(sta), 3),
            "dynamic_wall_s": [round(r["wall_s"], 1) for r in runs["dynamic"]],
            "static_wall_s": [round(r["wall_s"], 1) for r in runs["static"]],
            "dynamic_rows_per_gang": [r["rows_per_gang"] for r in runs["dynamic"]],
            "dynamic_busy_per_gang_s": [r["busy_per_gang_s"] for r in runs["dynamic"]],
            "static_busy_per_gang_s": [r["busy_per_gang_s"] for r in runs["static"]]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--heavy-s", type=float, default=4.0, help="gpu-like: seconds a heavy row waits")
    ap.add_argument("--light-s", type=float, default=0.1, help="gpu-like: seconds a light row waits")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--kinds", default="gpu-like,cpu")
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
        for kind in a.kinds.split(","):
            for pattern in a.patterns.split(","):
                results[f"{kind}/{pattern}"] = compare(ckpt, work, a, kind, pattern)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"machine": f"{platform.node()} {os.cpu_count()} cores", "rows": a.rows, "heavy_s": a.heavy_s,
                      "light_s": a.light_s, "repeats": a.repeats, "date": time.strftime("%Y-%m-%d"),
                      "results": results}, indent=1))
    for name, r in results.items():
        print(f"{name}: heavy/light work {r['heavy_over_light']}x; makespan dynamic {r['dynamic_makespan_s']} s vs "
              f"static {r['static_makespan_s']} s -> ratio of medians {r['ratio']} (target <= 0.8)")


if __name__ == "__main__":
    main()

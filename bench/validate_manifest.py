"""Validation cost of a large manifest (issue 12, class 9): the time from a manifest file to validated items with
their settings hash, as the worker does it once per run on rank 0 (worker.prepare_batch, without the checkpoint
check, which does not depend on the row count).

Side by side in one invocation, on the same rows:
  per-row step plan (before)   every row rebuilds a diffusers scheduler for its (solver, steps, shift)
  cached step plan (now)       one scheduler per distinct (solver, steps, shift)
then the full manifest with the cached plan, split into reading, rows -> requests, settings hashes.

    .venv/bin/python bench/validate_manifest.py [--rows 100000] [--compare 2000]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_manifest(path: Path, rows: int, image: Path) -> None:
    """Rows like a real batch: most rows only a prompt; some override steps, seed, size, frames; 10 % take an image."""
    lines = ["id,prompt,seed,steps,size,frame_num,image"]
    for i in range(rows):
        steps = ("", "2", "3", "4")[i % 4]
        size = "" if i % 5 else "64*32"
        frames = "" if i % 7 else str(1 + 4 * (i % 3 + 1))
        img = "img.png" if i % 10 == 0 else ""
        lines.append(f"row-{i},\"a prompt, number {i}, with a comma\",{i if i % 3 else ''},{steps},{size},{frames},"
                     f"{img}")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--compare", type=int, default=2000, help="rows for the before/now comparison")
    args = ap.parse_args()

    from wan_dist.batch import settings
    from wan_dist.batch.manifest import load_items
    from wan_dist.batch.manifest_read import read_records
    from wan_dist.config import compose
    from wan_dist.models.registry import get_model
    from wan_dist.models.tiny import make_test_image
    from wan_dist.pipeline import request as request_mod
    from wan_dist.pipeline.schedule import expert_plan, timesteps_for

    spec = get_model("tiny-ti2v")
    tmp = Path(tempfile.mkdtemp(prefix="wan-dist-bench-validate-"))
    make_test_image(tmp / "img.png", 64, 64)
    big, small = tmp / "big.csv", tmp / "small.csv"
    write_manifest(big, args.rows, tmp / "img.png")
    write_manifest(small, args.compare, tmp / "img.png")
    cfg = compose(["model=tiny-ti2v", f"ckpt_dir={tmp}", f"manifest={big}", f"out_dir={tmp / 'out'}",
                   "sample.steps=2", "sample.frame_num=5", "sample.size=32*32", "device=cpu"])
    run = {"checkpoint": "sha256:bench", "dtype": "float32", "t5_dtype": "float32", "vae_dtype": "float32"}

    # -- before / now, same rows ----------------------------------------------------------------------------------
    cached_ts, cached_es = request_mod._timesteps, request_mod._expert_steps

    def uncached_es(solver, steps, shift, boundary):
        experts = expert_plan(timesteps_for(solver, steps, shift), boundary)
        return sum(e in ("low", "single") for e in experts), sum(e == "high" for e in experts)

    request_mod._expert_steps = uncached_es
    t0 = time.perf_counter()
    load_items(small, cfg, spec)
    before = time.perf_counter() - t0
    request_mod._expert_steps = cached_es
    cached_ts.cache_clear()
    cached_es.cache_clear()
    t0 = time.perf_counter()
    load_items(small, cfg, spec)
    now = time.perf_counter() - t0

    # -- the full manifest --------------------------------------------------------------------------------------------
    cached_ts.cache_clear()
    cached_es.cache_clear()
    t0 = time.perf_counter()
    records, problems = read_records(big)
    t_read = time.perf_counter() - t0
    assert not problems and len(records) == args.rows
    t0 = time.perf_counter()
    items = load_items(big, cfg, spec)            # reads again: load_items is what the worker calls
    t_items = time.perf_counter() - t0
    t0 = time.perf_counter()
    items = settings.attach(items, run)
    t_hash = time.perf_counter() - t0
    assert len(items) == args.rows and len({it.settings for it in items}) == args.rows

    n = args.compare
    print(f"machine: {os.cpu_count()} CPUs; rows: {args.rows}; comparison rows: {n}")
    print("| measure | value |")
    print("|---|---|")
    print(f"| {n} rows, per-row step plan (before) | {before:.2f} s = {1e3 * before / n:.3f} ms/row |")
    print(f"| {n} rows, cached step plan (now) | {now:.2f} s = {1e3 * now / n:.3f} ms/row |")
    print(f"| before / now | **{before / now:.1f}x** |")
    print(f"| {args.rows} rows: read + parse the CSV | {t_read:.2f} s |")
    print(f"| {args.rows} rows: load_items (read, parse, every rule, requests) | {t_items:.2f} s = "
          f"{1e3 * t_items / args.rows:.3f} ms/row |")
    print(f"| {args.rows} rows: settings hashes | {t_hash:.2f} s |")
    print(f"| {args.rows} rows: validation total (load_items + hashes) | **{t_items + t_hash:.2f} s** |")


if __name__ == "__main__":
    main()

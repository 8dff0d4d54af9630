"""Host RSS of loading a DiT whole in one process vs sharded over the ranks of a replica (FSDP2 + pread slices).

    .venv/bin/python bench/load_memory.py [--dir runs/bench-dit] [--layers 6] [--nproc 2]

Writes (once) a random-weight DiT in the *native* layout (t2v-1.3B widths, `--layers` blocks, fp32, >= 1 GB), then:
  whole:   one process, wan_dist.models.loading.load_dit (the single-device loader)
  sharded: torchrun --nproc_per_node N, the same load_dit with shard_dit = distributed.parallelize.dit_shard_fn(mesh)
and prints per-rank peak RSS (VmHWM), the RSS before loading (imports + process group), and
(peak - before) / model bytes. Figures are measured side by side in one invocation.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def write_dit(d: Path, layers: int) -> int:
    """Random native-layout DiT; returns its bytes."""
    cfg_file, wfile = d / "config.json", d / "diffusion_pytorch_model.safetensors"
    if wfile.exists() and json.loads(cfg_file.read_text()).get("num_layers") == layers:
        return wfile.stat().st_size
    import torch
    from safetensors.torch import save_file

    from wan_dist.models import convert
    from wan_dist.models.registry import get_model
    cfg = dict(get_model("t2v-1.3B").dit, num_layers=layers)
    torch.manual_seed(0)
    module = convert.build_library_module("dit", cfg, device="cpu")
    sd = convert.to_native_state_dict("dit", module.state_dict())
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(wfile))
    cfg_file.write_text(json.dumps(cfg))
    return wfile.stat().st_size


def measure(mode: str, d: Path) -> None:
    import torch

    from wan_dist.models.loading import LoadStats, load_dit
    from wan_dist.models.registry import get_model
    spec = get_model("t2v-1.3B")
    rank = 0
    if mode == "sharded":
        import torch.distributed as dist

        from wan_dist.distributed.layout import Layout
        from wan_dist.distributed.mesh import build_mesh
        from wan_dist.distributed.parallelize import dit_shard_fn
        dist.init_process_group("gloo")
        rank, n = dist.get_rank(), dist.get_world_size()
        m = build_mesh(Layout(dp=1, cfg=1, ring=1, ulysses=n, fsdp=True, t5_fsdp=False), torch.device("cpu"))
        dist.barrier()
    before = rss_kb("VmRSS")
    t0 = time.perf_counter()
    if mode == "sharded":
        model = load_dit(spec, d, torch.float32, "cpu", LoadStats(), shard_dit=dit_shard_fn(m))
    else:
        model = load_dit(spec, d, torch.float32, "cpu", LoadStats())
    secs = time.perf_counter() - t0
    load_peak = rss_kb("VmHWM")
    # touch every parameter as a first forward would: the whole loader's tensors may be lazily paged-in mmap views
    from torch.distributed.tensor import DTensor
    for p in model.parameters():
        float((p.to_local() if isinstance(p, DTensor) else p).float().sum())
    print(json.dumps({"mode": mode, "rank": rank, "before_kb": before, "load_peak_kb": load_peak,
                      "peak_kb": rss_kb("VmHWM"), "after_kb": rss_kb("VmRSS"), "seconds": round(secs, 2)}), flush=True)
    del model
    if mode == "sharded":
        dist.barrier()
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=str(REPO / "runs/bench-dit"))
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--measure", choices=("whole", "sharded"))
    a = ap.parse_args()
    d = Path(a.dir)
    if a.measure:
        return measure(a.measure, d)
    nbytes = write_dit(d, a.layers)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    me = [str(Path(__file__).resolve()), "--dir", str(d), "--measure"]
    runs = [[sys.executable, *me, "whole"],
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(a.nproc),
             *me, "sharded"]]
    print(f"model: {d} ({nbytes / 2**30:.3f} GiB fp32, {a.layers} blocks of t2v-1.3B width)")
    print("| mode | rank | RSS before load | peak RSS in load | peak RSS after touching all params | "
          "peak - before | (peak - before) / model | peak / model | load s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cmd in runs:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        for line in sorted(x for x in out.splitlines() if x.startswith("{")):
            r = json.loads(line)
            b, p = r["before_kb"] * 1024, r["peak_kb"] * 1024
            print(f"| {r['mode']} | {r['rank']} | {b / 2**30:.3f} GiB | {r['load_peak_kb'] / 2**20:.3f} GiB "
                  f"| {p / 2**30:.3f} GiB | {(p - b) / 2**30:.3f} GiB "
                  f"| {(p - b) / nbytes:.3f} | {p / nbytes:.3f} | {r['seconds']} |")


if __name__ == "__main__":
    main()

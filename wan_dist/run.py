"""A whole run: validate everything, load the models once, generate every item, write outputs, summarise.

Called by launch/run.py in every rank with the same composed config. Order matters: config and manifest rows and the
checkpoint are all validated before any model weight is read (bad input costs no GPU time).
"""
from __future__ import annotations

import logging
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import config as config_mod
from .batch.manifest import load_items, single_prompt_items
from .batch.outputs import OutputDir
from .batch.runner import BatchRunner
from .batch.atomic import write_bytes_atomic
from .batch.redact import redact
from .models import checkpoint
from .models.loading import load_diffusers_layout, load_native, parse_dtype
from .models.registry import get_model
from .observability.figures import reduce_load
from .observability.progress import Progress
from .observability.sinks import make_sink
from .pipeline.generator import WanGenerator

log = logging.getLogger("wan_dist")

# Exit codes (also in README "Exit codes"): 0 all items ok or skipped; 2 user error (bad config / manifest /
# checkpoint; nothing was run or written); 3 the batch finished but some items failed (see results.jsonl);
# 74 (EX_IOERR) out_dir cannot take more data (disk full, quota, read-only): finished items are kept, rerun after
# freeing space; 75 (EX_TEMPFAIL) stopped by SIGTERM / SIGUSR1 / SIGINT at a safe point: requeue, the rerun resumes.
EXIT_OK = 0
EXIT_ITEMS_FAILED = 3      # the batch finished but some items failed (see results.jsonl)
EXIT_OUTPUT_UNWRITABLE = 74  # EX_IOERR: disk full / quota / read-only out_dir; nothing partial is left
EXIT_PREEMPTED = 75        # EX_TEMPFAIL: stopped by a signal between items or denoise steps; requeue and rerun


def setup_logging(rank: int) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda': no CUDA device is available on this machine")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device, field: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return parse_dtype(name, field)


def git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except Exception:
        return None


def versions() -> dict:
    import diffusers
    import transformers
    return {"python": platform.python_version(), "torch": str(torch.__version__), "diffusers": str(diffusers.__version__),
            "transformers": str(transformers.__version__), "wan_dist_git": git_sha()}


def write_config(out: OutputDir, cfg, ctx) -> None:
    import yaml
    import json
    doc = {"config": json.loads(json.dumps(config_mod.to_dict(cfg))), "versions": versions(), "layout": ctx.describe(),
           "argv": sys.argv[1:]}
    doc = redact(doc)  # no API key / token (env values, key=value overrides, secret-named keys) reaches the file
    write_bytes_atomic(out.root / "config.yaml", yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode())


def load_models(cfg, spec, device, layout: str):
    dtype = resolve_dtype(cfg.dtype, device, "dtype")
    t5_dtype = resolve_dtype(cfg.t5_dtype, device, "t5_dtype")
    vae_dtype = parse_dtype(cfg.vae_dtype, "vae_dtype")
    t5_device = torch.device("cpu") if cfg.t5_cpu or cfg.offload_model else device
    dit_device = torch.device("cpu") if cfg.offload_model else device
    loader = load_native if layout == "native" else load_diffusers_layout
    return loader(spec, Path(cfg.ckpt_dir), dtype=dtype, device=str(dit_device), t5_dtype=t5_dtype,
                  t5_device=str(t5_device), vae_dtype=vae_dtype), dtype, (torch.device("cpu") if cfg.t5_cpu
                                                                          else device)


def run(cfg, ctx=None, parallel=None) -> int:
    """`parallel` (from wan_dist.distributed) may wrap the generator; None = single process."""
    from .distributed.context import RunContext
    ctx = ctx or RunContext()
    setup_logging(ctx.rank)
    spec = get_model(cfg.model.name)
    items = load_items(cfg.manifest, cfg, spec) if cfg.manifest else single_prompt_items(cfg, spec)
    device = resolve_device(cfg.device, ctx.local_rank)
    layout = checkpoint.check(cfg.ckpt_dir, spec).layout   # every problem at once, before any tensor is read
    out = OutputDir(cfg.out_dir)
    if ctx.is_main:
        out.prepare()
        write_config(out, cfg, ctx)
    ctx.barrier()  # the ledger's torn tail (if any) is repaired before any writer appends
    t0 = time.perf_counter()
    loader = parallel.load_models if parallel is not None else load_models   # parallel: sharded DiT loading
    loaded, dtype, t5_device = loader(cfg, spec, device, layout)
    if parallel is not None:
        parallel.apply(loaded, ctx)
    model_load_s = time.perf_counter() - t0
    model_load_s, load_seconds = reduce_load(ctx, model_load_s, loaded.stats.seconds)  # replica max over ranks
    gen = WanGenerator(loaded, device=device, dtype=dtype, t5_device=t5_device, offload_model=cfg.offload_model,
                       boundary=cfg.model.boundary,
                       guidance_exec=parallel.guidance_exec(ctx) if parallel is not None else None,
                       decode_fn=parallel.decode_fn(ctx) if parallel is not None else None)
    progress = Progress(enabled=cfg.batch.progress and ctx.is_main)
    gen.on_step = progress.step
    sink = make_sink(cfg, out.root, is_logger=ctx.is_main)
    sink.log_config(redact(config_mod.to_dict(cfg)))
    run_info = {"model_load_s": round(model_load_s, 6), "load_seconds": load_seconds,
                "checkpoint_dtype": loaded.stats.checkpoint_dtype, "dtype": str(dtype).replace("torch.", ""),
                "device": str(device), "ckpt_dir": str(cfg.ckpt_dir)}
    runner = BatchRunner(cfg=cfg, spec=spec, generator=gen, out=out, ctx=ctx, model_load_s=model_load_s,
                         run_info=run_info, sink=sink, progress=progress)
    if ctx.is_main:
        log.info("model %s loaded in %.2fs (%s on %s); %d item(s) in the manifest", spec.name, model_load_s,
                 run_info["dtype"], device, len(items))
    summary = runner.run(items)
    ctx.barrier()  # every replica's sidecars are on disk before rank 0 logs the run summary (observability)
    sink.log_summary({"done": summary.done, "skipped": summary.skipped, "failed": summary.failed,
                      "model_load_s": model_load_s})
    sink.close()
    if ctx.is_writer:
        log.info("summary: %s", summary.line())
        log.info("outputs: %s (videos/, results.jsonl)", out.root)
    if summary.aborted:
        return EXIT_OUTPUT_UNWRITABLE
    if summary.preempted:
        return EXIT_PREEMPTED
    return EXIT_ITEMS_FAILED if summary.failed else EXIT_OK

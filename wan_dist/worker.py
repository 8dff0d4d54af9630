"""The orchestrator: one run of wan-dist, whatever started it (torchrun, a Slurm task, a Ray gang, the UI).

    run(cfg, ctx, work) -> ExitCode      config + run context + work source in, an exit code out
    main(cfg) -> ExitCode                the torchrun / single-process path: layout check, process group, run
A run can be one part of a larger job (`JobPart`: a Ray gang, wan_dist/gangs/): then the job's driver names the run,
writes config.yaml and results.jsonl and holds the one metrics logger, and the part only makes its rows.

Order matters (DESIGN §4-5): the config, the parallel layout, every manifest row and the checkpoint files are all
validated before any model weight is read, and a user error (ValueError naming field, value and rule) ends the run
with ExitCode.USAGE and nothing written. Then: models loaded once (sharded while loading when FSDP asks for it),
parallelized, the generator built, the batch runner run over the work source's rows, the outcome agreed by every rank.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

from . import config as config_mod
from .batch import changes as changes_mod
from .batch import settings as settings_mod
from .batch.manifest import load_items, single_prompt_items
from .batch.outputs import OutputDir, OutputsUnwritable
from .batch.preempt import StopFlag
from .batch.runner import BatchRunner, Summary
from .batch.work import WorkSource, make_source
from .distributed.context import RunContext, env_world
from .distributed.layout import check_items, check_layout
from .distributed.mesh import open_context
from .distributed.parallelize import dit_shard_fn, parallelize
from .exit_codes import ExitCode, worst
from .models import checkpoint
from .models.device import dtype_names, placement, resolve_device
from .models.loading import load_models
from .models.registry import get_model
from .observability.figures import reduce_load
from .observability.logs import setup_logging
from .observability.progress import Progress
from .observability.run_info import versions
from .observability.sinks import make_sink
from .pipeline.generator import WanGenerator

log = logging.getLogger("wan_dist")


@dataclass
class Engine:
    """Loaded, parallelized models and the generator over them: what a run needs beyond its rows."""
    generator: WanGenerator
    parallel: object            # distributed.parallelize.Parallelized
    model_load_s: float
    load_seconds: dict
    checkpoint_dtype: dict
    placement: object


@dataclass(frozen=True)
class JobPart:
    """This run is one part of a job that a driver coordinates (a Ray gang): the job's run id names every sidecar,
    `writer` is this part's ledger/claims name (the driver releases a dead part's claims by it), `layout` is added
    to the sidecars' layout (which gang, which rebuild)."""
    run_id: str
    writer: str
    layout: dict


def user_error(ctx: RunContext, e: ValueError) -> ExitCode:
    """One clear message, once (rank 0), no traceback; nothing was written."""
    if ctx.is_main:
        print(f"error: {e}", file=sys.stderr, flush=True)
    return ExitCode.USAGE


def validate_inputs(cfg, ctx: RunContext, layout=None) -> list:
    """Every row (once, on rank 0, shared with the others), the checkpoint files and out_dir: ValueError on any
    problem. The items carry their settings hash."""
    return prepare_batch(cfg, ctx, layout)[0]


def prepare_batch(cfg, ctx: RunContext, layout=None, device_type: str | None = None) -> tuple[list, dict]:
    """(items, the run part of their settings). All of it on rank 0, once, read-only: the manifest rows, the
    checkpoint files (and their identity), out_dir (a directory, no symlink where wan-dist writes) and the ids out_dir
    already holds with other settings (batch.on_change=stop: a ValueError listing them, before any model work).
    `device_type`: resolve dtype=auto for that device instead of this process's (the Ray driver validates for gangs
    that run elsewhere, e.g. on GPU nodes while the driver has none)."""
    spec = get_model(cfg.model.name)

    def on_main():
        items = load_items(cfg.manifest, cfg, spec) if cfg.manifest else single_prompt_items(cfg, spec)
        report = checkpoint.check(cfg.ckpt_dir, spec)
        if device_type is None:
            dtypes = placement(device=cfg.device, dtype=cfg.dtype, t5_dtype=cfg.t5_dtype, vae_dtype=cfg.vae_dtype,
                               t5_cpu=cfg.t5_cpu, offload_model=cfg.offload_model,
                               local_rank=ctx.local_rank).describe()
        else:
            dtypes = dtype_names(cfg.dtype, cfg.t5_dtype, cfg.vae_dtype, device_type)
        run = settings_mod.run_settings(cfg, report.identity(), dtypes)
        items = settings_mod.attach(items, run)
        out = OutputDir(cfg.out_dir, writer="validation")
        out.check()
        found = changes_mod.find_changes(out, items, run, retry_failed=cfg.batch.retry_failed)
        if found and cfg.batch.on_change == "stop":
            raise ValueError(changes_mod.stop_message(out.root, found))
        if found:
            log.warning("%d id(s) were made before with other settings; batch.on_change=%s: %s\n%s", len(found),
                        cfg.batch.on_change, "they are made again" if cfg.batch.on_change == "redo"
                        else "the old videos are kept", changes_mod.summarize(found))
        return items, run

    items, run = ctx.share_from_main(on_main)
    if layout is not None and layout.sp > 1:
        check_items([it.request for it in items], spec, layout, cfg.model.sizes)
    return items, run


def open_out_dir(out: OutputDir, doc: dict) -> tuple[str, str]:
    """Main rank: out_dir set up and the config recorded -> ("ok", run id), or ("unwritable", message) (exit 74
    on every rank); a ValueError (exit 2) travels through ctx.share_from_main by itself."""
    try:
        out.prepare(doc)
    except OutputsUnwritable as e:
        return "unwritable", str(e)
    return "ok", out.writer


def build_engine(cfg, ctx: RunContext) -> Engine:
    spec = get_model(cfg.model.name)
    place = placement(device=cfg.device, dtype=cfg.dtype, t5_dtype=cfg.t5_dtype, vae_dtype=cfg.vae_dtype,
                      t5_cpu=cfg.t5_cpu, offload_model=cfg.offload_model, local_rank=ctx.local_rank)
    fmt = checkpoint.detect_format(cfg.ckpt_dir)
    t0 = time.perf_counter()
    models = load_models(spec, cfg.ckpt_dir, place, ckpt_format=fmt, shard_dit=dit_shard_fn(ctx.mesh))
    par = parallelize(models, ctx.mesh, vae_parallel=cfg.parallel.vae_parallel)
    load_s, load_seconds = reduce_load(ctx, time.perf_counter() - t0, models.stats.seconds)  # replica max
    gen = WanGenerator(models, place, boundary=cfg.model.boundary, guidance_exec=par.guidance, decode_fn=par.decode)
    return Engine(gen, par, load_s, load_seconds, models.stats.checkpoint_dtype, place)


def run(cfg, ctx: RunContext | None = None, work: WorkSource | None = None, *, layout=None,
        stop: StopFlag | None = None, job: JobPart | None = None) -> ExitCode:
    """One run over `work`'s rows on this process's place in the run (`ctx`); every rank of the run calls it.
    `stop`: the process's stop flag (entry.py installs one for the whole process, so a signal that arrives during
    start-up or teardown is never fatal); a private one is installed for the run when none is given.
    `job`: set when this run is one part of a driver's job (see JobPart)."""
    ctx = ctx or RunContext()
    work = work or make_source(cfg.work)
    stop = (stop or StopFlag()).install()  # a stop signal during validation or loading ends at the first safe point
    try:
        return _run(cfg, ctx, work, stop, layout, job)
    finally:
        stop.restore()


def _run(cfg, ctx, work, stop, layout, job=None) -> ExitCode:
    try:
        items, run_settings = prepare_batch(cfg, ctx, layout)
        out = OutputDir(cfg.out_dir, writer=job.writer if job else None, claim_timeout_s=cfg.batch.claim_timeout_s)
        doc = None if job else {"config": config_mod.to_dict(cfg), "versions": versions(), "layout": ctx.describe(),
                                "work": work.describe() if hasattr(work, "describe") else {}, "argv": sys.argv[1:],
                                "run_id": out.writer}
        kind, run_id = ctx.share_from_main(lambda: open_out_dir(out, doc))   # the main rank's writer names the run
    except ValueError as e:
        return user_error(ctx, e)
    if kind == "unwritable":
        if ctx.is_main:
            print(f"error: {run_id}", file=sys.stderr, flush=True)
        return ExitCode.IOERR
    if job is not None:
        return _run_part(cfg, ctx, work, stop, items, run_settings, out, job)
    sink = make_sink(cfg, out.root, is_logger=ctx.is_main, run_id=run_id)
    sink.log_config(config_mod.to_dict(cfg))
    engine, total = _make_rows(cfg, ctx, work, stop, items, run_settings, out, run_id, sink, {})
    code = outcome(total)
    if ctx.is_main:
        out.ledger.write_merged_view()
        sink.log_summary({"done": total.done, "skipped": total.skipped, "failed": total.failed,
                          "model_load_s": engine.model_load_s})
        log.info("summary: %s", total.line())
        log.info("outputs: %s (videos/, results.jsonl)", out.root)
    sink.close()
    out.drop_partial()
    return code


def _make_rows(cfg, ctx, work, stop, items, run_settings, out, run_id, sink,
               extra_layout: dict) -> tuple[Engine, Summary]:
    """Load, parallelize, run the batch over the work source; the run's total Summary (every rank agrees)."""
    engine = build_engine(cfg, ctx)
    spec = get_model(cfg.model.name)
    progress = Progress(enabled=cfg.batch.progress and ctx.is_main)
    engine.generator.on_step = progress.step
    run_info = {"run_id": run_id, "model_load_s": round(engine.model_load_s, 6), "load_seconds": engine.load_seconds,
                "checkpoint_dtype": engine.checkpoint_dtype, **engine.placement.describe(),
                "ckpt_dir": str(cfg.ckpt_dir)}
    layout_info = {**ctx.describe(), **engine.parallel.describe(), **extra_layout}
    runner = BatchRunner(cfg=cfg, spec=spec, generator=engine.generator, out=out, ctx=ctx, work=work,
                         model_load_s=engine.model_load_s, run_info=run_info, layout=layout_info, sink=sink,
                         progress=progress, stop=stop, run_settings=run_settings)
    if ctx.is_main:
        log.info("model %s loaded in %.2fs (%s on %s); %d item(s) in the manifest, work source %s", spec.name,
                 engine.model_load_s, run_info["dtype"], run_info["device"], len(items), work.name)
    summary = runner.run(items)
    ctx.wait_all_done()                    # every replica's sidecars and ledger lines are on disk
    total = Summary.total([s for s in ctx.gather(summary if ctx.is_writer else None) if s is not None])
    return engine, total


def _run_part(cfg, ctx, work, stop, items, run_settings, out, job: JobPart) -> ExitCode:
    """One part of a driver's job: no config.yaml, no results.jsonl, no logger here (the driver owns them)."""
    from .observability.sinks import NullSink
    _, total = _make_rows(cfg, ctx, work, stop, items, run_settings, out, job.run_id, NullSink(), job.layout)
    if ctx.is_main:
        log.info("summary of this part: %s", total.line())
    out.drop_partial()
    return outcome(total)


def outcome(s: Summary) -> ExitCode:
    if s.aborted:
        return ExitCode.IOERR
    if s.conflicts:               # another run made some of this run's ids with other settings meanwhile
        return ExitCode.USAGE
    if s.preempted:
        return ExitCode.TEMPFAIL
    return ExitCode.ITEMS_FAILED if (s.failed or s.lost) else ExitCode.OK


def main(cfg, stop: StopFlag | None = None) -> ExitCode:
    """The torchrun (or plain single-process) path: every rank calls it with the same composed config."""
    rank, world, local_rank = env_world()
    setup_logging(rank)
    try:
        lay = check_layout(cfg, world)     # ValueError before any process group exists
        device = resolve_device(cfg.device, local_rank)
    except ValueError as e:
        return user_error(RunContext(rank=rank), e)
    with open_context(lay, device, cfg.parallel.backend, local_rank) as ctx:
        try:
            digest = config_mod.config_digest(cfg)
            if ctx.world_any(ctx.share_from_main(lambda: digest) != digest):
                raise ValueError(f"config: a rank composed a different config than rank 0 (sha {digest[:12]} on "
                                 f"rank {ctx.rank}); every rank must get the same argv and files")
            work = make_source(cfg.work)
        except ValueError as e:
            return user_error(ctx, e)
        return worst(ctx.gather(int(run(cfg, ctx, work, layout=lay, stop=stop))))

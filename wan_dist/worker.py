"""The orchestrator: one run of wan-dist, whatever started it (torchrun, a Slurm task, a Ray gang, the UI).

    run(cfg, ctx, work) -> ExitCode      config + run context + work source in, an exit code out
    main(cfg) -> ExitCode                the torchrun / single-process path: layout check, process group, run
    Session                              what a process keeps across runs (the jobs of a Hydra sweep): the process
                                         group with a mesh per layout, and the loaded models (EngineCache)
A run can be one part of a larger job (`JobPart`: a Ray gang, wan_dist/gangs/): then the job's driver names the run,
writes config.yaml and results.jsonl and holds the one metrics logger, and the part only makes its rows.

Order matters (DESIGN §4-5): the config, the parallel layout, every manifest row and the checkpoint files are all
validated before any model weight is read, and a user error (ValueError naming field, value and rule) ends the run
with ExitCode.USAGE and nothing written. A run none of whose rows is to be made (all made already: a rerun, a
requeued array task) loads no models and only counts them (idle_run). Otherwise: models loaded once (sharded while
loading when FSDP asks for it; reused from the EngineCache when an earlier run of this process loaded the same ones),
parallelized, the generator built, the batch runner run over the work source's rows, the outcome agreed by every rank.
"""
from __future__ import annotations

import gc
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from . import config as config_mod
from .batch import changes as changes_mod
from .batch import settings as settings_mod
from .batch.manifest import load_items, single_prompt_items
from .batch.outputs import OutputDir, OutputsUnwritable
from .batch.preempt import StopFlag
from .batch.runner import BatchRunner, Summary, nothing_to_make
from .batch.work import WorkSource, make_source, writer_tags
from .distributed.context import RunContext, env_world
from .distributed.layout import check_items, check_layout
from .distributed.mesh import MeshCache
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
from .models.attention import apply_backend, resolve_backend
from .observability.timer import sync
from .pipeline.cache import CacheSetting, StepCache, load_mag_ratios
from .pipeline.compile import compile_dits, warm_up
from .pipeline.generator import WanGenerator
from .pipeline.schedule import expert_plan, timesteps_for
from .pipeline.sizes import correct_frame_num, parse_size

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
    compile_s: float = 0.0      # compile + warm-up forwards (compile=regional), replica max
    speed: dict | None = None   # attention backend, compile targets, cfg_batch (run info)


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


def check_checkpoint(cfg, spec, checked: dict | None = None):
    """checkpoint.check, once per process per (model, checkpoint fingerprint) when `checked` (the EngineCache's) is
    given: a sweep's later jobs do not re-read the same unchanged files; a change of any file's size or mtime
    checks again."""
    if checked is None or not Path(cfg.ckpt_dir).is_dir():
        return checkpoint.check(cfg.ckpt_dir, spec)
    key = (spec.name, _ckpt_fingerprint(cfg.ckpt_dir))
    if key not in checked:
        checked[key] = checkpoint.check(cfg.ckpt_dir, spec)
    return checked[key]


def prepare_batch(cfg, ctx: RunContext, layout=None, checked: dict | None = None,
                  device_type: str | None = None) -> tuple[list, dict]:
    """(items, the run part of their settings). All of it on rank 0, once, read-only: the manifest rows, the
    checkpoint files (and their identity; `checked`: see check_checkpoint), out_dir (a directory, no symlink where
    wan-dist writes) and the ids out_dir already holds with other settings (batch.on_change=stop: a ValueError
    listing them, before any model work). `device_type`: resolve dtype=auto for that device instead of this
    process's (the Ray driver validates for gangs that run elsewhere, e.g. on GPU nodes while the driver has none)."""
    spec = get_model(cfg.model.name)

    def on_main():
        items = load_items(cfg.manifest, cfg, spec) if cfg.manifest else single_prompt_items(cfg, spec)
        report = check_checkpoint(cfg, spec, checked)
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
        check_items([it.request for it in items], spec, layout, cfg.model.sizes, cfg.sample.cache)
    return items, run


def open_out_dir(out: OutputDir, doc: dict) -> tuple[str, str]:
    """Main rank: out_dir set up and the config recorded -> ("ok", run id), or ("unwritable", message) (exit 74
    on every rank); a ValueError (exit 2) travels through ctx.share_from_main by itself."""
    try:
        out.prepare(doc)
    except OutputsUnwritable as e:
        return "unwritable", str(e)
    return "ok", out.writer


def build_engine(cfg, ctx: RunContext, items=(), cache_base=None) -> Engine:
    spec = get_model(cfg.model.name)
    place = placement(device=cfg.device, dtype=cfg.dtype, t5_dtype=cfg.t5_dtype, vae_dtype=cfg.vae_dtype,
                      t5_cpu=cfg.t5_cpu, offload_model=cfg.offload_model, local_rank=ctx.local_rank)
    fmt = checkpoint.detect_format(cfg.ckpt_dir)
    t0 = time.perf_counter()
    models = load_models(spec, cfg.ckpt_dir, place, ckpt_format=fmt, shard_dit=dit_shard_fn(ctx.mesh))
    cache_base = cache_base or cache_settings(cfg, spec)
    speed = prepare_speed(cfg, ctx, spec, models, place, cache_base)        # backend, cache hooks: before CP
    par = parallelize(models, ctx.mesh, vae_parallel=cfg.parallel.vae_parallel, cfg_batch=cfg.sample.cfg_batch)
    load_s, load_seconds = reduce_load(ctx, time.perf_counter() - t0, models.stats.seconds)  # replica max
    compile_s = compile_models(cfg, ctx, spec, models, place, speed, items)
    gen = WanGenerator(models, place, boundary=cfg.model.boundary, guidance_exec=par.guidance, decode_fn=par.decode,
                       step_cache=speed.pop("_step_cache"), cache_base=cache_base)
    return Engine(gen, par, load_s, load_seconds, models.stats.checkpoint_dtype, place, compile_s, speed)


def prepare_speed(cfg, ctx, spec, models, place, cache_base) -> dict:
    """Attention backend on every DiT and, under Ulysses/ring, the run's step-cache hooks: both must be in place
    before diffusers' context parallelism is enabled (its split hook on blocks.0 must wrap the cache hooks)."""
    lay = ctx.mesh.layout if ctx.mesh is not None else None
    ulysses, ring = (lay.ulysses, lay.ring) if lay else (1, 1)
    backend = resolve_backend(cfg.attention_backend, place.device, ulysses=ulysses, ring=ring)
    for dit in models.dits.values():
        apply_backend(dit, backend)
    pinned = lay is not None and lay.sp > 1
    step_cache = StepCache(models.dits, pinned=pinned, calibrate=cfg.sample.cache_calibrate)
    if pinned and cfg.sample.cache != "none":
        step_cache.install(replace(cache_base, method=cfg.sample.cache, threshold=cfg.sample.cache_threshold),
                           default_experts(cfg))
    return {"attention_backend": backend, "cfg_batch": cfg.sample.cfg_batch, "compile": cfg.compile,
            "_step_cache": step_cache}


def compile_models(cfg, ctx, spec, models, place, speed: dict, items) -> float:
    """compile=regional: mark the blocks and run the warm-up forwards (where compiling happens); replica max."""
    if cfg.compile == "none":
        return 0.0
    with_cache = cfg.sample.cache != "none" or any(it.request.cache != "none" for it in items)
    t0 = time.perf_counter()
    speed["compile_targets"] = compile_dits(models.dits, with_cache)
    size = parse_size(cfg.sample.size or cfg.model.size, "sample.size")
    frames, _ = correct_frame_num(cfg.sample.frame_num if cfg.sample.frame_num is not None else cfg.model.frame_num)
    warm_up(models.dits, spec, size=size, frame_num=frames, device=place.device, dtype=place.dtype,
            batches=(1, 2) if cfg.sample.cfg_batch else (1,))
    sync(place.device)
    compile_s, _ = reduce_load(ctx, time.perf_counter() - t0, {})
    if ctx.is_main:
        log.info("compiled (%s) in %.2fs, warm-up forwards included", speed["compile_targets"], compile_s)
    return compile_s


def cache_settings(cfg, spec) -> CacheSetting:
    """The run-wide step-cache parameters (method and threshold come per row); reads sample.cache_mag_ratios."""
    s = cfg.sample
    ratios = ()
    if s.cache_mag_ratios is not None:
        ratios = load_mag_ratios(s.cache_mag_ratios, ("high", "low") if spec.is_moe else ("single",))
    return CacheSetting(max_skip_steps=s.cache_max_skip_steps, interval=s.cache_interval,
                        warmup_steps=s.cache_warmup_steps, mag_ratios=ratios)


def default_experts(cfg) -> list[str]:
    """The expert of each step of the run's default request (sample.* over model.*)."""
    s, m = cfg.sample, cfg.model
    return expert_plan(timesteps_for(s.solver, s.steps or m.steps, s.shift or m.shift), m.boundary)


def _ckpt_fingerprint(ckpt_dir) -> tuple:
    """The checkpoint's files (path, size, mtime): a checkpoint rewritten in place between two runs is reloaded."""
    root = Path(ckpt_dir).resolve()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))    # .cache/: the downloader's state
        for f in sorted(filenames):
            st = os.stat(os.path.join(dirpath, f))
            files.append((os.path.relpath(os.path.join(dirpath, f), root), st.st_size, st.st_mtime_ns))
    return str(root), tuple(files)


def engine_key(cfg, ctx: RunContext) -> tuple:
    """What decides the loaded, parallelized models: model, checkpoint files, resolved placement (device, dtypes, T5
    and offload placement), FSDP / T5 FSDP / VAE split, backend and the mesh, and what is fixed at load time for speed
    (attention backend, compile, cfg_batch's executor, the run-wide step-cache parameters; under Ulysses/ring the
    cache method too, whose hooks are installed before context parallelism). A change of any of these reloads;
    sampling settings (steps, shift, guidance, truncation, size, frames, seeds, solver, the MoE boundary) never do."""
    p, s = cfg.parallel, cfg.sample
    pinned = ctx.mesh is not None and ctx.mesh.layout.sp > 1
    speed = (cfg.attention_backend, cfg.compile, s.cfg_batch, s.cache_max_skip_steps, s.cache_interval,
             s.cache_warmup_steps, s.cache_mag_ratios, s.cache_calibrate,
             (s.cache, s.cache_threshold) if pinned else None)
    place = placement(device=cfg.device, dtype=cfg.dtype, t5_dtype=cfg.t5_dtype, vae_dtype=cfg.vae_dtype,
                      t5_cpu=cfg.t5_cpu, offload_model=cfg.offload_model, local_rank=ctx.local_rank)
    return (cfg.model.name, _ckpt_fingerprint(cfg.ckpt_dir), place, p.fsdp, p.t5_fsdp, p.vae_parallel, p.backend,
            tuple(sorted(ctx.degrees.items())), id(ctx.mesh), speed)   # the mesh: MeshCache keeps one per layout


class EngineCache:
    """At most one Engine per process, reused by every run whose engine_key matches: a sweep over sampling settings
    loads the models once. A different key drops the old engine before loading the new one (never two in memory)."""

    def __init__(self):
        self.key: tuple | None = None
        self.engine: Engine | None = None
        self.loads = 0                  # engines built by this process
        self.checked: dict = {}         # (model, checkpoint fingerprint) -> its report (check_checkpoint)

    def get(self, cfg, ctx: RunContext, items=(), cache_base=None) -> tuple[Engine, bool]:
        """(engine, reused). Every rank decides the same (world-wide agreement), so the load collectives match."""
        key = engine_key(cfg, ctx)
        reuse = not ctx.world_any(not (self.engine is not None and key == self.key))   # collective: every rank
        if reuse:
            self.engine.generator.boundary = cfg.model.boundary
            self.engine.generator.clear_text_cache()
            return self.engine, True
        self.drop()
        self.engine, self.key = build_engine(cfg, ctx, items, cache_base), key
        self.loads += 1
        return self.engine, False

    def drop(self) -> None:
        if self.engine is None:
            return
        self.engine = self.key = None
        gc.collect()
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def import_libraries() -> None:
    """The model classes every Wan model uses (diffusers alone takes seconds to import), imported once when a
    process's Session opens: part of the process's start-up, like the interpreter's imports, not of its first job's
    time. The solver's scheduler is imported where the run builds one (pipeline/schedule.py), the one it uses only."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel  # noqa: F401
    from transformers import AutoTokenizer, UMT5EncoderModel  # noqa: F401


class Session:
    """One process's state across runs (the jobs of a Hydra sweep, entry.py): the process group with a mesh per
    layout (distributed.mesh.MeshCache, which owns the group) and the loaded models (EngineCache). `close()` at
    process exit destroys the process group if this session created it."""

    def __init__(self):
        import_libraries()
        self.meshes = MeshCache()
        self.engines = EngineCache()

    def close(self) -> None:
        self.engines.drop()
        self.meshes.close()


def run(cfg, ctx: RunContext | None = None, work: WorkSource | None = None, *, layout=None,
        stop: StopFlag | None = None, engines: EngineCache | None = None, job: JobPart | None = None) -> ExitCode:
    """One run over `work`'s rows on this process's place in the run (`ctx`); every rank of the run calls it.
    `stop`: the process's stop flag (entry.py installs one for the whole process, so a signal that arrives during
    start-up or teardown is never fatal); a private one is installed for the run when none is given.
    `engines`: the process's EngineCache (models reused across runs); a private one (load, then drop) when None.
    `job`: set when this run is one part of a driver's job (see JobPart)."""
    ctx = ctx or RunContext()
    work = work or make_source(cfg.work)
    stop = (stop or StopFlag()).install()  # a stop signal during validation or loading ends at the first safe point
    try:
        return _run(cfg, ctx, work, stop, layout, engines or EngineCache(), job)
    finally:
        stop.restore()


def _run(cfg, ctx, work, stop, layout, engines: EngineCache, job: JobPart | None = None) -> ExitCode:
    try:
        items, run_settings = prepare_batch(cfg, ctx, layout, engines.checked)
        cache_base = cache_settings(cfg, get_model(cfg.model.name))     # reads sample.cache_mag_ratios
        out = OutputDir(cfg.out_dir, writer=job.writer if job else None, claim_timeout_s=cfg.batch.claim_timeout_s,
                        tags=writer_tags(work, ctx))
        doc = None if job else {"config": config_mod.to_dict(cfg), "versions": versions(), "layout": ctx.describe(),
                                "work": work.describe() if hasattr(work, "describe") else {}, "argv": sys.argv[1:],
                                "run_id": out.writer,
                                "manifest_path": cfg.manifest and os.path.abspath(cfg.manifest)}
        kind, run_id = ctx.share_from_main(lambda: open_out_dir(out, doc))   # the main rank's writer names the run
    except ValueError as e:
        return user_error(ctx, e)
    if kind == "unwritable":
        if ctx.is_main:
            print(f"error: {run_id}", file=sys.stderr, flush=True)
        return ExitCode.IOERR
    if job is not None:
        return _run_part(cfg, ctx, work, stop, items, run_settings, out, engines, job, cache_base)
    sink = make_sink(cfg, out.root, is_logger=ctx.is_main, run_id=run_id)
    sink.log_config(config_mod.to_dict(cfg))
    model_load_s, total = _make_rows(cfg, ctx, work, stop, items, run_settings, out, run_id, sink, engines, {},
                                     cache_base)
    code = outcome(total)
    if ctx.is_main:
        out.ledger.write_merged_view()
        sink.log_summary({"done": total.done, "skipped": total.skipped, "failed": total.failed,
                          "model_load_s": model_load_s})
        log.info("summary: %s", total.line())
        log.info("outputs: %s (videos/, results.jsonl)", out.root)
    sink.close()
    out.drop_partial()
    return code


def _make_rows(cfg, ctx, work, stop, items, run_settings, out, run_id, sink, engines: EngineCache,
               extra_layout: dict, cache_base=None) -> tuple[float, Summary]:
    """Load (or reuse) the models, run the batch over the work source: (this run's model load seconds, the run's
    total Summary, which every rank agrees on). A run with nothing to make loads nothing (see idle_run)."""
    if idle_run(cfg, ctx, work, items, out):
        return 0.0, _skip_rows(cfg, ctx, work, stop, items, run_settings, out, run_id, sink, extra_layout)
    engine, reused = engines.get(cfg, ctx, items, cache_base)
    model_load_s = 0.0 if reused else engine.model_load_s     # this run's load (charged to its first video)
    compile_s = 0.0 if reused else engine.compile_s           # likewise the compile stage
    spec = get_model(cfg.model.name)
    progress = Progress(enabled=cfg.batch.progress and ctx.is_main)
    engine.generator.on_step = progress.step
    run_info = {"run_id": run_id, "model_load_s": round(model_load_s, 6),
                "load_seconds": {} if reused else engine.load_seconds,
                "checkpoint_dtype": engine.checkpoint_dtype, **engine.placement.describe(),
                "ckpt_dir": str(cfg.ckpt_dir), "compile_s": round(compile_s, 6), **engine.speed,
                # reused: the models an earlier run of this process loaded (in `loaded_s`); loads: how many times
                # this process has loaded models so far (1 for a whole sweep over sampling settings)
                "engine": {"reused": reused, "loads": engines.loads, "loaded_s": round(engine.model_load_s, 6)}}
    layout_info = {**ctx.describe(), **engine.parallel.describe(), **extra_layout}
    runner = BatchRunner(cfg=cfg, spec=spec, generator=engine.generator, out=out, ctx=ctx, work=work,
                         model_load_s=model_load_s, run_info=run_info, layout=layout_info, sink=sink,
                         progress=progress, stop=stop, run_settings=run_settings, compile_s=compile_s)
    if ctx.is_main:
        how = "reused (loaded earlier in this process)" if reused else f"loaded in {engine.model_load_s:.2f}s"
        log.info("model %s %s (%s on %s); %d item(s) in the manifest, work source %s", spec.name, how,
                 run_info["dtype"], run_info["device"], len(items), work.name)
    return model_load_s, _run_batch(runner, ctx, items)


def _run_batch(runner: BatchRunner, ctx, items) -> Summary:
    """The batch loop on this rank, then the run's total Summary, which every rank agrees on."""
    summary = runner.run(items)
    ctx.wait_all_done()                    # every replica's sidecars and ledger lines are on disk
    return Summary.total([s for s in ctx.gather(summary if ctx.is_writer else None) if s is not None])


def idle_run(cfg, ctx, work, items, out: OutputDir) -> bool:
    """True when no row of this run is to be made: every row any of its replicas may take is already made with these
    settings, failed before (batch.retry_failed off) or made with other settings that batch.on_change keeps or
    refuses. Then the models are not loaded: a finished batch rerun, a requeued Slurm array task whose share is done,
    or an array task with an empty share ends in seconds. Decided once on the main rank for the whole run (the
    models load collectively); the runner still decides each row as it comes."""
    if not hasattr(work, "run_share"):
        return False
    rows = work.run_share(items, ctx)
    idle = bool(ctx.share_from_main(lambda: nothing_to_make(out, rows, retry_failed=cfg.batch.retry_failed,
                                                            on_change=cfg.batch.on_change), patient=True))
    if idle and ctx.is_main:
        log.info("nothing to make: the %d row(s) of this run are already made (or settled) in %s; models not loaded",
                 len(rows), out.root)
    return idle


def _skip_rows(cfg, ctx, work, stop, items, run_settings, out, run_id, sink, extra_layout: dict) -> Summary:
    """The batch loop with no models: each row is skipped (and counted) as the runner decides it."""
    runner = BatchRunner(cfg=cfg, spec=get_model(cfg.model.name), generator=None, out=out, ctx=ctx, work=work,
                         model_load_s=0.0,
                         run_info={"run_id": run_id, "model_load_s": 0.0, "engine": {"reused": False, "loaded": False}},
                         layout={**ctx.describe(), **extra_layout}, sink=sink,
                         progress=Progress(enabled=cfg.batch.progress and ctx.is_main), stop=stop,
                         run_settings=run_settings)
    return _run_batch(runner, ctx, items)


def _run_part(cfg, ctx, work, stop, items, run_settings, out, engines: EngineCache, job: JobPart,
              cache_base=None) -> ExitCode:
    """One part of a driver's job: no config.yaml, no results.jsonl, no logger here (the driver owns them)."""
    from .observability.sinks import NullSink
    _, total = _make_rows(cfg, ctx, work, stop, items, run_settings, out, job.run_id, NullSink(), engines, job.layout,
                          cache_base)
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


def main(cfg, stop: StopFlag | None = None, session: Session | None = None) -> ExitCode:
    """The torchrun (or plain single-process) path: every rank calls it with the same composed config.
    `session`: the process's Session, kept across calls (a sweep: the process group, meshes and models survive
    between jobs; the caller closes it); without one, a private session is opened and closed around this run."""
    rank, world, local_rank = env_world()
    setup_logging(rank)
    try:
        lay = check_layout(cfg, world)     # ValueError before any process group exists
        device = resolve_device(cfg.device, local_rank)
    except ValueError as e:
        return user_error(RunContext(rank=rank), e)
    own = session is None
    session = session or Session()
    try:
        ctx = session.meshes.context(lay, device, cfg.parallel.backend, local_rank)
        try:
            digest = config_mod.config_digest(cfg)
            if ctx.world_any(ctx.share_from_main(lambda: digest) != digest):
                raise ValueError(f"config: a rank composed a different config than rank 0 (sha {digest[:12]} on "
                                 f"rank {ctx.rank}); every rank must get the same argv and files")
            work = make_source(cfg.work)
        except ValueError as e:
            return user_error(ctx, e)
        return worst(ctx.gather(int(run(cfg, ctx, work, layout=lay, stop=stop, engines=session.engines))))
    finally:
        if own:
            session.close()

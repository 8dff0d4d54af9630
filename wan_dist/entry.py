"""Process start-up for `launch/run.py` (the Hydra entry and torchrun worker): overrides checked, config composed,
the worker run, the outcome recorded for the supervisor (wan_dist/outcome.py) and turned into the exit code.

A Hydra multirun (sweep: `-m`, or an experiment that sets hydra.mode=MULTIRUN) runs one job per setting in this
process, all in one worker.Session: the process group, its meshes and the loaded models survive between jobs, so a
sweep over sampling settings loads the models once. Each job writes into `out_dir/<n>_<swept key=value,...>`
(sweep.job_dir_name: named by the swept keys only, sanitised), created only once the job's inputs are valid. The
sweep exits with the most urgent code of its jobs (exit_codes.worst) and lists every job's code at the end.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path

from . import config as config_mod
from . import outcome
from .exit_codes import ExitCode, worst
from .process import collector_paused

log = logging.getLogger("wan_dist")

# never part of a job's directory name, even when swept: paths and free text (slashes, spaces, secrets in names)
NAMELESS_KEYS = ("out_dir", "ckpt_dir", "manifest", "prompt", "image")
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._=,+-")


def _print_once(msg: str) -> None:
    if int(os.environ.get("RANK", 0)) == 0:
        print(msg, file=sys.stderr, flush=True)


def sweep_keys(overrides) -> set[str]:
    """Keys that a list of override strings sweeps (`k=a,b`, `k=range(..)`, `k=choice(..)`, `k=glob(..)`); a string
    that does not parse (another sweeper's own syntax) sweeps nothing here."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    parser, keys = OverridesParser.create(), set()
    for o in overrides:
        if o.startswith("-"):
            continue
        try:
            (parsed,) = parser.parse_overrides([o])
        except HydraException:
            continue
        if parsed.is_sweep_override():
            keys.add(parsed.key_or_group)
    return keys


def job_dir_name(num: int, task_overrides, swept: set[str], max_len: int = 150) -> str:
    """`<num>_<k=v,...>` from this job's values of the swept keys only (sorted; never NAMELESS_KEYS or hydra.*),
    every character outside [A-Za-z0-9._=,+-] replaced by `_`, so a name is one directory level, never a path."""
    import hashlib

    from hydra.core.override_parser.overrides_parser import OverridesParser
    parts = sorted(f"{o.key_or_group}={o.get_value_element_as_str()}"
                   for o in OverridesParser.create().parse_overrides(list(task_overrides))
                   if o.key_or_group in swept and o.key_or_group not in NAMELESS_KEYS
                   and not o.key_or_group.startswith("hydra"))
    name = "".join(c if c in _NAME_OK else "_" for c in ",".join(parts)) or "base"
    if len(name) > max_len:
        name = name[:max_len - 9] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{num}_{name}"


def job(dc, stop=None, state: dict | None = None, argv_swept: frozenset = frozenset(),
        jobs: list | None = None, run=None) -> ExitCode:
    """One Hydra job: composed DictConfig -> RunConfig -> worker.main, in the process's worker.Session
    (`state["session"]`, opened by the first valid job: a config error costs no torch import). `run(cfg, stop=)`,
    when given, runs the job instead (launch/ray_run.py passes the Ray driver, which loads no models itself)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf
    data = OmegaConf.to_container(dc, resolve=True)
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    record = {"name": str(data.get("out_dir")), "code": None, "seconds": 0.0, "multirun": multirun}
    if multirun:   # a sweep: one sub-directory per setting under out_dir, named by the swept keys only
        params = hc.sweeper.get("params") or {}
        swept = set(argv_swept) | sweep_keys([f"{k}={v}" for k, v in params.items()])
        record["name"] = job_dir_name(hc.job.num, hc.overrides.task, swept)
        record["root"] = str(data["out_dir"])
        data["out_dir"] = os.path.join(data["out_dir"], record["name"])
        logger = data.get("logger")
        if isinstance(logger, dict) and logger.get("group") is None:   # the sweep's W&B runs share one group
            logger["group"] = Path(record["root"]).resolve().name
    if jobs is not None:
        jobs.append(record)
    t0 = time.perf_counter()
    try:
        cfg = config_mod.from_dict(data)
    except ValueError as e:
        _print_once(f"config error{' (job ' + record['name'] + ')' if multirun else ''}: {e}")
        record["code"] = int(ExitCode.USAGE)
        return ExitCode.USAGE
    if run is None:
        state = {} if state is None else state
        if state.get("session") is None:
            with collector_paused():    # torch, diffusers, transformers: the process's start-up (wan_dist/process.py)
                from .worker import Session
                state["session"] = Session()
        from .worker import main

        def run(cfg, stop):
            return main(cfg, stop=stop, session=state["session"])
    t0 = time.perf_counter()            # the job's own time: not the interpreter's one-time imports above
    try:
        code = run(cfg, stop=stop)
    except Exception:
        if not multirun:
            raise
        log.error("job %s crashed:\n%s", record["name"], traceback.format_exc())
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            # the other ranks may be inside a collective of this job: going on to the next job could pair
            # mismatched collectives; a crash ends this rank (and so the group), like a crash of a single run
            outcome.exit_with(ExitCode.CRASH, f"job {record['name']} crashed")
        code = ExitCode.CRASH
    record["code"], record["seconds"] = int(code), time.perf_counter() - t0
    return code


def _sweep_summary(jobs: list[dict], code: ExitCode) -> None:
    """Every job's outcome, the failed ones named last; an all-rejected sweep leaves no directory behind."""
    total = sum(j["seconds"] for j in jobs)
    lines = [f"sweep: {len(jobs)} job(s) in {total:.2f} s, exit {int(code)} ({code.meaning})"]
    lines += [f"  {j['name']}: exit {j['code']} ({ExitCode(j['code']).meaning}), {j['seconds']:.2f} s" for j in jobs]
    failed = [j["name"] for j in jobs if j["code"] != 0]
    if failed:
        lines.append(f"sweep: {len(failed)} of {len(jobs)} job(s) failed: {', '.join(failed)}")
    _print_once("\n".join(lines))
    root = Path(jobs[0]["root"])
    if int(os.environ.get("RANK", 0)) == 0 and all(j["code"] == ExitCode.USAGE for j in jobs) and root.is_dir():
        leftover = [p.name for p in root.iterdir()]
        if leftover == ["multirun.yaml"] or not leftover:     # only what Hydra's sweeper wrote: remove it
            (root / "multirun.yaml").unlink(missing_ok=True)
            root.rmdir()


def hydra_main(argv: list[str] | None = None, run=None) -> None:
    """`python launch/run.py [overrides]`: never returns (exits with the run's code, see outcome.exit_with).
    `run(cfg, stop=) -> ExitCode` runs one composed job (default: worker.main in the process's Session)."""
    import hydra

    from .batch.preempt import StopFlag
    argv = sys.argv[1:] if argv is None else argv
    # one stop flag for the whole process (every job of a sweep): a SIGTERM / SIGUSR1 / SIGINT at any moment, even
    # before the first item or after the last, is a request to stop at a safe point, never a kill
    stop = StopFlag().install()
    outcome.mark_started()               # from now on the supervisor may forward signals to this process
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        config_mod.check_overrides(overrides)
        argv_swept = frozenset(sweep_keys(overrides))
    except ValueError as e:
        _print_once(f"config error: {e}")
        outcome.exit_with(ExitCode.USAGE, str(e))
    config_mod.register_configs()
    state: dict = {"session": None}     # worker.Session: process group, meshes, models kept across a sweep's jobs
    jobs: list[dict] = []

    @hydra.main(version_base="1.3", config_path=str(config_mod.CONF_DIR), config_name="config")
    def _main(dc) -> int:
        try:
            return int(job(dc, stop, state, argv_swept, jobs, run))   # hydra/launcher=slurm sends it back this way
        finally:
            if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and state["session"] is not None:
                # a job of a Slurm sweep runs alone in its own process on a node: nothing to keep for a next job
                state["session"].close()
                state["session"] = None

    try:
        _main()
    finally:
        if state["session"] is not None:
            state["session"].close()
    if not jobs and "wan_dist.slurm.sweep" in sys.modules:   # the sweep's jobs ran on Slurm nodes
        codes = list(sys.modules["wan_dist.slurm.sweep"].codes)
        code = worst(codes) if codes else ExitCode.CRASH
        _print_once(f"sweep: {len(codes)} job(s) on Slurm, exit codes {codes} -> {int(code)} ({code.meaning})")
        outcome.exit_with(code, code.meaning)
    codes = [j["code"] for j in jobs if j["code"] is not None]
    code = worst(codes) if codes and len(codes) == len(jobs) else ExitCode.CRASH
    done = [j for j in jobs if j["code"] is not None]
    if done and done[0]["multirun"]:
        _sweep_summary(done, code)
    outcome.exit_with(code, ExitCode(code).meaning)

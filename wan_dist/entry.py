"""Process start-up for `launch/run.py` (the Hydra entry and torchrun worker): overrides checked, config composed,
the worker run, the outcome recorded for the supervisor (wan_dist/outcome.py) and turned into the exit code.

A Hydra multirun (sweep) runs one job per setting in this process; the sweep exits with the most urgent code of its
jobs (exit_codes.worst), each job's code is logged.
"""
from __future__ import annotations

import logging
import os
import sys

from . import config as config_mod
from . import outcome
from .exit_codes import ExitCode, worst

log = logging.getLogger("wan_dist")


def _print_once(msg: str) -> None:
    if int(os.environ.get("RANK", 0)) == 0:
        print(msg, file=sys.stderr, flush=True)


def job(dc, stop=None, run=None) -> ExitCode:
    """One Hydra job: composed DictConfig -> RunConfig -> `run(cfg, stop=)` (default worker.main: torchrun or one
    process; launch/ray_run.py passes the Ray driver)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf
    data = OmegaConf.to_container(dc, resolve=True)
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:  # a sweep: one sub-directory per setting under out_dir
        data["out_dir"] = os.path.join(data["out_dir"], f"{hc.job.num}_{hc.job.override_dirname or 'base'}")
    try:
        cfg = config_mod.from_dict(data)
    except ValueError as e:
        _print_once(f"config error: {e}")
        return ExitCode.USAGE
    if run is None:
        from .worker import main as run
    return run(cfg, stop=stop)


def hydra_main(argv: list[str] | None = None, run=None) -> None:
    """`python launch/run.py [overrides]`: never returns (exits with the run's code, see outcome.exit_with).
    `run(cfg, stop=) -> ExitCode` runs one composed job (default: worker.main)."""
    import hydra

    from .batch.preempt import StopFlag
    argv = sys.argv[1:] if argv is None else argv
    # one stop flag for the whole process (every job of a sweep): a SIGTERM / SIGUSR1 / SIGINT at any moment, even
    # before the first item or after the last, is a request to stop at a safe point, never a kill
    stop = StopFlag().install()
    outcome.mark_started()               # from now on the supervisor may forward signals to this process
    try:
        config_mod.check_overrides([a for a in argv if not a.startswith("-")])
    except ValueError as e:
        _print_once(f"config error: {e}")
        outcome.exit_with(ExitCode.USAGE, str(e))
    config_mod.register_configs()
    codes: list[int] = []

    @hydra.main(version_base="1.3", config_path=str(config_mod.CONF_DIR), config_name="config")
    def _main(dc) -> None:
        codes.append(int(job(dc, stop, run)))

    _main()
    code = worst(codes) if codes else ExitCode.CRASH
    if len(codes) > 1:
        log.info("sweep: %d job(s), exit codes %s -> %d", len(codes), codes, code)
    outcome.exit_with(code, ExitCode(code).meaning)

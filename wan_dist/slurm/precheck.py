"""Before a Slurm job starts its ranks: what files alone decide, in about a second and without torch.

    config     the overrides compose and validate (config.compose: the same checks the run makes first); a
               ValueError -> exit 2 before any rank exists
    manifest   every row reads and gets its id (manifest.read_ids: types, ids, duplicates) -> exit 2 likewise
    share      the job's rows (its array share for work.source=array, else every row) are settled already: each one
               complete by the runner's own test (OutputDir.is_complete) or, without batch.retry_failed, failed
               before -> exit 0 without starting a rank. A rerun of a 1000-task array then loads models only in
               the tasks that still have work
Anything else (the layout against the world size, images, sizes, the checkpoint) is left to the run, which checks
all of it again anyway; an unexpected problem here never stops a run, it only skips the shortcut.
"""
from __future__ import annotations

import sys

from ..batch.manifest import read_ids
from ..batch.outputs import OutputDir
from ..batch.work import ArrayShare, array_task_of, make_source
from ..config import compose
from ..exit_codes import ExitCode


def _say(msg: str) -> None:
    print(f"wan-dist slurm-job: {msg}", file=sys.stderr, flush=True)


def replicas(cfg, world: int) -> int | None:
    """Data-parallel replicas of a run of `world` ranks (None when the layout does not fit: the run says why)."""
    p = cfg.parallel
    size = p.cfg * p.ulysses * p.ring
    dp = p.dp if p.dp > 0 else world // size
    return dp if dp >= 1 and dp * size == world else None


def precheck(overrides: list[str], world: int, env) -> ExitCode | None:
    """USAGE (message printed), OK (nothing left to do here), or None: start the run."""
    try:
        cfg = compose([o for o in overrides if not o.lstrip("+~").startswith("hydra")])
        rows = read_ids(cfg.manifest) if cfg.manifest else None
        work = make_source(cfg.work, env)
    except ValueError as e:
        _say(f"error: {e}")
        return ExitCode.USAGE
    if rows is None:
        return None
    if isinstance(work, ArrayShare):
        dp = replicas(cfg, world)
        if dp is None:
            return None
        rows = [(i, item_id) for i, item_id in rows if array_task_of(i, work.tasks, dp) == work.task]
    out = OutputDir(cfg.out_dir)
    if not out.root.is_dir():
        return None
    latest = out.ledger.latest()

    def settled(item_id: str) -> bool:
        rec = latest.get(item_id)
        if rec is not None and rec.get("status") == "failed" and not cfg.batch.retry_failed:
            return True
        return out.is_complete(item_id, rec)

    if all(settled(item_id) for _, item_id in rows):
        _say(f"all {len(rows)} row(s) of this job's share are done already (or failed before, without "
             "batch.retry_failed): nothing to run")
        return ExitCode.OK
    return None

"""Before a Slurm job starts its ranks: the user errors that files alone reveal, in about a second, without torch.

    config     the overrides compose and validate (config.compose: the same checks the run makes first)
    manifest   every row reads and gets its id (manifest.read_ids: the strict reader, column values, ids)
    work       the work source can be built (an array share needs SLURM_ARRAY_TASK_ID or work.array_task)

A ValueError from any of them ends the job with exit 2 before a single rank (or a torch import) exists, so a bad
manifest submitted as a 1000-task array costs each task a second. Everything else (the layout against the world
size, images, sizes, the checkpoint, out_dir, changed settings) is left to the run, which checks all of it again
anyway. Whether ids are already done is left to the run too: skipping a task here would bypass the run's settings
check (batch.on_change), which needs the models' request objects and the checkpoint's identity.
"""
from __future__ import annotations

import sys

from ..batch.manifest import read_ids
from ..batch.work import make_source
from ..config import compose
from ..exit_codes import ExitCode


def precheck(overrides: list[str], env) -> ExitCode | None:
    """ExitCode.USAGE (the message printed) or None: start the run."""
    try:
        cfg = compose([o for o in overrides if not o.lstrip("+~").startswith("hydra")])
        if cfg.manifest:
            read_ids(cfg.manifest)
        make_source(cfg.work, env)
    except ValueError as e:
        print(f"wan-dist slurm-job: error: {e}", file=sys.stderr, flush=True)
        return ExitCode.USAGE
    return None

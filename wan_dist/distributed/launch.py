"""Start-up of a run: single process, or (under torchrun with WORLD_SIZE > 1) the distributed layout."""
from __future__ import annotations

import sys

from ..batch.manifest import ManifestError
from ..models.checkpoint import CheckpointError
from .context import env_world


def run_distributed_or_local(cfg) -> int:
    from .. import run as run_mod
    rank, world, _ = env_world()
    try:
        if world > 1:
            from .runtime import run_distributed
            return run_distributed(cfg)
        return run_mod.run(cfg)
    except (ManifestError, CheckpointError, ValueError) as e:
        # user errors: one clear message, no traceback, nothing written
        print(f"error: {e}", file=sys.stderr)
        return 2

"""What a run records about itself: library versions and the git sha of the code (config.yaml, sidecars)."""
from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path


@functools.lru_cache(maxsize=1)   # one `git` process per process, not one per run (a sweep runs many)
def git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except Exception:
        return None


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def v(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None
    return {"python": platform.python_version(), "torch": v("torch"), "diffusers": v("diffusers"),
            "transformers": v("transformers"), "wan_dist_git": git_sha()}

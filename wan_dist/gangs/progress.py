"""The Ray job's progress, shown by the driver: a tqdm bar of rows on a terminal, a log line per row otherwise.

The gangs' own rank 0 still reports its denoising steps (batch.progress); Ray forwards those lines to the driver's
terminal with the rank's name in front.
"""
from __future__ import annotations

import logging
import sys

log = logging.getLogger("wan_dist.ray")


class JobProgress:
    def __init__(self, total: int, enabled: bool = True, stream=None):
        self.total, self.enabled = total, enabled
        self.stream = stream or sys.stderr
        self.n = 0
        self._bar = None
        if enabled and total and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc="rows", unit="row", file=self.stream)

    def row(self, e: dict, max_attempts: int) -> None:
        """One event of the queue: {"id", "outcome", "gang", "attempt", "final"}."""
        final = e.get("final")
        if final is not None:
            self.n += 1
        if e["outcome"] in ("failed", "lost"):        # a warning, shown even with batch.progress=false
            then = "recorded failed" if final == "failed" else "queued again"
            log.warning("row %s %s on gang %d (attempt %d of %d): %s", e["id"],
                        "failed" if e["outcome"] == "failed" else "lost with its gang", e["gang"], e["attempt"],
                        max_attempts, then)
        if final is None or not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(1)
        else:
            log.info("row %d/%d %s: %s (gang %d)", self.n, self.total, final, e["id"], e["gang"])

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

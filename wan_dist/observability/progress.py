"""Progress on rank 0: tqdm bars for items and steps on a TTY, a log line every ~10 % otherwise."""
from __future__ import annotations

import logging
import sys

log = logging.getLogger("wan_dist.progress")


class Progress:
    def __init__(self, enabled: bool = True, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._items = None
        self._steps = None
        self._last_pct = -1
        self._item = ""
        self._n_items = 0

    def item_start(self, n: int, total: int, item_id: str) -> None:
        if not self.enabled:
            return
        self._item, self._n_items = item_id, total
        if self.tty:
            from tqdm import tqdm
            if self._items is None:
                self._items = tqdm(total=total, desc="videos", unit="video", position=0, file=self.stream)
        else:
            log.info("video %d/%d: %s", n + 1, total, item_id)

    def item_end(self, ok: bool) -> None:
        if not self.enabled:
            return
        if self._steps is not None:
            self._steps.close()
            self._steps = None
        if self._items is not None:
            self._items.update(1)
            if self._items.n >= self._items.total:
                self._items.close()
                self._items = None

    def step(self, i: int, total: int) -> None:
        if not self.enabled:
            return
        if self.tty:
            from tqdm import tqdm
            if self._steps is None:
                self._steps = tqdm(total=total, desc=f"  {self._item}", unit="step", position=1, leave=False,
                                   file=self.stream)
            self._steps.update(1)
            return
        pct = int(100 * (i + 1) / total)
        if i == 0:
            self._last_pct = -1
        if pct // 10 > self._last_pct // 10 or i + 1 == total:
            self._last_pct = pct
            log.info("  %s: step %d/%d (%d%%)", self._item, i + 1, total, pct)

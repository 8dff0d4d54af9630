"""Metrics sinks: where per-video rows and the run summary go. `null` imports nothing heavy (no wandb).

Interface (all methods must never raise into the batch):
    log_config(config: dict)            the resolved run config, once, before the first video
    log_video(sidecar: dict, mp4_path)  one finished video (its sidecar dict and the mp4 path)
    log_summary(summary: dict)          once at the end of the run
    close()

`make_sink` gives rank 0 of the world a `FiguresSink` (prints the four figures after each video and at the end of
the run, and forwards to W&B when `logger=wandb`); every other rank gets the `NullSink`: exactly one process logs.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .figures import RunTotals, run_line, video_line

log = logging.getLogger("wan_dist.sinks")


class NullSink:
    def log_config(self, config: dict) -> None: ...
    def log_video(self, sidecar: dict, mp4_path) -> None: ...
    def log_summary(self, summary: dict) -> None: ...
    def close(self) -> None: ...


def _safe(fn, *args):
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - a sink never fails the batch
        log.warning("metrics sink %s failed (%s: %s); continuing", getattr(fn, "__name__", fn), type(e).__name__, e)


class FiguresSink:
    """Rank 0's sink: prints the four figures and forwards everything to `inner` (NullSink or WandbSink).

    Videos made by other replicas (data parallel) are not logged where they are made (one process logs); at
    `log_summary` (after the run's final barrier) their sidecars, written during this run, are read from
    `out_dir/videos/` and forwarded, so the W&B table and the run figures cover every video of the run.

    Memory: only running totals (RunTotals) and the ids already logged are kept, never the sidecars themselves, so a
    long batch does not grow with every video."""

    def __init__(self, inner, out_dir, printer=print, run_id: str | None = None):
        self.inner = inner
        self.out_dir = Path(out_dir)
        self.run_id = run_id              # other processes writing into the same out_dir are not this run
        self.t_start = time.time()
        self.printer = printer
        self.totals = RunTotals()
        self.logged_ids: set[str] = set()   # ids only (the manifest holds them anyway); `_collect_others` skips these

    def _print(self, line: str) -> None:
        try:
            self.printer(line, flush=True)
        except TypeError:
            self.printer(line)

    def log_config(self, config: dict) -> None:
        _safe(self.inner.log_config, config)

    def log_video(self, sidecar: dict, mp4_path) -> None:
        item_id = str(sidecar.get("id"))
        if item_id not in self.logged_ids:   # ids are unique in a run; a repeat is never counted twice
            self.logged_ids.add(item_id)
            self.totals.add(sidecar)
        self._print(video_line(sidecar))
        _safe(self.inner.log_video, sidecar, mp4_path)

    def _collect_others(self) -> None:
        vdir = self.out_dir / "videos"
        if not vdir.is_dir():
            return
        found = []
        for p in vdir.glob("*.json"):
            try:
                if p.stat().st_mtime < self.t_start - 2.0 or p.stem in self.logged_ids:
                    continue
                sc = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            other_run = self.run_id is not None and (sc.get("run") or {}).get("run_id") != self.run_id \
                if isinstance(sc, dict) else True
            if isinstance(sc, dict) and "timings" in sc and str(sc.get("id")) not in self.logged_ids \
                    and not other_run:
                found.append((p.stat().st_mtime, sc))
        for _, sc in sorted(found, key=lambda x: x[0]):
            mp4 = self.out_dir / (sc.get("outputs") or {}).get("mp4", f"videos/{sc.get('id')}.mp4")
            self.log_video(sc, mp4)

    def log_summary(self, summary: dict) -> None:
        try:
            self._collect_others()
        except Exception as e:  # noqa: BLE001
            log.warning("could not read the other replicas' sidecars: %s", e)
        fig = self.totals.figures(summary.get("model_load_s"))
        self._print(run_line(fig))
        _safe(self.inner.log_summary, {**summary, **{f"run/{k}": v for k, v in fig.items()}})

    def close(self) -> None:
        _safe(self.inner.close)


def make_sink(cfg, out_dir, is_logger: bool, run_id: str | None = None):
    """Exactly one process logs (`is_logger`, rank 0 of the world); every other process gets the null sink.
    `logger=none` never imports wandb."""
    if not is_logger:
        return NullSink()
    inner = NullSink()
    if cfg.logger.kind == "wandb":
        try:
            from .wandb_sink import WandbSink
            inner = WandbSink(cfg, out_dir)
        except Exception as e:  # noqa: BLE001
            log.warning("W&B sink unavailable (%s: %s); continuing without W&B", type(e).__name__, e)
            inner = NullSink()
    return FiguresSink(inner, out_dir, run_id=run_id)

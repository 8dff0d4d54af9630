"""Metrics sinks: where per-video rows and the run summary go. `null` imports nothing heavy."""
from __future__ import annotations


class NullSink:
    def log_config(self, config: dict) -> None: ...
    def log_video(self, sidecar: dict, mp4_path) -> None: ...
    def log_summary(self, summary: dict) -> None: ...
    def close(self) -> None: ...


def make_sink(cfg, out_dir, is_logger: bool):
    """Exactly one process logs (`is_logger`); every other process gets the null sink."""
    if cfg.logger.kind == "none" or not is_logger:
        return NullSink()
    from .wandb_sink import WandbSink
    return WandbSink(cfg, out_dir)

"""Stage timer: wall-clock per named stage, synchronising CUDA before reading the clock so GPU work is counted."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


def sync(device) -> None:
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


class StageTimer:
    def __init__(self, device="cpu"):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    def now(self) -> float:
        sync(self.device)
        return time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        t0 = self.now()
        try:
            yield
        finally:
            self.seconds[name] += self.now() - t0

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

    def as_dict(self) -> dict[str, float]:
        return dict(self.seconds)

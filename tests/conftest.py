"""Shared fixtures: tiny native checkpoints written once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """tiny_ckpt("tiny-t2v") -> Path of a tiny native checkpoint (seed 0), written once per session."""
    from wan_dist.models.tiny import write_tiny_checkpoint
    root = tmp_path_factory.mktemp("tiny-ckpts")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = write_tiny_checkpoint(name, root / name, seed=0)
        return cache[name]
    return get


@pytest.fixture(scope="session")
def test_image(tmp_path_factory):
    """A deterministic 64x64 PNG (square: i2v/ti2v keep the requested size)."""
    from wan_dist.models.tiny import make_test_image
    path = tmp_path_factory.mktemp("img") / "square.png"
    make_test_image(path, 64, 64)
    return path


def pytest_configure(config):
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")

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


@pytest.fixture(scope="session")
def slurm_cluster():
    """The private two-node Slurm cluster (tests/cluster/): up for the session, stopped at its end even on failure.

    Skips (with the reason) only when the Debian packages are missing and cannot be installed (no apt, not root,
    apt failed); with the packages present, a failing bring-up is an error. WAN_DIST_SLURM_KEEP=1 leaves it running.
    """
    from cluster import slurm
    if os.geteuid() != 0:
        pytest.skip(f"Slurm tests start slurmctld/slurmd/munged as root; this is uid {os.geteuid()} "
                    "(CI runs as root: .ci/run)")
    with slurm.SessionLock():
        try:
            try:
                cluster = slurm.start()
            except slurm.SlurmUnavailable as e:
                pytest.skip(f"Slurm tests need the Debian packages slurmctld slurmd slurm-client munge: {e}")
            print(f"\n[slurm] cluster up in {cluster.up_seconds:.1f} s: {cluster.nodes} partition {cluster.partition}")
            yield cluster
        finally:
            if os.environ.get("WAN_DIST_SLURM_KEEP") != "1":
                slurm.stop(lock_held=True)

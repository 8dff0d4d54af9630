"""Hydra entry point; the torchrun worker. `python launch/run.py model=M ckpt_dir=D manifest=P.csv out_dir=O`.

Every rank composes the same config from the same argv. Process start-up only: the work is in wan_dist.worker (via
wan_dist.entry). Under `wan-dist torchrun` the exit code travels through wan_dist.outcome.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from wan_dist.entry import hydra_main  # noqa: E402

if __name__ == "__main__":
    hydra_main()

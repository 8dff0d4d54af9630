"""Hydra entry for a Ray cluster: gangs of ranks pull manifest rows from one queue (wan_dist/gangs/).

    python launch/ray_run.py model=M ckpt_dir=D manifest=P.csv out_dir=O ray.gangs=4 parallel.ulysses=2
    ray job submit --working-dir . -- python launch/ray_run.py ray.address=auto ...

The same config as launch/run.py plus the `ray` group; the same outputs, ledger and exit codes (0/2/3/74/75).
Process start-up only: the driver is wan_dist.gangs.driver.main.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from wan_dist.entry import hydra_main  # noqa: E402
from wan_dist.gangs.driver import main as ray_job  # noqa: E402

if __name__ == "__main__":
    hydra_main(run=ray_job)

"""Hydra entry point; the torchrun worker. `python launch/run.py model=M ckpt_dir=D manifest=P.csv out_dir=O`.

Every rank composes the same config from the same argv. Process start-up only: the work is in wan_dist.run.
"""
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from wan_dist import config as config_mod  # noqa: E402

config_mod.register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(dc: DictConfig) -> int:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    data = OmegaConf.to_container(dc, resolve=True)
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:  # a sweep: one sub-directory per setting under out_dir
        data["out_dir"] = os.path.join(data["out_dir"], f"{hc.job.num}_{hc.job.override_dirname or 'base'}")
    try:
        cfg = config_mod.from_dict(data)
    except ValueError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    from wan_dist.distributed.launch import run_distributed_or_local
    code = run_distributed_or_local(cfg)
    if hc.mode != RunMode.MULTIRUN and code:
        raise SystemExit(code)
    return code


if __name__ == "__main__":
    main()

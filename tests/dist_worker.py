"""torchrun worker for tests/test_distributed.py: several runs (model x layout) in ONE process group, so the suite
pays the torchrun + import start-up once. argv[1]: JSON list of {"overrides": [...], "dump": dir}; each run's exit
code goes to <dump>/rc<rank>. Not collected by pytest (no test_ prefix)."""
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from wan_dist import config as config_mod
from wan_dist.distributed.parallelize import DUMP_ENV
from wan_dist.worker import main as run_worker


def main() -> None:
    runs = json.loads(Path(sys.argv[1]).read_text())
    dist.init_process_group("gloo")        # open_context sees it and leaves it alone
    rank = dist.get_rank()
    try:
        for r in runs:
            os.environ[DUMP_ENV] = r["dump"]
            code = run_worker(config_mod.compose(r["overrides"]))
            Path(r["dump"]).mkdir(parents=True, exist_ok=True)
            Path(r["dump"], f"rc{rank}").write_text(str(int(code)))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

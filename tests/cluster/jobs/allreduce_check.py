"""Worker for torchrun_multinode.sbatch: gloo all_reduce over the whole world; rank 0 writes what every rank saw."""
import json
import os
import socket
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank, world = dist.get_rank(), dist.get_world_size()
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)                                           # sum of 1..world
me = {"rank": rank, "local_rank": int(os.environ["LOCAL_RANK"]), "node": os.environ.get("SLURMD_NODENAME"),
      "node_id": int(os.environ["SLURM_NODEID"]), "group_rank": int(os.environ["GROUP_RANK"]),
      "master": f'{os.environ["MASTER_ADDR"]}:{os.environ["MASTER_PORT"]}', "host": socket.gethostname()}
everyone = [None] * world
dist.all_gather_object(everyone, me)
if rank == 0:
    path = sys.argv[1]
    with open(path + ".tmp", "w") as f:
        json.dump({"world": world, "sum": t.item(), "ranks": everyone}, f)
    os.replace(path + ".tmp", path)
dist.destroy_process_group()

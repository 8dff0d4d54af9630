"""A distributed run under torchrun: check the layout, init, build the mesh, agree on the config, run, tear down.

Order (DESIGN §3, §5): every rule is checked before init_process_group; the process group is destroyed on every
exit path, errors included.
"""
from __future__ import annotations

import hashlib
import json
import logging

import torch.distributed as dist

from .. import config as config_mod
from .context import env_world
from .dist_context import DistContext
from .mesh import build_mesh, destroy_process_group, init_process_group, local_device, pick_backend

log = logging.getLogger(__name__)


def config_digest(cfg) -> str:
    return hashlib.sha256(json.dumps(config_mod.to_dict(cfg), sort_keys=True, default=str).encode()).hexdigest()


def check_same_config(cfg, m) -> None:
    """Rank 0 broadcasts the digest of its resolved config over the "world" axis; every rank compares."""
    obj = [config_digest(cfg) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(obj, group=m.group("world"), group_src=0)            # axis: world
    mine = config_digest(cfg)
    ok = DistContext(dmesh=m).world_any(mine != obj[0]) is False
    if not ok:
        raise ValueError(f"config: rank {dist.get_rank()} composed a different config (sha {mine[:12]}) than rank 0 "
                         f"({obj[0][:12]}); every rank must get the same argv and files")


def precheck_items(cfg, lay) -> None:
    """Rows that override size / frame_num must fit the sequence split too; raised before any process group."""
    if lay.sp == 1 or not cfg.manifest:
        return
    from ..batch.manifest import load_items
    from ..models.registry import get_model
    from .layout import check_items
    spec = get_model(cfg.model.name)
    check_items(load_items(cfg.manifest, cfg, spec), spec, lay)


def run_distributed(cfg) -> int:
    from ..run import run, setup_logging
    from .plan import ParallelPlan
    rank, world, local_rank = env_world()
    setup_logging(rank)
    config_mod.validate(cfg, world)            # -> layout.check_layout: ValueError before any process group
    from .layout import resolve_layout
    lay = resolve_layout(cfg, world)
    precheck_items(cfg, lay)
    device = local_device(cfg.device)
    owns_pg = not dist.is_initialized()        # a test worker may run several configs in one process group
    init_process_group(pick_backend(cfg.parallel.backend, device), device)
    try:
        m = build_mesh(lay, device)
        check_same_config(cfg, m)
        ctx = DistContext.from_mesh(m, local_rank)
        code = run(cfg, ctx, ParallelPlan(cfg, m, ctx))
        ctx.barrier()                          # uneven splits: replicas with fewer rows wait here, nobody hangs
        return code
    finally:
        if owns_pg:
            destroy_process_group()

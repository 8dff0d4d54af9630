"""The one owner of process groups: init, the DeviceMesh, named sub-meshes, teardown.

Mesh dims (outer -> inner): ("dp", "cfg", "ring", "ulysses"); ulysses is innermost so its all-to-alls stay between
neighbouring ranks (same node). Named sub-meshes built here once:
    replica  = cfg x ring x ulysses flattened  (FSDP shard group; replica-wide agreement and VAE split)
    sp       = ring x ulysses (the 2-D ("ring", "ulysses") slice diffusers' context parallelism wants)
    world    = every dim flattened (stop flags, config check)
Nothing else in wan-dist calls new_group / init_device_mesh. Under torchrun's shared agent store, init uses this
attempt's own store namespace (rendezvous.py) so a restarted group never reads a dead attempt's keys. A group that
torchrun does not start (a Ray gang, wan_dist/gangs/) rendezvouses through a TCPStore its rank 0 hosts
(`host_store` / `join_store` -> `StoreInit`); each gang (and each rebuild of it) gets a fresh store, so no stale key
can exist, and the gang's process group holds only its own ranks.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from .layout import Layout
from .rendezvous import attempt_store, uses_shared_agent_store

log = logging.getLogger(__name__)

DIMS = ("dp", "cfg", "ring", "ulysses")


def pick_backend(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    return "nccl" if device.type == "cuda" else "gloo"


@dataclass(frozen=True)
class StoreInit:
    """An explicit rendezvous (no torchrun environment): the store rank 0 hosts, this rank, the group size."""
    store: object
    rank: int
    world: int


def host_store(world: int, timeout=default_pg_timeout) -> dist.TCPStore:
    """The store of a new group, hosted by its rank 0 on a port the OS picks (port 0: no probe-then-bind race);
    `.port` tells the other ranks where to connect."""
    return dist.TCPStore("0.0.0.0", 0, world, is_master=True, wait_for_workers=False, timeout=timeout)


def join_store(host: str, port: int, world: int, timeout=default_pg_timeout) -> dist.TCPStore:
    return dist.TCPStore(host, int(port), world, is_master=False, timeout=timeout)


def init_process_group(backend: str, device: torch.device, init: StoreInit | None = None) -> None:
    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if init is not None:
        dist.init_process_group(backend=backend, store=init.store, rank=init.rank, world_size=init.world)
    elif uses_shared_agent_store():
        # torchrun shares one store across restarts: give this attempt its own namespace (rendezvous.py)
        store, rank, world = attempt_store(default_pg_timeout)
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world)
    else:
        dist.init_process_group(backend=backend)


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass
class Mesh:
    layout: Layout
    device: torch.device
    full: DeviceMesh        # ("dp", "cfg", "ring", "ulysses")
    replica: DeviceMesh     # 1-D: the ranks making one video together
    sp: DeviceMesh          # 2-D ("ring", "ulysses") of this rank's cfg half
    world: DeviceMesh       # 1-D: every rank

    def axis(self, name: str) -> DeviceMesh:
        """1-D mesh of one named axis ('dp', 'cfg', 'ring', 'ulysses', 'replica', 'world')."""
        if name == "replica":
            return self.replica
        if name == "world":
            return self.world
        return self.full[name]

    def group(self, name: str):
        return self.axis(name).get_group()

    def local_rank(self, name: str) -> int:
        return self.axis(name).get_local_rank()

    def size(self, name: str) -> int:
        return self.axis(name).size()


def build_mesh(layout: Layout, device: torch.device) -> Mesh:
    shape = (layout.dp, layout.cfg, layout.ring, layout.ulysses)
    assert dist.get_world_size() == layout.dp * layout.replica_size, "layout was checked before init"
    full = init_device_mesh(device.type, shape, mesh_dim_names=DIMS)
    replica = full["cfg", "ring", "ulysses"]._flatten("replica")
    world = full._flatten("world")
    mesh = Mesh(layout, device, full, replica, full["ring", "ulysses"], world)
    log.info("mesh %s = %s (replica %d of %d, rank %d in it)", dict(zip(DIMS, shape)), shape,
             mesh.local_rank("dp"), layout.dp, mesh.local_rank("replica"))
    return mesh


class MeshCache:
    """The process group and one Mesh per layout, kept for a whole process: a Hydra sweep runs several jobs in one
    process, and under torchrun the process group must outlive each job (it cannot be re-created cheaply, and the
    mesh's sub-groups are collective to build). Every `context()` is a fresh RunContext (its own store keys, its own
    stop flag) on the cached mesh of its layout. `close()` destroys the process group if this cache created it."""

    def __init__(self):
        self._meshes: dict[tuple, Mesh] = {}
        self._owns = False

    def context(self, layout: Layout, device: torch.device, backend: str = "auto", local_rank: int = 0,
                init: StoreInit | None = None):
        from .context import RunContext
        from .dist_context import DistContext
        if layout.dp * layout.replica_size == 1 and not dist.is_initialized():
            return RunContext(degrees=layout.degrees())
        if not dist.is_initialized():       # a test worker may run several configs in one process group of its own
            init_process_group(pick_backend(backend, device), device, init)
            self._owns = True
        key = (layout, str(device))
        if key not in self._meshes:         # every rank builds the same meshes in the same order (same jobs)
            self._meshes[key] = build_mesh(layout, device)
        return DistContext.from_mesh(self._meshes[key], local_rank)

    def close(self) -> None:
        self._meshes.clear()
        if self._owns:
            destroy_process_group()
            self._owns = False


@contextmanager
def open_context(layout: Layout, device: torch.device, backend: str = "auto", local_rank: int = 0,
                 init: StoreInit | None = None):
    """The RunContext of this process for `layout` (one run): single process when the layout is one rank (no process
    group), else init the process group (unless a caller already did; from `init` when given, else torchrun's
    environment), build the mesh and yield a DistContext; the group is destroyed on every exit path, errors
    included."""
    cache = MeshCache()
    try:
        yield cache.context(layout, device, backend, local_rank, init)
    finally:
        cache.close()

"""RunContext of one rank in a distributed run: its place in the mesh and the few collectives the batch layer needs.

Every collective names its mesh axis: replica-wide agreement uses the "replica" axis, stop flags the "world" axis.
Tensors: scalars packed into 1-D float64/int64 vectors on the run device (nccl needs device tensors).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .context import RunContext
from .mesh import Mesh


@dataclass
class DistContext(RunContext):
    dmesh: Mesh | None = None
    # steps this rank's replica ran with CFG off while parallel.cfg=2: the unconditional half had nothing to do.
    # Cumulative over the run; per item it equals the count of false entries in the sidecar's cfg_on.
    cfg_idle_steps: int = 0
    cfg_rank: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_mesh(cls, m: Mesh, local_rank: int) -> "DistContext":
        lay = m.layout
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                   dp_rank=m.local_rank("dp"), dp_size=lay.dp, replica_rank=m.local_rank("replica"),
                   replica_size=lay.replica_size, degrees=lay.degrees(), fsdp=lay.fsdp, mesh=m.full, dmesh=m,
                   cfg_rank=m.local_rank("cfg"))

    def _vec(self, values, dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=self.dmesh.device)

    def replica_all_ok(self, ok: bool) -> bool:
        t = self._vec([0 if ok else 1], torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.dmesh.group("replica"))   # axis: replica
        return int(t.item()) == 0

    def replica_max(self, values: dict[str, float]) -> dict[str, float]:
        keys = sorted(values)
        if not keys:
            return {}
        t = self._vec([float(values[k]) for k in keys], torch.float64)              # [n_keys]
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.dmesh.group("replica"))   # axis: replica
        return dict(zip(keys, t.tolist()))

    def world_any(self, flag: bool) -> bool:
        t = self._vec([1 if flag else 0], torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.dmesh.group("world"))     # axis: world
        return bool(t.item())

    def barrier(self) -> None:
        dist.barrier(group=self.dmesh.group("world"))                                 # axis: world

    def describe(self) -> dict:
        return {**super().describe(), "replica_rank": self.replica_rank, "replica_size": self.replica_size,
                "cfg_rank": self.cfg_rank, "t5_fsdp": self.dmesh.layout.t5_fsdp if self.dmesh else False,
                "backend": dist.get_backend() if dist.is_initialized() else None,
                "cfg_idle_steps": self.cfg_idle_steps}

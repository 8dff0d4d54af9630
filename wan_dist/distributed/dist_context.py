"""RunContext of one rank in a distributed run: its place in the mesh and the agreements the batch layer needs.

Every collective names its mesh axis: agreement inside a replica uses the "replica" axis, run-wide sharing the
"world" axis. Replicas are NOT in lock-step with each other (a fast replica never waits for a slow one per item), so
the world-wide signals that must not block go through the process group's store instead of a collective: a stop
request (`<run>/stop`, checked at every safe point), the end of the run (`<run>/done/<rank>`, polled without a
deadline) and a value rank 0 may take long to compute (`share_from_main(fn, patient=True)`: `<run>/main/<n>`).
Tensors: scalars packed into 1-D float64/int64 vectors on the run device (nccl needs device tensors).
"""
from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .context import RunContext

log = logging.getLogger(__name__)


@dataclass
class DistContext(RunContext):
    run_key: str = "wan_dist/run/0/"
    _shares: int = 0            # share_from_main(patient=True) calls of this run: the store key of each

    @classmethod
    def from_mesh(cls, m, local_rank: int) -> "DistContext":
        """`m`: the distributed.mesh.Mesh this rank belongs to (mesh.open_context builds it)."""
        lay = m.layout
        ctx = cls(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                  dp_rank=m.local_rank("dp"), dp_size=lay.dp, replica_rank=m.local_rank("replica"),
                  replica_size=lay.replica_size, degrees=lay.degrees(), mesh=m)
        import uuid
        ctx.run_key = f"wan_dist/run/{ctx.share_from_main(lambda: uuid.uuid4().hex)}/"   # store keys of this run only
        return ctx

    @property
    def store(self):
        return dist.distributed_c10d._get_default_store()

    def _vec(self, values, dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=self.mesh.device)

    # -- replica ------------------------------------------------------------------------------------------------
    def replica_all_ok(self, ok: bool) -> bool:
        if self.replica_size == 1:
            return ok
        t = self._vec([0 if ok else 1], torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.mesh.group("replica"))   # axis: replica
        return int(t.item()) == 0

    def replica_max(self, values: dict[str, float]) -> dict[str, float]:
        keys = sorted(values)
        if not keys or self.replica_size == 1:
            return dict(values)
        t = self._vec([float(values[k]) for k in keys], torch.float64)              # [n_keys]
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.mesh.group("replica"))   # axis: replica
        return dict(zip(keys, t.tolist()))

    def replica_share(self, obj):
        if self.replica_size == 1:
            return obj
        box = [obj if self.replica_rank == 0 else None]
        dist.broadcast_object_list(box, group=self.mesh.group("replica"), group_src=0)  # axis: replica
        return box[0]

    def _post_key(self, seq: int) -> str:
        return f"{self.run_key}post/{self.dp_rank}/{seq}"

    def replica_post(self, seq: int, obj) -> None:
        # through the store, not a collective: the takers may wait longer than the process group's timeout
        if self.replica_size > 1:
            self.store.set(self._post_key(seq), pickle.dumps(obj))
            if seq > 0:   # every taker has read seq-1: it took part in the work seq-1 asked for (collectives)
                self.store.delete_key(self._post_key(seq - 1))

    def replica_take(self, seq: int, idle=None, poll_s: float = 0.2):
        return self._take(self._post_key(seq), idle, poll_s)

    def _take(self, key: str, idle=None, poll_s: float = 0.2):
        """The object stored under `key`, waited for without a deadline (`idle()` about once a second meanwhile)."""
        last_idle = time.monotonic()
        # check + sleep, not store.wait with a timeout: each timed-out wait logs a c10d warning (hours of idling)
        while not self.store.check([key]):
            time.sleep(poll_s)
            if idle is not None and time.monotonic() - last_idle >= 1.0:
                idle()
                last_idle = time.monotonic()
        return pickle.loads(self.store.get(key))

    # -- world --------------------------------------------------------------------------------------------------
    def share_from_main(self, fn, patient: bool = False):
        if patient:
            return self._share_through_store(fn)
        box = [_boxed(fn) if self.rank == 0 else None]
        dist.broadcast_object_list(box, group=self.mesh.group("world"), group_src=0)    # axis: world
        return _unboxed(box[0])

    def _share_through_store(self, fn):
        # rank 0 may take longer than the process group's timeout (it reads out_dir): the others poll the store
        self._shares += 1
        key = f"{self.run_key}main/{self._shares}"
        if self.rank == 0:
            box = _boxed(fn)
            self.store.set(key, pickle.dumps(box))
        else:
            box = self._take(key)
        return _unboxed(box)

    def gather(self, obj) -> list:
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.mesh.group("world"))               # axis: world
        return out

    def world_any(self, flag: bool) -> bool:
        t = self._vec([1 if flag else 0], torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.mesh.group("world"))     # axis: world
        return bool(t.item())

    def announce_stop(self, reason: str) -> None:
        if self._stop is None:
            self._stop = reason
            self.store.set(self.run_key + "stop", f"{reason} (rank {self.rank})")

    def stop_announced(self) -> str | None:
        if self._stop is None and self.store.check([self.run_key + "stop"]):
            self._stop = self.store.get(self.run_key + "stop").decode()
        return self._stop

    def wait_all_done(self) -> None:
        self.store.set(f"{self.run_key}done/{self.rank}", "1")
        keys = [f"{self.run_key}done/{r}" for r in range(self.world_size)]
        t0 = time.monotonic()
        while True:
            try:
                self.store.wait(keys, timedelta(seconds=30))
                return
            except (dist.DistStoreError, RuntimeError):
                if time.monotonic() - t0 > 600:
                    log.info("waiting for the other replicas to finish their items")
                    t0 = time.monotonic()

    def barrier(self) -> None:
        dist.barrier(group=self.mesh.group("world"))                                  # axis: world

    def describe(self) -> dict:
        return {**super().describe(), "backend": dist.get_backend() if dist.is_initialized() else None}


def _boxed(fn) -> tuple:
    """fn()'s value, or its ValueError (a user error raised on rank 0 is raised on every rank), as a picklable box."""
    try:
        return "ok", fn()
    except ValueError as e:
        return "error", str(e)


def _unboxed(box: tuple):
    kind, value = box
    if kind == "error":
        raise ValueError(value)
    return value

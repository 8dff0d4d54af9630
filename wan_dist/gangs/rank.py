"""One rank of a Ray gang: a Ray actor (the driver wraps `Rank` with `ray.remote`).

The gang's ranks form their own process group, through a TCPStore its rank 0 hosts on a port the OS picks
(distributed/mesh.py owns both), and run the same worker code as torchrun: `worker.run(cfg, ctx, LeaseSource)`.
A rank actor is never restarted alone (a restarted rank cannot rejoin an existing process group): the driver kills
and rebuilds the whole gang, with a fresh store.

The actor runs two calls at once (max_concurrency=2): `run` (the batch) and `request_stop` (the driver's stop,
which sets the run's StopFlag: the batch stops at its next safe point, between items or denoise steps). `run`
therefore runs outside the process's main thread, so it installs no signal handlers (Ray owns the worker's signals).
"""
from __future__ import annotations

import os


class Rank:
    def __init__(self, gang: int, generation: int, rank: int, size: int):
        from ..batch.preempt import StopFlag
        self.gang, self.generation, self.rank, self.size = gang, generation, rank, size
        self.stop = StopFlag()
        self._store = None

    def __repr__(self) -> str:          # Ray prefixes this actor's log lines with it
        return f"gang{self.gang}.rank{self.rank}"

    def prepare(self) -> dict:
        """Rank 0: host the gang's store (several ranks) and name the gang's writer; returns where to connect."""
        import ray

        from ..batch.claims import writer_name
        info = {"host": ray.util.get_node_ip_address(), "pid": os.getpid(), "writer": writer_name(), "port": None}
        if self.size > 1:
            from ..distributed.mesh import host_store
            self._store = host_store(self.size)
            info["port"] = self._store.port
        return info

    def run(self, cfg, part: dict, dispenser) -> int:
        """The gang's share of the job; every rank of the gang calls it. Returns this rank's exit code."""
        from ..process import collector_paused
        with collector_paused():   # torch, diffusers, transformers: the actor's start-up (wan_dist/process.py)
            from .. import worker
            worker.import_libraries()
        from ..distributed.layout import check_layout
        from ..distributed.mesh import StoreInit, join_store, open_context
        from ..models.device import resolve_device
        from ..observability.logs import setup_logging
        from .lease import LeaseSource
        setup_logging(self.rank, tag=repr(self))
        lay = check_layout(cfg, self.size)            # the driver checked it too: a ValueError here is a bug
        device = resolve_device(cfg.device, 0)        # Ray gives each rank its own GPUs (CUDA_VISIBLE_DEVICES)
        init = None
        if self.size > 1:
            store = self._store if self.rank == 0 else join_store(part["host"], part["port"], self.size)
            init = StoreInit(store, self.rank, self.size)
        job = worker.JobPart(run_id=part["run_id"], writer=part["writer"],
                             layout={"launcher": "ray", "gang": self.gang, "gangs": part["gangs"],
                                     "generation": self.generation})
        with open_context(lay, device, cfg.parallel.backend, 0, init) as ctx:
            work = LeaseSource(dispenser, self.gang)
            return int(worker.run(cfg, ctx, work, layout=lay, stop=self.stop, job=job))

    def request_stop(self, signum: int, why: str) -> None:
        self.stop.request(signum, why)

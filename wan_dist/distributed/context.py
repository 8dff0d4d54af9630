"""Where this process sits in the run (rank, replica, writer role) and the few agreements the layers above need.

`RunContext` is the single-process run: every agreement is trivial. `DistContext` (dist_context.py) implements the
same methods with collectives that each name their mesh axis ("replica" or "world") and, for what must not block
(a stop request, the end of the run), with keys in the process group's store.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class RunContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    dp_rank: int = 0            # which replica this rank belongs to
    dp_size: int = 1            # number of replicas
    replica_rank: int = 0       # rank inside the replica (cfg x ulysses x ring)
    replica_size: int = 1
    degrees: dict = field(default_factory=lambda: {"dp": 1, "cfg": 1, "ulysses": 1, "ring": 1})
    mesh: object = None         # distributed.mesh.Mesh when distributed
    _stop: str | None = None

    @property
    def is_writer(self) -> bool:
        """Rank 0 of each replica writes that replica's outputs."""
        return self.replica_rank == 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- agreement inside a replica (its ranks make one video together, in lock-step) ------------------------------
    def replica_all_ok(self, ok: bool) -> bool:
        """True only if every rank of this replica says ok (so a failing item fails on all of them)."""
        return ok

    def replica_max(self, values: dict[str, float]) -> dict[str, float]:
        """Per-key max over the ranks of this replica (stage times: the slowest rank is the replica's time)."""
        return dict(values)

    def replica_share(self, obj):
        """The replica writer's `obj`, on every rank of the replica (e.g. what its claim decided)."""
        return obj

    def replica_post(self, seq: int, obj) -> None:
        """The replica writer hands `obj` (message number `seq`) to the other ranks of its replica without waiting
        for them (the UI's requests: a replica can sit idle for hours between two, longer than any collective's
        timeout, so the others wait in `replica_take`, not in a collective)."""

    def replica_take(self, seq: int, idle=None):
        """The writer's message `seq`, on the other ranks of the replica; waits for it without a deadline, calling
        `idle()` about once a second while it waits."""
        raise RuntimeError("replica_take: a single-process run has no writer to wait for")

    # -- across the world ----------------------------------------------------------------------------------------
    def share_from_main(self, fn, patient: bool = False):
        """fn() computed once, on rank 0 of the world, and its value (or its ValueError) on every rank. `patient`:
        the other ranks wait through the store, without the process group's timeout (fn may read a large out_dir)."""
        return fn()

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank (end of run: the replicas' summaries)."""
        return [obj]

    def world_any(self, flag: bool) -> bool:
        return flag

    def announce_stop(self, reason: str) -> None:
        """Tell every rank to stop at its next safe point (non-blocking: replicas are not in lock-step)."""
        self._stop = self._stop or reason

    def stop_announced(self) -> str | None:
        return self._stop

    def wait_all_done(self) -> None:
        """Every rank has finished its work (replicas finish at different times; waiting here never times out)."""

    def barrier(self) -> None:
        return None

    def describe(self) -> dict:
        return {"world_size": self.world_size, "rank": self.rank, "dp_rank": self.dp_rank,
                "replica_rank": self.replica_rank, "replica_size": self.replica_size, **self.degrees}


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment variables."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))

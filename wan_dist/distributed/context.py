"""Where this process sits in the run: rank, data-parallel share, replica role. Single-process by default."""
from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class RunContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    dp_rank: int = 0            # which replica this rank belongs to
    dp_size: int = 1            # number of replicas (manifest rows are dealt over these)
    replica_rank: int = 0       # rank inside the replica (cfg x ulysses x ring)
    replica_size: int = 1
    degrees: dict = field(default_factory=lambda: {"dp": 1, "cfg": 1, "ulysses": 1, "ring": 1})
    fsdp: bool = False
    mesh: object = None         # torch DeviceMesh when distributed

    @property
    def is_writer(self) -> bool:
        """Rank 0 of each replica writes that replica's outputs."""
        return self.replica_rank == 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives the batch and observability layers need; single-process versions here, the distributed
    #    runtime overrides them with calls on the right mesh axis (replica or world).
    def replica_all_ok(self, ok: bool) -> bool:
        """True only if every rank of this replica says ok (so a failing item fails on all of them)."""
        return ok

    def replica_max(self, values: dict[str, float]) -> dict[str, float]:
        """Per-key max over the ranks of this replica (stage times: the slowest rank is the replica's time)."""
        return dict(values)

    def world_any(self, flag: bool) -> bool:
        """True if any rank in the world raised the flag (e.g. a stop signal), so all stop at the same point."""
        return flag

    def barrier(self) -> None:
        return None

    def describe(self) -> dict:
        return {"world_size": self.world_size, "rank": self.rank, "dp_rank": self.dp_rank, **self.degrees,
                "fsdp": self.fsdp}


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun / Slurm-style environment variables."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))

"""One gang: a placement group (one bundle per rank, STRICT_PACK) and its rank actors (rank.py).

A gang is started, asked to stop, or killed as a whole: when one of its ranks dies, the others are blocked in (or
about to fail) a collective with it, and a restarted rank could not rejoin their process group. So the rank actors
have max_restarts=0, and the driver kills every rank and removes the placement group before building a new gang
(a new generation, with a new store) in the same slot.
"""
from __future__ import annotations

import logging

from ..exit_codes import worst
from .placement import bundle

log = logging.getLogger("wan_dist.ray")


def short(err: BaseException) -> str:
    """The first line of a Ray error (they carry the remote traceback below)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


class Gang:
    def __init__(self, slot: int, generation: int, size: int, ray_cfg):
        from ray.util.placement_group import placement_group
        self.slot, self.generation, self.size, self.r = slot, generation, size, ray_cfg
        self.pg = placement_group([bundle(ray_cfg)] * size, strategy="STRICT_PACK")
        self.ranks: list = []
        self.refs: list = []
        self.codes: dict[int, int] = {}
        self.writer: str | None = None
        self._prep = None

    @property
    def name(self) -> str:
        return f"gang {self.slot}" + (f" (rebuild {self.generation})" if self.generation else "")

    def spawn(self, env: dict) -> None:
        """Create the rank actors in the placement group's bundles; rank 0 starts hosting the gang's store."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from .rank import Rank
        opts = {"num_cpus": self.r.cpus_per_rank, "num_gpus": self.r.gpus_per_rank, "max_restarts": 0,
                "max_concurrency": 2}
        if env:
            opts["runtime_env"] = {"env_vars": env}
        actor = ray.remote(Rank)
        self.ranks = [actor.options(**opts, scheduling_strategy=PlacementGroupSchedulingStrategy(
            self.pg, placement_group_bundle_index=i)).remote(self.slot, self.generation, i, self.size)
            for i in range(self.size)]
        self._prep = self.ranks[0].prepare.remote()

    def launch(self, cfg, part: dict, dispenser) -> None:
        """Every rank's `run` (the gang's process group forms inside it). Raises if rank 0 died while starting."""
        import ray
        info = ray.get(self._prep)
        self.writer = info["writer"]
        part = {**part, "host": info["host"], "port": info["port"], "writer": info["writer"]}
        self.refs = [a.run.remote(cfg, part, dispenser) for a in self.ranks]
        log.info("%s: %d rank(s) started on %s (writer %s)", self.name, self.size, info["host"], self.writer)

    def running(self) -> list:
        return [ref for i, ref in enumerate(self.refs) if i not in self.codes]

    def collect(self, ref) -> BaseException | None:
        """A finished rank: its exit code is kept; an exception (the rank died or raised) is returned."""
        import ray
        i = self.refs.index(ref)
        try:
            self.codes[i] = int(ray.get(ref))
        except Exception as e:  # noqa: BLE001 - RayActorError (died), RayTaskError (raised): the gang is lost
            return e
        return None

    @property
    def finished(self) -> bool:
        return len(self.codes) == self.size

    @property
    def code(self) -> int:
        return int(worst(self.codes.values()))

    def request_stop(self, signum: int, why: str) -> None:
        for a in self.ranks:
            a.request_stop.remote(signum, why)

    def kill(self, wait_s: float = 60.0) -> None:
        """Kill every rank, wait until Ray has seen them die (their claims may then be released), drop the group."""
        import ray
        for a in self.ranks:
            try:
                ray.kill(a, no_restart=True)
            except Exception as e:  # noqa: BLE001 - already gone
                log.debug("kill %s: %s", self.name, e)
        pending = self.running()
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=wait_s)
        self.release()

    def release(self) -> None:
        from ray.util.placement_group import remove_placement_group
        try:
            remove_placement_group(self.pg)
        except Exception as e:  # noqa: BLE001
            log.debug("remove placement group of %s: %s", self.name, e)

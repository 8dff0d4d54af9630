"""Work sources: which manifest rows a replica runs, in which order.

Every rank of a replica calls `next()` in lock-step and gets the same item (static and array shares are pure
functions of the row index; a leased queue decides on the replica's writer and shares it over the replica). The batch
runner claims each candidate before it runs it (batch/claims.py), so a row another live writer holds is left to
it, whatever the source.

    static  row i goes to replica i % dp (one torchrun job)
    array   task k of K in a Slurm array, dp replicas per task: global replica g = k*dp + dp_rank of K*dp, and row i
            goes to g = i % (K*dp). Deterministic: every task computes the same split from the same manifest
    queue   every row, each replica starting at its own offset and wrapping around; a row is taken by whichever
            replica claims it first, so fast replicas take more rows (a lease = a claim; ack = the ledger line)
Ray gangs bring their own source (a lease from the driver's queue, wan_dist/gangs/lease.py) with the same interface;
it also retries a failed row (`retry`) until ray.max_item_attempts.
"""
from __future__ import annotations

import os
from typing import Protocol

from .manifest import Item


class WorkSource(Protocol):
    name: str

    def start(self, items: list[Item], ctx) -> None: ...

    def next(self) -> Item | None: ...

    def done(self, item: Item, outcome: str) -> None: ...   # ok | failed | skipped | held | stopped

    def retry(self, item: Item) -> bool: ...   # run it even if the ledger says failed (the source retries it)

    def describe(self) -> dict: ...

    # optional: run_share(items, ctx) -> the rows any replica of the run may take. With it, a run none of whose rows
    # is to be made loads no models (worker.nothing_to_make); a source without it (a Ray gang's part) always loads.


class _ListSource:
    """A fixed, ordered list of candidates per replica."""
    name = "list"

    def __init__(self):
        self._todo: list[Item] = []
        self._pos = 0

    def select(self, items: list[Item], ctx) -> list[Item]:
        raise NotImplementedError

    def start(self, items: list[Item], ctx) -> None:
        self._todo, self._pos = self.select(items, ctx), 0

    def next(self) -> Item | None:
        if self._pos >= len(self._todo):
            return None
        self._pos += 1
        return self._todo[self._pos - 1]

    def done(self, item: Item, outcome: str) -> None:
        pass

    def retry(self, item: Item) -> bool:
        return False                    # a failed row is retried only with batch.retry_failed=true

    def describe(self) -> dict:
        return {"source": self.name, "candidates": len(self._todo)}

    def run_share(self, items: list[Item], ctx) -> list[Item]:
        """The rows any replica of this run may take (every replica's `select` together)."""
        return items


class StaticShare(_ListSource):
    name = "static"

    def select(self, items, ctx):
        return [it for it in items if it.index % ctx.dp_size == ctx.dp_rank]


class ArrayShare(_ListSource):
    name = "array"

    def __init__(self, task: int, tasks: int):
        super().__init__()
        if tasks < 1 or not 0 <= task < tasks:
            raise ValueError(f"work.array_task={task}, work.array_tasks={tasks}: need 0 <= task < tasks")
        self.task, self.tasks = task, tasks

    def select(self, items, ctx):
        n = self.tasks * ctx.dp_size
        g = self.task * ctx.dp_size + ctx.dp_rank
        return [it for it in items if it.index % n == g]   # array_task_of(i) == task, replica dp_rank

    def run_share(self, items, ctx):
        return [it for it in items if array_task_of(it.index, self.tasks, ctx.dp_size) == self.task]

    def describe(self) -> dict:
        return {**super().describe(), "array_task": self.task, "array_tasks": self.tasks}


class ClaimQueue(_ListSource):
    """All rows, replica r starting at its own offset: the claims decide who takes which row."""
    name = "queue"

    def select(self, items, ctx):
        if not items:
            return []
        k = (ctx.dp_rank * len(items)) // max(1, ctx.dp_size)
        return items[k:] + items[:k]


def array_position_from_env(environ=None) -> tuple[int, int]:
    """(task k, task count K) of this Slurm array task: k = (SLURM_ARRAY_TASK_ID - MIN) / STEP."""
    env = os.environ if environ is None else environ
    if "SLURM_ARRAY_TASK_ID" not in env:
        raise ValueError("work.source=array: work.array_task / work.array_tasks are null and this is not a Slurm "
                         "array task (SLURM_ARRAY_TASK_ID is not set); give both, e.g. work.array_task=0 "
                         "work.array_tasks=4")
    tid = int(env["SLURM_ARRAY_TASK_ID"])
    lo = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
    step = int(env.get("SLURM_ARRAY_TASK_STEP", 1)) or 1
    count = int(env.get("SLURM_ARRAY_TASK_COUNT", (int(env.get("SLURM_ARRAY_TASK_MAX", tid)) - lo) // step + 1))
    return (tid - lo) // step, count


def writer_tags(work: WorkSource, ctx, environ=None) -> dict:
    """What this run's ledger records and claims carry besides the writer (read by `wan-dist status`): the Slurm job
    (`<array job>_<task>` for an array task) and, for an array share, {"task", "tasks", "replicas"}."""
    env = os.environ if environ is None else environ
    tags: dict = {}
    if isinstance(work, ArrayShare):
        tags["array"] = {"task": work.task, "tasks": work.tasks, "replicas": ctx.dp_size}
    if slurm_job(env):
        tags["slurm_job"] = slurm_job(env)
    return tags


def slurm_job(env) -> str | None:
    """`<array job>_<task>` for an array task (what squeue shows and scontrol takes), else the job id; None outside
    a Slurm job."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def array_task_of(index: int, tasks: int, replicas: int) -> int:
    """The array task whose share holds row `index` (ArrayShare: row i -> global replica i % (tasks*replicas))."""
    return (index % (tasks * replicas)) // replicas


def make_source(work_cfg, environ=None) -> WorkSource:
    """The work source a config asks for (config group `work`)."""
    if work_cfg.source == "static":
        return StaticShare()
    if work_cfg.source == "queue":
        return ClaimQueue()
    if work_cfg.source == "array":
        task, tasks = work_cfg.array_task, work_cfg.array_tasks
        if task is None or tasks is None:
            env_task, env_tasks = array_position_from_env(environ)
            task = env_task if task is None else task
            tasks = env_tasks if tasks is None else tasks
        return ArrayShare(task, tasks)
    raise ValueError(f"work.source={work_cfg.source!r}: must be one of static, array, queue")

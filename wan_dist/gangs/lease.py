"""The work source of a Ray gang: rows leased one at a time from the job's queue (the dispenser actor).

Rank 0 of the gang (its replica writer) leases and acks; the lease is shared over the gang (`ctx.replica_share`,
a broadcast on the replica axis), so every rank of the gang makes the same row in lock-step, as the batch runner
requires. A row leased again after a failed attempt is retried even though the ledger says failed (`retry`).
"""
from __future__ import annotations

from ..batch.manifest import Item


class LeaseSource:
    name = "ray-queue"

    def __init__(self, dispenser, gang: int):
        self.dispenser, self.gang = dispenser, gang
        self._items: dict[int, Item] = {}
        self._attempt: dict[str, int] = {}
        self._ctx = None

    def start(self, items: list[Item], ctx) -> None:
        self._items = {it.index: it for it in items}
        self._ctx = ctx

    def next(self) -> Item | None:
        import ray
        lease = None
        if self._ctx.is_writer:
            lease = ray.get(self.dispenser.lease.remote(self.gang))
        lease = self._ctx.replica_share(lease)          # the writer's lease on every rank of the gang
        if lease is None:
            return None
        index, attempt = lease
        item = self._items[index]
        self._attempt[item.request.id] = attempt
        return item

    def done(self, item: Item, outcome: str) -> None:
        import ray
        if self._ctx.is_writer:
            ray.get(self.dispenser.ack.remote(self.gang, item.request.id, outcome))

    def retry(self, item: Item) -> bool:
        return self._attempt.get(item.request.id, 1) > 1

    def describe(self) -> dict:
        return {"source": self.name, "gang": self.gang}

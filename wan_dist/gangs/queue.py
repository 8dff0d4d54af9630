"""The row queue of a Ray job: lease / ack / requeue, attempts per row, final outcomes.

One Ray actor (the dispenser) holds it; the driver wraps this class with `ray.remote`, so it is plain Python and
tested without Ray. Rank 0 of a gang leases a row, its gang makes it, rank 0 acks the outcome the batch runner
reported (ok | failed | skipped | held | stopped). The driver reports a dead gang (`gang_lost`): every row it held
goes back to the queue, at the front, so it is redone next.

Attempts: a row whose item failed (an exception caught in the gang, recorded `failed` in the ledger) or whose gang
died while holding it has used one attempt; it is queued again until `max_attempts` are used, then it is final
`failed` (the batch runner wrote the ledger line of an item failure; for a lost gang the driver writes it, since no
one in that gang lives to). A stop is not an attempt. The queue holds no file state: the driver rebuilds it from
the ledger when it starts (rows already complete, and rows recorded failed unless batch.retry_failed, are left out).
"""
from __future__ import annotations

import time
from collections import deque

TERMINAL = ("ok", "skipped")


class RowQueue:
    def __init__(self, rows: list[tuple[int, str]], max_attempts: int, assign: dict[str, int] | None = None):
        """rows: (manifest index, id) in the order to make them. assign: id -> gang for a fixed split (each gang
        gets only its own rows: the static baseline of bench/queue_balance.py); None = whoever asks first."""
        self.pending: deque[tuple[int, str]] = deque(rows)
        self.max_attempts = int(max_attempts)
        self.assign = assign
        self.failures: dict[str, int] = {}           # id -> attempts used (item failed, or its gang died)
        self.leases: dict[str, tuple[int, int]] = {}  # id -> (gang, index)
        self.final: dict[str, str] = {}               # id -> ok | skipped | failed
        self.events: list[dict] = []                  # what happened since the driver last looked
        self.stopping = False

    # -- the gangs' side --------------------------------------------------------------------------------------------
    def lease(self, gang: int) -> tuple[int, int] | None:
        """(manifest index, attempt number) of the next row for `gang`, or None: nothing left for it (or stopping)."""
        if self.stopping:
            return None
        for k, (index, item_id) in enumerate(self.pending):
            if self.assign is None or self.assign.get(item_id) == gang:
                del self.pending[k]
                self.leases[item_id] = (gang, index)
                return index, self.failures.get(item_id, 0) + 1
        return None

    def ack(self, gang: int, item_id: str, outcome: str) -> None:
        held = self.leases.get(item_id)
        if held is None or held[0] != gang:
            return          # a late word from a gang already declared dead: its row was requeued and is not its own
        index = held[1]
        if outcome == "held":
            return          # another live writer holds the id; the gang's runner revisits it (the lease stays)
        del self.leases[item_id]
        attempt = self.failures.get(item_id, 0) + 1
        if outcome in TERMINAL:
            self.final[item_id] = outcome
        elif outcome == "stopped":
            self.pending.appendleft((index, item_id))
        else:               # failed
            self._failed_attempt(index, item_id)
        self.events.append({"id": item_id, "outcome": outcome, "gang": gang, "attempt": attempt,
                            "final": self.final.get(item_id), "t": time.time()})

    # -- the driver's side ------------------------------------------------------------------------------------------
    def gang_lost(self, gang: int) -> list[dict]:
        """Every row `gang` held goes back to the queue (front) or, out of attempts, becomes final failed; returns
        the latter as {"id", "index", "attempts"} for the driver to record in the ledger."""
        out = []
        for item_id, (g, index) in list(self.leases.items()):
            if g != gang:
                continue
            del self.leases[item_id]
            if self._failed_attempt(index, item_id, front=True):
                out.append({"id": item_id, "index": index, "attempts": self.failures[item_id]})
            self.events.append({"id": item_id, "outcome": "lost", "gang": gang,
                                "attempt": self.failures[item_id], "final": self.final.get(item_id),
                                "t": time.time()})
        return out

    def _failed_attempt(self, index: int, item_id: str, front: bool = False) -> bool:
        """Count one attempt; True when that was the last one (the row is final failed)."""
        self.failures[item_id] = self.failures.get(item_id, 0) + 1
        if self.failures[item_id] >= self.max_attempts:
            self.final[item_id] = "failed"
            return True
        (self.pending.appendleft if front else self.pending.append)((index, item_id))
        return False

    def stop(self) -> None:
        """No more leases: the gangs end after the row in hand (or at their next safe point)."""
        self.stopping = True

    def poll(self) -> dict:
        """The events since the last poll and the queue's counts (one call per driver loop)."""
        events, self.events = self.events, []
        return {"events": events, "pending": len(self.pending), "leased": len(self.leases)}

    def finals(self) -> dict[str, str]:
        """id -> ok | skipped | failed, for every row that reached a final outcome in this job."""
        return dict(self.final)

    def pending_for(self, gang: int) -> int:
        return sum(1 for _, i in self.pending if self.assign is None or self.assign.get(i) == gang)

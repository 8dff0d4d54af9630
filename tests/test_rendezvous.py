"""The per-attempt store namespace (wan_dist/distributed/rendezvous.py): ranks agree on one fresh generation even
when the shared store still holds a complete handshake from a dead earlier attempt."""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from wan_dist.distributed.rendezvous import ROOT, agree_generation

T = timedelta(seconds=20)
POLL = timedelta(seconds=0.2)


def _stale_store(world: int) -> dist.HashStore:
    s = dist.HashStore()
    s.set(f"{ROOT}/gen", "old")                    # what the killed attempt left behind, handshake complete
    for r in range(1, world):
        s.set(f"{ROOT}/old/ack/{r}", f"n{r}")
        s.set(f"{ROOT}/go/n{r}", "1")
    return s


@pytest.mark.parametrize("world", [2, 4])
def test_late_rank0_with_stale_keys_still_gives_one_fresh_generation(world):
    store = _stale_store(world)
    got: dict[int, str] = {}
    errors: list[BaseException] = []

    def run(rank):
        try:
            got[rank] = agree_generation(store, rank, world, T, POLL)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    others = [threading.Thread(target=run, args=(r,)) for r in range(1, world)]
    for t in others:
        t.start()
    time.sleep(0.7)                                # the others read the stale id first and must read again
    r0 = threading.Thread(target=run, args=(0,))
    r0.start()
    for t in [*others, r0]:
        t.join(30)
    assert not errors, errors
    assert len(got) == world and len(set(got.values())) == 1 and got[0] != "old", got


def test_generations_differ_between_attempts():
    store = dist.HashStore()
    gens = []
    for _ in range(2):
        out: dict[int, str] = {}
        ts = [threading.Thread(target=lambda r=r, out=out: out.__setitem__(r, agree_generation(store, r, 2, T, POLL)))
              for r in (1, 0)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert out[0] == out[1]
        gens.append(out[0])
    assert gens[0] != gens[1]


def test_a_rank_whose_rank0_never_answers_fails_with_a_clear_error():
    store = _stale_store(2)
    with pytest.raises(RuntimeError, match="rank 1: rank 0 did not answer the store handshake within 1 s"):
        agree_generation(store, 1, 2, timedelta(seconds=1), POLL)

"""A fresh store namespace for every torchrun attempt, agreed by all ranks.

Why: torchrun's c10d rendezvous (the default, also behind `--standalone`) hosts ONE TCPStore in the agent and hands
it to the workers of every attempt (TORCHELASTIC_USE_AGENT_STORE=True), without a per-attempt prefix. After a
restart (`--max-restarts`), the new workers find the previous attempt's keys: gloo reads a dead peer's address and
fails or hangs in connectFullMesh, NCCL can read a stale unique id (pytorch/pytorch#135712). The restart count in
TORCHELASTIC_RESTART_COUNT is kept per node, so it is not a safe prefix across nodes either.

What: rank 0 draws a random generation id G and publishes it under a fixed key. Every other rank r draws its own
random nonce n_r, reads the published id (possibly a stale one from a dead attempt), writes its nonce under
`G/ack/r` and waits briefly for `go/n_r`, which only the live rank 0 writes, after it read `G_live/ack/r`. A rank
that read a stale id gets no `go` and reads again. Because n_r and G_live are fresh, no stale key can satisfy
either wait. Then every rank uses PrefixStore("wan_dist/<G>/") for init_process_group and every sub-group.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import timedelta

import torch.distributed as dist

log = logging.getLogger(__name__)

ROOT = "wan_dist/rdzv"
POLL = timedelta(seconds=1)


def uses_shared_agent_store() -> bool:
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def agree_generation(store, rank: int, world: int, timeout: timedelta, poll: timedelta = POLL) -> str:
    """Return the generation id every live rank of this attempt agrees on (see module doc)."""
    if rank == 0:
        gen = uuid.uuid4().hex
        store.set(f"{ROOT}/gen", gen)
        acks = [f"{ROOT}/{gen}/ack/{r}" for r in range(1, world)]
        if acks:
            store.wait(acks, timeout)
            for nonce in store.multi_get(acks):
                store.set(f"{ROOT}/go/{nonce.decode()}", "1")
        return gen
    nonce = uuid.uuid4().hex
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        gen = store.get(f"{ROOT}/gen").decode()         # blocks until rank 0 of some attempt wrote one
        store.set(f"{ROOT}/{gen}/ack/{rank}", nonce)
        try:
            store.wait([f"{ROOT}/go/{nonce}"], poll)
            return gen
        except dist.DistStoreError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank {rank}: rank 0 did not answer the store handshake within "
                                   f"{timeout.total_seconds():.0f} s (is rank 0 alive?)") from None
            log.debug("rank %d: generation %s got no answer (stale from an earlier attempt?); reading again",
                      rank, gen)


def attempt_store(timeout: timedelta):
    """(store, rank, world) for init_process_group: the agent's TCPStore under this attempt's own prefix."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    base = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                         timeout=timeout)
    gen = agree_generation(base, rank, world, timeout)
    log.info("store generation %s (torchrun attempt %s)", gen[:8], os.environ.get("TORCHELASTIC_RESTART_COUNT", "?"))
    return dist.PrefixStore(f"wan_dist/{gen}/", base), rank, world

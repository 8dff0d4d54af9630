"""What a gang needs from the Ray cluster, and clear errors when the cluster cannot give it.

A gang = one placement group, one bundle per rank ({CPU: cpus_per_rank, GPU: gpus_per_rank}), STRICT_PACK: all
ranks of a gang on one node (the Ulysses all-to-alls and FSDP all-gathers stay inside the node). A placement group
that can never be satisfied stays pending forever in Ray; so before placing, the driver checks that some alive
node's total resources can hold a gang (else a ValueError at once, naming what is short), and a gang that fits a
node but is not placed within ray.placement_timeout_s (other work holds the resources) is an error too.
"""
from __future__ import annotations


def bundle(r) -> dict:
    b = {"CPU": float(r.cpus_per_rank)}
    if r.gpus_per_rank:
        b["GPU"] = float(r.gpus_per_rank)
    return b


def gang_needs(r, size: int) -> dict:
    return {k: v * size for k, v in bundle(r).items()}


def _fmt(res: dict) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(res.items())) or "nothing"


def _what(r, size: int) -> str:
    return (f"ray.gang_size={size} rank(s) x (ray.cpus_per_rank={r.cpus_per_rank:g}, "
            f"ray.gpus_per_rank={r.gpus_per_rank:g}) = {_fmt(gang_needs(r, size))} on one node")


def check_fits(nodes: list[dict], r, size: int) -> None:
    """ValueError unless an alive node's total resources can hold one whole gang."""
    want = gang_needs(r, size)
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    if any(all(res.get(k, 0.0) >= v for k, v in want.items()) for res in alive):
        return
    largest = {k: max((res.get(k, 0.0) for res in alive), default=0.0) for k in want}
    short = [k for k, v in want.items() if largest[k] < v]
    hint = " (ray.gpus_per_rank=0 runs on CPUs)" if "GPU" in short else ""
    raise ValueError(f"{_what(r, size)}: no node of the Ray cluster can hold a gang; {', '.join(short)} short: "
                     f"the largest node has {_fmt(largest)} ({len(alive)} node(s) alive). Lower the per-rank "
                     f"resources{hint} or the parallel degrees (a gang is cfg x ulysses x ring ranks), or add a "
                     "larger node")


def not_placed(r, size: int, placed: int, total: dict, available: dict) -> str:
    return (f"{_what(r, size)}: only {placed} of ray.gangs={r.gangs} gang(s) placed within "
            f"ray.placement_timeout_s={r.placement_timeout_s:g} s; the cluster has {_fmt(_pick(total))} in total, "
            f"{_fmt(_pick(available))} free. Lower ray.gangs or the per-rank resources, or free the cluster")


def _pick(res: dict) -> dict:
    return {k: v for k, v in res.items() if k in ("CPU", "GPU")}

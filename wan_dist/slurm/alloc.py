"""What a Slurm allocation gives a run: its nodes, the address of each, and how many ranks to start per node.

Node names need not resolve (on the test cluster n1 and n2 do not; a site may name nodes anything): whatever
connects to a node uses its NodeAddr from `scontrol show node`, the address slurmctld itself uses.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess

NPROC_ENV = "WAN_DIST_NPROC_PER_NODE"      # overrides what the allocation says (e.g. 4 ranks on an 8-GPU node)


def parse_counts(value: str) -> list[int]:
    """Slurm's compressed per-node counts: '2(x3),1' -> [2, 2, 2, 1]."""
    out: list[int] = []
    for part in value.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if m:
            out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def gpus_on_node(env) -> int:
    """GPUs Slurm gave this job on this node (0 when none were asked for). Only Slurm's own variables count: a
    CUDA_VISIBLE_DEVICES inherited from the submitting shell says nothing about the allocation."""
    n = env.get("SLURM_GPUS_ON_NODE", "")
    if n.isdigit():
        return int(n)
    ids = env.get("SLURM_JOB_GPUS") or env.get("SLURM_STEP_GPUS") or ""
    return len([g for g in ids.split(",") if g.strip()])


def ranks_per_node(env=None) -> tuple[int, str]:
    """(ranks to start on each node, why): GPUs per node when there are any, else --ntasks-per-node, else --ntasks
    spread over the nodes, else --cpus-per-task, else 1. So one script serves a GPU cluster and a CPU-only one."""
    env = os.environ if env is None else env
    explicit = env.get(NPROC_ENV)
    if explicit:
        if not explicit.isdigit() or int(explicit) < 1:
            raise ValueError(f"{NPROC_ENV}={explicit!r}: must be a whole number >= 1 (ranks per node)")
        return int(explicit), f"{NPROC_ENV}={explicit}"
    gpus = gpus_on_node(env)
    if gpus:
        return gpus, f"{gpus} GPU(s) per node"
    per_node = parse_counts(env.get("SLURM_NTASKS_PER_NODE", ""))
    if per_node:
        return per_node[0], f"--ntasks-per-node={per_node[0]}"
    if env.get("SLURM_NTASKS"):
        # -n without --ntasks-per-node: Slurm may spread the tasks unevenly; torchrun needs the same count per node
        counts = parse_counts(env.get("SLURM_TASKS_PER_NODE", "")) or [int(env["SLURM_NTASKS"])]
        return min(counts), f"--ntasks={env['SLURM_NTASKS']} ({env.get('SLURM_TASKS_PER_NODE', '?')} per node)"
    cpus = env.get("SLURM_CPUS_PER_TASK", "")
    if cpus.isdigit() and int(cpus) > 0:
        return int(cpus), f"--cpus-per-task={cpus} (no GPUs: one rank per CPU)"
    return 1, "one rank (no GPUs, --ntasks-per-node, --ntasks or --cpus-per-task in the allocation)"


def _scontrol(*args: str) -> str:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, check=True, timeout=60,
                          stdin=subprocess.DEVNULL).stdout


def hostnames(nodelist: str) -> list[str]:
    """'n[1-2]' -> ['n1', 'n2'] (scontrol knows every syntax Slurm prints)."""
    return [h for h in _scontrol("show", "hostnames", nodelist).split() if h]


def node_addr(name: str) -> str:
    """The node's NodeAddr (what slurmctld connects to); the name itself when scontrol does not say."""
    try:
        out = _scontrol("show", "node", "-o", name)
    except (OSError, subprocess.SubprocessError):
        return name
    m = re.search(r"(?:^|\s)NodeAddr=(\S+)", out)
    return m.group(1) if m else name


def free_port() -> int:
    """A TCP port free on this host right now (the head node: the rendezvous store listens here next)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]

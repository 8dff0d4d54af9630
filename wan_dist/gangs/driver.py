"""The driver of a Ray job (launch/ray_run.py): gangs of ranks pulling manifest rows from one queue.

    main(cfg)   validate (exit 2 before Ray starts), connect, check and place every gang (exit 2 when the cluster
                cannot hold them), write config.yaml, start the dispenser (queue.py, rebuilt from the ledger) and the
                gangs, watch them, rebuild dead ones, log, write results.jsonl, return the exit code

Watching: `ray.wait` on every rank's `run`. A rank that died or raised makes its whole gang lost: every rank killed,
the placement group removed, the gang's rows back to the queue (or recorded failed after ray.max_item_attempts),
its claims and temp files released (the writer is known dead, so no one waits for the claim timeout), and the gang
rebuilt in its slot (at most ray.max_gang_restarts times). SIGINT / SIGTERM / SIGUSR1: no more leases, every rank's
stop flag set; the gangs stop at their next safe point and the job exits 75. A second Ctrl-C kills the gangs.

One logger for the whole job: the driver. Gangs log no metrics; the driver reads each finished row's sidecar (the
dispenser tells it which) and sends it to the sink (W&B when logger=wandb), and shows the job's progress.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket

from ..batch.preempt import StopFlag
from ..distributed.context import RunContext
from ..distributed.layout import check_layout
from ..exit_codes import ExitCode
from ..observability.logs import setup_logging
from ..worker import prepare_batch, user_error
from .job import Job

log = logging.getLogger("wan_dist.ray")


def resolve(cfg):
    """(cfg with absolute paths, the gang's layout, ranks per gang); ValueError naming the field on a bad gang."""
    p, r = cfg.parallel, cfg.ray
    replica = p.cfg * p.ulysses * p.ring
    if p.dp not in (-1, 1):
        raise ValueError(f"parallel.dp={p.dp}: under Ray the gangs are the data-parallel replicas; set "
                         f"ray.gangs={p.dp} and leave parallel.dp=-1")
    size = r.gang_size or replica
    if size != replica:
        raise ValueError(f"ray.gang_size={r.gang_size}: a gang is one model replica of parallel.cfg x ulysses x "
                         f"ring = {p.cfg} x {p.ulysses} x {p.ring} = {replica} rank(s); set ray.gang_size={replica} "
                         "or leave it null")
    absolute = {k: os.path.abspath(getattr(cfg, k)) for k in ("out_dir", "ckpt_dir", "manifest", "image")
                if getattr(cfg, k) is not None}             # the rank actors' working directory is not ours
    cfg = dataclasses.replace(cfg, **absolute)
    return cfg, check_layout(cfg, size), size


def gang_device(cfg) -> str:
    """The device type the gangs' ranks will run on (Ray gives a rank GPUs only when ray.gpus_per_rank > 0): the
    driver resolves dtype=auto for it, so the settings it checks are the ones the gangs record."""
    if cfg.device != "auto":
        return cfg.device
    return "cuda" if cfg.ray.gpus_per_rank > 0 else "cpu"


def check_address(address: str) -> None:
    """A HOST:PORT address must answer: ray.init waits minutes for a GCS that is not there."""
    if address in ("local", "auto") or address.startswith("ray://"):
        return
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as e:
        raise ValueError(f"ray.address={address!r}: no Ray cluster answers there ({e}); give the head's GCS "
                         "address (`ray status` on the head shows it), or auto on a cluster node") from None


def connect(r) -> bool:
    """Connect to (or, address=local, start) Ray unless this process already did; True when it started here."""
    import ray
    if ray.is_initialized():
        return False
    check_address(r.address)
    if r.address == "local" and os.environ.get("RAY_ADDRESS"):
        log.warning("RAY_ADDRESS=%s is set (a `ray job submit` job?) but ray.address=local starts a private Ray on "
                    "this machine; ray.address=auto runs on that cluster", os.environ["RAY_ADDRESS"])
    try:
        if r.address == "local":     # a private one-machine Ray: loopback only, no dashboard
            ray.init(address="local", _node_ip_address="127.0.0.1", _temp_dir=r.temp_dir, include_dashboard=False)
        else:
            ray.init(address=r.address)
    except (ConnectionError, RuntimeError, ValueError) as e:     # no cluster there, version mismatch, ...
        lines = str(e).strip().splitlines()
        raise ValueError(f"ray.address={r.address!r}: cannot start or join Ray ({type(e).__name__}: "
                         f"{lines[0] if lines else ''}); use local, auto (with a running cluster or RAY_ADDRESS), "
                         "ray://HOST:PORT or a cluster's HOST:PORT") from None
    return True


def main(cfg, stop: StopFlag | None = None, *, static_split: bool = False) -> ExitCode:
    """One Ray job. `static_split` (bench/queue_balance.py's baseline): gang k gets rows i % gangs == k only."""
    setup_logging(0, tag="driver")
    own_stop = stop is None
    stop = (stop or StopFlag()).install()
    try:
        try:
            cfg, lay, size = resolve(cfg)
            items, run_settings = prepare_batch(cfg, RunContext(), lay, device_type=gang_device(cfg))
        except ValueError as e:
            return user_error(RunContext(), e)
        try:
            started = connect(cfg.ray)
        except ValueError as e:
            return user_error(RunContext(), e)
        stop.reclaim()                         # ray.init replaced the SIGTERM handler with one that exits at once
        try:
            return Job(cfg, size, items, run_settings, stop, static_split).run()
        except ValueError as e:
            return user_error(RunContext(), e)
        finally:
            if started:
                import ray
                ray.shutdown()
    finally:
        if own_stop:
            stop.restore()

"""Hydra sweeps on Slurm (`python launch/run.py -m hydra/launcher=slurm ... sample.cfg_truncate_steps=0,3,5,8`):
what hydra_plugins/wan_dist_slurm/launcher.py adds to hydra-submitit-launcher's SlurmLauncher.

  * each job is a multi-rank run: submitit starts nodes x tasks_per_node tasks (srun) and each task sets torch's
    env:// variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) from submitit's job environment before
    the run. MASTER_ADDR is the first node's NodeAddr (node names need not resolve), the port submitit's function
    of the job id (every task must agree on it without talking to the others);
  * the sweep's exit code: the jobs run elsewhere, so their codes come back through the launcher (`codes`) and
    `python launch/run.py -m ...` exits with the most urgent one, like a local sweep (entry.hydra_main);
  * the preemption signal: submitit's (`--signal=USR2@signal_delay_s`) has a handler that raises inside whatever
    runs, so a wan-dist item in flight would be recorded as failed. USR1, wan-dist's stop signal, is used instead:
    the ranks stop at a safe point and the job ends with 75 (rerun the sweep to resume).
"""
from __future__ import annotations

import os
import sys

from ..exit_codes import ExitCode
from . import alloc

# the exit codes of the jobs this process launched, one per sweep setting (entry.hydra_main reads them)
codes: list[int] = []


PREEMPT_ENV = "SUBMITIT_PREEMPT_SIGNAL"     # submitit's own setting, read when submitit is imported


def preempt_with_stop_signal() -> None:
    """In the sweep's process, before submitting: sbatch gets --signal=USR1@..., and the jobs (which inherit this
    environment) bind submitit's handler to USR1, which the run replaces with its stop flag. A value the user set
    is kept."""
    sig = os.environ.setdefault(PREEMPT_ENV, "USR1")
    if "submitit" in sys.modules:             # imported already: its class attribute was read from the old value
        sys.modules["submitit"].JobEnvironment.USR_SIG = sig


def export_torch_env() -> None:
    """torch.distributed env:// variables of this submitit task (nothing to do for a one-task job)."""
    import submitit
    job = submitit.JobEnvironment()
    if job.num_tasks == 1 or "RANK" in os.environ:
        return
    port = submitit.helpers.TorchDistributedEnvironment().master_port
    os.environ.update({"MASTER_ADDR": alloc.node_addr(job.hostnames[0]), "MASTER_PORT": str(port),
                       "RANK": str(job.global_rank), "WORLD_SIZE": str(job.num_tasks),
                       "LOCAL_RANK": str(job.local_rank), "LOCAL_WORLD_SIZE": str(job.num_tasks // job.num_nodes)})


def record_returns(returns):
    """Keep each job's exit code (a job whose task raised counts as a crash)."""
    from hydra.core.utils import JobStatus
    for r in returns:
        value = getattr(r, "_return_value", None)
        ok = r.status == JobStatus.COMPLETED and isinstance(value, int)
        codes.append(int(value) if ok else int(ExitCode.CRASH))
    return returns

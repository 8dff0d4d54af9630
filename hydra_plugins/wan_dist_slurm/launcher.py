"""`hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml): hydra-submitit-launcher's SlurmLauncher, plus what a
wan-dist job needs (wan_dist/slurm/sweep.py): torch's env:// variables in every task of a multi-rank job, the jobs'
exit codes back to the sweep's process, and USR1 (wan-dist's stop signal) as submitit's preemption signal. Hydra
imports every module under hydra_plugins at start-up, so this one imports nothing of wan-dist until a sweep runs."""
from __future__ import annotations

from typing import Any, Sequence

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher


class SlurmLauncher(_SubmititSlurmLauncher):
    def __call__(self, *args: Any, **kwargs: Any):       # in every task of every job, on the cluster
        from wan_dist.slurm.sweep import export_torch_env
        export_torch_env()
        return super().__call__(*args, **kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):   # in the sweep's process
        from wan_dist.slurm.sweep import preempt_with_stop_signal, record_returns
        preempt_with_stop_signal()
        return record_returns(super().launch(job_overrides, initial_job_idx))

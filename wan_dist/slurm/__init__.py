"""Slurm: the launcher behind slurm/*.sbatch (job.py), Hydra sweeps as Slurm jobs (sweep.py), and the facts of an
allocation both need (alloc.py). Nothing here imports torch."""

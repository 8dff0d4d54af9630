"""wan-dist's Hydra launcher plugin (Hydra only instantiates launchers defined under the `hydra_plugins` namespace):
hydra-submitit-launcher's SlurmLauncher for `python launch/run.py -m hydra/launcher=slurm ...` (see launcher.py)."""

"""Parallel execution, applied from outside the single-device pipeline. Only mesh.py creates process groups."""

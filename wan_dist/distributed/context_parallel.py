"""Ulysses, ring and both (USP) through diffusers' own context parallelism, on an explicit ("ring", "ulysses") mesh.

No forward is patched: diffusers splits the token sequence at `blocks.0` by the model's `_cp_plan`, runs the
all-to-alls (Ulysses) and the key/value rotation with log-sum-exp merging (ring) inside its attention dispatch and
gathers at `proj_out`. The attention backend (one returning the log-sum-exp under ring; on CPU the project's
models/attention.py backend) was applied to the model before this call (worker.prepare_speed), as
`enable_parallelism` checks it.
Shapes: hidden_states [1, S, C] -> local [1, S/(ring*ulysses), C]; output gathered back to [1, S, C].
"""
from __future__ import annotations

from unittest import mock

from .mesh import Mesh


def enable_context_parallel(model, m: Mesh) -> None:
    from diffusers import ContextParallelConfig
    lay = m.layout
    if lay.sp == 1:
        return
    cp = ContextParallelConfig(ulysses_degree=lay.ulysses, ring_degree=lay.ring, mesh=m.sp)
    if m.device.type == "cpu":
        # THE one CPU workaround (env_notes §4): diffusers picks its device as `rank % accelerator.device_count()`,
        # which is a modulo by zero on a CPU-only machine. One device "exists" for the duration of this call only;
        # the mesh we pass is already a CPU mesh, so nothing else reads the patched value.
        with mock.patch("torch.accelerator.device_count", return_value=1):
            model.enable_parallelism(config=cp)
    else:
        model.enable_parallelism(config=cp)


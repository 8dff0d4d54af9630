"""Ulysses (and ring, on GPU) through diffusers' own context parallelism, on an explicit ("ring", "ulysses") mesh.

No forward is patched: diffusers splits the token sequence at `blocks.0` by the model's `_cp_plan`, runs the
all-to-alls inside its attention dispatch and gathers at `proj_out`.
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
    if lay.ring > 1:
        # ring merges partial attention with the log-sum-exp: the LSE backend layout.check_layout promised
        # (layout.attention_backend_for; GPU only, untested on this CPU machine)
        model.set_attention_backend("_native_cudnn")
    if m.device.type == "cpu":
        # THE one CPU workaround (env_notes §4): diffusers picks its device as `rank % accelerator.device_count()`,
        # which is a modulo by zero on a CPU-only machine. One device "exists" for the duration of this call only;
        # the mesh we pass is already a CPU mesh, so nothing else reads the patched value.
        with mock.patch("torch.accelerator.device_count", return_value=1):
            model.enable_parallelism(config=cp)
    else:
        model.enable_parallelism(config=cp)


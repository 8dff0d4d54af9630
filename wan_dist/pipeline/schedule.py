"""The native Wan sigma grids through diffusers' flow-matching schedulers (wan_facts.md §5).

unipc (native FlowUniPCMultistepScheduler): sigma = shift(linspace(sigma_max, 0, N+1)[:-1]) with sigma_max the float32
value of 0.999 (the native scheduler reads it back from its float32 training grid); timesteps = int64(sigma*1000).
diffusers' UniPCMultistepScheduler reproduces this when given the unshifted sigmas (it applies flow_shift itself).

dpm++ (native FlowDPMSolverMultistepScheduler fed by get_sampling_sigmas): sigma = shift(linspace(1, 0, N+1)[:N]),
first timestep 1000. diffusers' DPMSolverMultistepScheduler has no custom-sigma entry, so after set_timesteps we set
its schedule tensors (sigmas, timesteps) to the native grid; the solver math stays the library's.
"""
from __future__ import annotations

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
# native: float32(1 - 1/1000 ... ) -> .item(): 0.9990000128746033
NATIVE_SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))


def shifted(sigmas: np.ndarray, shift: float) -> np.ndarray:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def make_scheduler(solver: str, steps: int, shift: float, device="cpu"):
    """A diffusers scheduler whose timesteps/sigmas equal the native grid for (solver, steps, shift)."""
    if solver == "unipc":
        from diffusers import UniPCMultistepScheduler
        sch = UniPCMultistepScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, prediction_type="flow_prediction",
                                      use_flow_sigmas=True, flow_shift=shift, solver_order=2, solver_type="bh2",
                                      predict_x0=True, lower_order_final=True, final_sigmas_type="zero")
        base = np.linspace(NATIVE_SIGMA_MAX, 0.0, steps + 1)[:-1].copy()
        sch.set_timesteps(sigmas=base, device=device)
    elif solver == "dpm++":
        from diffusers import DPMSolverMultistepScheduler
        sch = DPMSolverMultistepScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, prediction_type="flow_prediction",
                                          use_flow_sigmas=True, flow_shift=1.0, solver_order=2,
                                          algorithm_type="dpmsolver++", solver_type="midpoint",
                                          lower_order_final=True, final_sigmas_type="zero")
        sch.set_timesteps(steps, device=device)
        sig = shifted(np.linspace(1.0, 0.0, steps + 1)[:steps], shift)
        sch.sigmas = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
        sch.timesteps = torch.from_numpy(sig * NUM_TRAIN_TIMESTEPS).to(device=device, dtype=torch.int64)
    else:
        raise ValueError(f"sample.solver={solver!r}: must be one of unipc, dpm++")
    sch.set_begin_index(0)
    return sch


def timesteps_for(solver: str, steps: int, shift: float) -> list[int]:
    return [int(t) for t in make_scheduler(solver, steps, shift).timesteps]


def expert_plan(timesteps: list[int], boundary: float | None) -> list[str]:
    """Per step: 'high' when t >= boundary*1000 (native rule), else 'low'; 'single' without experts."""
    if boundary is None:
        return ["single"] * len(timesteps)
    b = boundary * NUM_TRAIN_TIMESTEPS
    return ["high" if t >= b else "low" for t in timesteps]


def cfg_plan(experts: list[str], guidance: dict[str, float], truncate_low: int, truncate_high: int) -> list[bool]:
    """Per step whether the unconditional pass runs.

    truncate_low: the last N steps of the low-noise expert ('single' for one-expert models) skip it;
    truncate_high: the last M high-noise steps before the switch skip it. Guidance 1.0 means no CFG at all.
    """
    n = len(experts)
    on = [guidance[e] != 1.0 for e in experts]
    for name, k in (("low", truncate_low), ("single", truncate_low), ("high", truncate_high)):
        idx = [i for i in range(n) if experts[i] == name]
        for i in idx[len(idx) - k:] if k else []:
            on[i] = False
    return on

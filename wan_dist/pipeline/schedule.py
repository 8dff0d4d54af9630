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

from ..config import TRUNCATE_KEEP

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


# What a denoising step runs (the executors' `passes` argument, the sidecar's `step_passes`):
BOTH = "both"        # cond and uncond forwards, v = v_u + g (v_c - v_u)
COND = "cond"        # the conditional forward alone, v = v_c (guidance 1.0, or a step truncated with keep=cond)
UNCOND = "uncond"    # the unconditional (negative-prompt) forward alone, v = v_u (a step truncated with keep=uncond)
PASSES = (BOTH, COND, UNCOND)
KEEP_MODES = TRUNCATE_KEEP    # sample.cfg_truncate_keep: ("uncond", "cond"); the first is the default (the seed's)


def truncated_steps(experts: list[str], truncate_low: int, truncate_high: int) -> list[bool]:
    """Per step whether a CFG-truncation window holds it, by the seed's rules (its generate.py):
    low-noise window `step_idx >= len(timesteps) - N` (the last N steps of the run; validation keeps N within the
    low-noise expert's steps, or the whole run for one-expert models); high-noise window: the last M steps with
    t >= boundary*1000, `step_idx >= last_high_idx - M + 1`."""
    n = len(experts)
    high = [i for i, e in enumerate(experts) if e == "high"]
    out = []
    for i, e in enumerate(experts):
        low_win = truncate_low > 0 and i >= n - truncate_low
        high_win = truncate_high > 0 and e == "high" and i >= high[-1] - truncate_high + 1
        out.append(low_win or high_win)
    return out


def cfg_plan(experts: list[str], guidance: dict[str, float], truncate_low: int, truncate_high: int,
             keep: str = UNCOND) -> list[str]:
    """Per step which forward pass(es) run: BOTH, COND or UNCOND.

    A step inside a truncation window runs only the pass `keep` names and uses that prediction alone: UNCOND is the
    seed's behaviour ("skip the conditional forward in the last steps": its code then sets
    noise_pred = noise_pred_uncond), COND the "guidance interval" variant (drop the unconditional pass). Guidance
    1.0 means no CFG at all, so such a step runs COND whatever the windows say (nothing to truncate)."""
    if keep not in KEEP_MODES:
        raise ValueError(f"cfg_truncate_keep={keep!r}: must be one of {', '.join(KEEP_MODES)}")
    out = []
    for e, cut in zip(experts, truncated_steps(experts, truncate_low, truncate_high)):
        out.append(COND if guidance[e] == 1.0 else keep if cut else BOTH)
    return out


def forward_counts(passes: list[str]) -> dict[str, int]:
    """DiT forwards of a plan by conditioning: {"cond": n, "uncond": m}."""
    return {"cond": sum(p in (BOTH, COND) for p in passes), "uncond": sum(p in (BOTH, UNCOND) for p in passes)}

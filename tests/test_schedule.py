"""Sigma grids, expert switching and CFG plans against the native formulas (wan_facts.md §5)."""
import numpy as np
import pytest
import torch

from wan_dist.models.registry import REAL_MODELS
from wan_dist.pipeline.schedule import cfg_plan, expert_plan, forward_counts, make_scheduler


def native_unipc_grid(steps, shift):
    """Native FlowUniPCMultistepScheduler.set_timesteps, written out independently."""
    alphas = np.linspace(1, 1 / 1000, 1000)[::-1].copy()
    train_sigmas = torch.from_numpy(1.0 - alphas).to(torch.float32)
    sigma_max, sigma_min = train_sigmas[0].item(), train_sigmas[-1].item()
    sig = np.linspace(sigma_max, sigma_min, steps + 1).copy()[:-1]
    sig = shift * sig / (1 + (shift - 1) * sig)
    timesteps = torch.from_numpy(sig * 1000).to(torch.int64)
    sigmas = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
    return timesteps, sigmas


def native_dpm_grid(steps, shift):
    """Native get_sampling_sigmas + FlowDPMSolverMultistepScheduler(shift=1).set_timesteps(sigmas=...)."""
    sig = np.linspace(1, 0, steps + 1)[:steps]
    sig = shift * sig / (1 + (shift - 1) * sig)
    timesteps = torch.from_numpy(sig * 1000).to(torch.int64)
    sigmas = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
    return timesteps, sigmas


def model_cfg(name):
    from wan_dist.config import compose
    return compose([f"model={name}", "ckpt_dir=/x", "prompt=x"]).model


@pytest.mark.parametrize("name", REAL_MODELS)
@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_grids_equal_native_for_task_defaults(name, solver):
    m = model_cfg(name)
    sch = make_scheduler(solver, m.steps, m.shift)
    ts, sig = (native_unipc_grid if solver == "unipc" else native_dpm_grid)(m.steps, m.shift)
    assert torch.equal(sch.timesteps.cpu(), ts)
    assert torch.equal(sch.sigmas.cpu().to(torch.float32), sig)


def test_documented_grid_values():
    ts = make_scheduler("unipc", 40, 12.0).timesteps.tolist()
    assert ts[:5] == [999, 997, 995, 993, 990] and ts[-4:] == [571, 492, 386, 235]
    assert make_scheduler("unipc", 50, 5.0).timesteps.tolist()[-3:] == [241, 172, 92]
    assert make_scheduler("dpm++", 50, 5.0).timesteps.tolist()[0] == 1000


@pytest.mark.parametrize("name,high,low", [("t2v-A14B", 26, 14), ("i2v-A14B", 15, 25)])
@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_expert_switch_on_first_step_below_boundary(name, high, low, solver):
    m = model_cfg(name)
    ts = make_scheduler(solver, m.steps, m.shift).timesteps.tolist()
    experts = expert_plan(ts, m.boundary)
    assert experts.count("high") == high and experts.count("low") == low
    first_low = next(i for i, t in enumerate(ts) if t < m.boundary * 1000)
    assert experts[:first_low] == ["high"] * first_low and experts[first_low:] == ["low"] * (len(ts) - first_low)


def seed_step_passes(timesteps, boundary, g_low, g_high, n, m, keep):
    """The seed's rules written out independently (its generate loop): low-noise truncation on
    `step_idx >= len(timesteps) - cfg_truncate_steps`; high-noise on the last M steps with t >= boundary*1000,
    `step_idx >= last_high_idx - M + 1`; a truncated step runs only `keep`'s forward. Guidance 1.0 = cond only."""
    bt = None if boundary is None else boundary * 1000
    high = [i for i, t in enumerate(timesteps) if bt is not None and t >= bt]
    last_high_idx = high[-1] if high else -1
    out = []
    for step_idx, t in enumerate(timesteps):
        is_high = bt is not None and t >= bt
        g = g_high if is_high else g_low
        cut = (n > 0 and step_idx >= len(timesteps) - n) or (is_high and m > 0 and step_idx >= last_high_idx - m + 1)
        out.append("cond" if g == 1.0 else keep if cut else "both")
    return out


@pytest.mark.parametrize("name", REAL_MODELS)
@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_cfg_plan_equals_the_seeds_window_rules(name, solver):
    """Every window the seed recommends (low 0/3/5/8, high 0/2/3/5 on MoE), both keep modes, on the real defaults."""
    m = model_cfg(name)
    ts = make_scheduler(solver, m.steps, m.shift).timesteps.tolist()
    experts = expert_plan(ts, m.boundary)
    g_high = m.guide_scale_high if m.guide_scale_high is not None else m.guide_scale
    g = {"single": m.guide_scale, "low": m.guide_scale, "high": g_high}
    for keep in ("uncond", "cond"):
        for n in (0, 3, 5, 8):
            for mm in ((0, 2, 3, 5) if m.boundary is not None else (0,)):
                plan = cfg_plan(experts, g, n, mm, keep)
                assert plan == seed_step_passes(ts, m.boundary, m.guide_scale, g_high, n, mm, keep), (n, mm, keep)
                assert plan.count(keep) == n + mm and plan.count("both") == len(ts) - n - mm
                assert forward_counts(plan) == {"cond": len(ts) - (n + mm) * (keep == "uncond"),
                                                "uncond": len(ts) - (n + mm) * (keep == "cond")}


def test_cfg_plan_truncation_windows():
    experts = ["high"] * 4 + ["low"] * 3
    g = {"high": 4.0, "low": 3.0, "single": 3.0}
    B, C, U = "both", "cond", "uncond"
    assert cfg_plan(experts, g, 0, 0) == [B] * 7
    assert cfg_plan(experts, g, 2, 0) == [B] * 5 + [U] * 2                 # default keep: the seed's (uncond)
    assert cfg_plan(experts, g, 2, 0, "cond") == [B] * 5 + [C] * 2
    assert cfg_plan(experts, g, 0, 1) == [B, B, B, U, B, B, B]
    assert cfg_plan(experts, g, 3, 4, "cond") == [C] * 7
    assert cfg_plan(["single"] * 5, {"single": 5.0}, 2, 0) == [B, B, B, U, U]
    assert cfg_plan(["single"] * 3, {"single": 1.0}, 0, 0) == [C] * 3          # guidance 1.0 = no CFG
    assert cfg_plan(["single"] * 3, {"single": 1.0}, 2, 0, "uncond") == [C] * 3   # nothing to truncate
    with pytest.raises(ValueError, match="cfg_truncate_keep='both': must be one of uncond, cond"):
        cfg_plan(experts, g, 1, 0, "both")

"""CFG truncation as the seed defines it: which forwards run per step in each keep mode (single expert and MoE, real
DiT calls counted by conditioning), what a truncated step computes, and the validation of windows and modes.

The runs share one loaded engine per model (worker.EngineCache), as a sweep does: the module loads each tiny model once.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wan_dist.config import compose
from wan_dist.worker import EngineCache, run

FAST = ["sample.frame_num=5", "sample.size=32*32", "batch.progress=false"]


@pytest.fixture(scope="module")
def engines():
    caches: dict[str, EngineCache] = {}
    yield lambda model: caches.setdefault(model, EngineCache())
    for c in caches.values():
        assert c.loads == 1        # every run of the module reused its model's one load
        c.drop()


def _cfg(ckpt, out, model, extra=()):
    return compose([f"model={model}", f"ckpt_dir={ckpt}", f"out_dir={out}", "prompt=a cat on the beach",
                    "sample.negative_prompt=blurry and static", *FAST, *extra])


@pytest.fixture
def forwards(monkeypatch):
    """Every real DiT forward, by conditioning: 'cond' (the prompt's embeddings) or 'uncond' (the negative prompt's).
    The generator pads the prompt first, then the negative prompt; the loop passes those very tensors to the DiT."""
    from wan_dist.pipeline import denoise as dn
    from wan_dist.pipeline import generator as gen
    padded, calls = [], []
    real_pad, real_fwd = gen.pad_embeds, dn.dit_forward

    def pad(embeds, *a, **k):
        out = real_pad(embeds, *a, **k)
        padded.append(out)
        return out

    def fwd(model, x, t, context):
        kinds = {padded[-2].data_ptr(): "cond", padded[-1].data_ptr(): "uncond"}
        calls.append(kinds[context.data_ptr()])
        return real_fwd(model, x, t, context)
    monkeypatch.setattr(gen, "pad_embeds", pad)
    monkeypatch.setattr(dn, "dit_forward", fwd)
    return calls


def _sidecar(out):
    return json.loads(next(Path(out, "videos").glob("*.json")).read_text())


def _expand(passes):
    """The forwards a plan runs, in order: a full CFG step runs cond then uncond (as the native code)."""
    return [k for p in passes for k in (("cond", "uncond") if p == "both" else (p,))]


@pytest.mark.parametrize("keep", ["uncond", "cond"])
@pytest.mark.parametrize("trunc", [0, 2, 6])
def test_forwards_single_expert(tiny_ckpt, tmp_path, engines, forwards, keep, trunc):
    cfg = _cfg(tiny_ckpt("tiny-t2v"), tmp_path, "tiny-t2v",
               ["sample.steps=6", f"sample.cfg_truncate_steps={trunc}", f"sample.cfg_truncate_keep={keep}"])
    assert run(cfg, engines=engines("tiny-t2v")) == 0
    sc = _sidecar(tmp_path)
    plan = ["both"] * (6 - trunc) + [keep] * trunc             # the seed: the last N steps of the run
    assert sc["step_passes"] == plan and sc["cfg_truncate_keep"] == keep
    assert forwards == _expand(plan)
    assert sc["forwards"] == {"cond": forwards.count("cond"), "uncond": forwards.count("uncond")}
    assert sc["forwards"]["cond" if keep == "cond" else "uncond"] == 6 and len(forwards) == 12 - trunc
    assert sc["cfg_on"] == [p == "both" for p in plan]


@pytest.mark.parametrize("keep,low,high", [("uncond", 0, 0)] + [(k, lo, hi) for k in ("uncond", "cond")
                                                                  for lo, hi in ((1, 0), (0, 2), (2, 1))])
def test_forwards_moe(tiny_ckpt, tmp_path, engines, forwards, keep, low, high):
    cfg = _cfg(tiny_ckpt("tiny-t2v-moe"), tmp_path, "tiny-t2v-moe",
               ["sample.steps=10", f"sample.cfg_truncate_steps={low}", f"sample.cfg_truncate_high_noise_steps={high}",
                f"sample.cfg_truncate_keep={keep}"])
    assert run(cfg, engines=engines("tiny-t2v-moe")) == 0
    sc = _sidecar(tmp_path)
    n_high, n_low = sc["expert_steps"]["high"], sc["expert_steps"]["low"]
    assert n_high + n_low == 10 and n_high > 2 and n_low > 2 and sc["expert_switches"] == 1
    assert sc["step_experts"] == ["high"] * n_high + ["low"] * n_low
    # the seed's windows, restated: low = step_idx >= len(timesteps) - N; high = the last M steps with
    # t >= boundary*1000 (875 here), step_idx >= last_high_idx - M + 1
    ts = sc["timesteps"]
    last_high = max(i for i, t in enumerate(ts) if t >= 875)
    plan = [keep if (low and i >= len(ts) - low) or (high and t >= 875 and i >= last_high - high + 1) else "both"
            for i, t in enumerate(ts)]
    assert sc["step_passes"] == plan and plan.count("both") == 10 - low - high
    assert forwards == _expand(plan)
    assert sc["forwards"] == {"cond": forwards.count("cond"), "uncond": forwards.count("uncond")}
    assert len(forwards) == 20 - low - high


def test_guidance_one_runs_cond_only_whatever_the_windows(tiny_ckpt, tmp_path, engines, forwards):
    cfg = _cfg(tiny_ckpt("tiny-t2v"), tmp_path, "tiny-t2v",
               ["sample.steps=6", "sample.guide_scale=1.0", "sample.cfg_truncate_steps=3"])
    assert run(cfg, engines=engines("tiny-t2v")) == 0
    sc = _sidecar(tmp_path)
    assert sc["forwards"] == {"cond": 6, "uncond": 0} and forwards == ["cond"] * 6
    assert sc["step_passes"] == ["cond"] * 6


def _latents(out, item_id):
    from wan_dist.batch.extras import load_latents
    return load_latents(Path(out, "videos", f"{item_id}.latents.safetensors"))[0]


@pytest.mark.parametrize("keep", ["uncond", "cond"])
def test_a_truncated_step_uses_its_kept_prediction_alone(tiny_ckpt, tmp_path, engines, keep):
    """Every step truncated: keep=uncond is exactly the negative prompt's prediction alone (noise_pred =
    noise_pred_uncond, the seed's code), i.e. the video of prompt := negative prompt at guidance 1.0; keep=cond is the
    prompt's at guidance 1.0. Exact equality: the same DiT calls in the same order."""
    ckpt, cache = tiny_ckpt("tiny-t2v"), engines("tiny-t2v")
    m = tmp_path / "m.csv"
    m.write_text("id,prompt,negative_prompt,seed\nv,a cat on the beach,\"blurry, static\",7\n")
    common = ["model=tiny-t2v", f"ckpt_dir={ckpt}", "sample.steps=4", *FAST, "output.save_latents=true"]
    assert run(compose([*common, f"manifest={m}", f"out_dir={tmp_path / 'trunc'}", "sample.cfg_truncate_steps=4",
                        f"sample.cfg_truncate_keep={keep}"]), engines=cache) == 0
    alone = tmp_path / "alone.csv"
    text = "blurry, static" if keep == "uncond" else "a cat on the beach"
    alone.write_text(f"id,prompt,negative_prompt,seed,guide_scale\nv,\"{text}\",unused,7,1.0\n")
    assert run(compose([*common, f"manifest={alone}", f"out_dir={tmp_path / 'alone'}"]), engines=cache) == 0
    a, b = _latents(tmp_path / "trunc", "v"), _latents(tmp_path / "alone", "v")
    assert torch.equal(a, b)
    full = tmp_path / "full"
    assert run(compose([*common, f"manifest={m}", f"out_dir={full}"]), engines=cache) == 0
    assert not torch.equal(a, _latents(full, "v"))             # the test can fail: guidance changes the video


# -- validation (no model work) ----------------------------------------------------------------------------------
BASE = ["ckpt_dir=/nonexistent", "prompt=a cat"]


def _request(overrides, row=None):
    from wan_dist.models.registry import get_model
    from wan_dist.pipeline.request import build_request
    cfg = compose(BASE + overrides)
    return build_request(cfg, get_model(cfg.model.name), {"prompt": "a cat", **(row or {})}, "x")


@pytest.mark.parametrize("overrides,row,needle", [
    (["sample.cfg_truncate_keep=both"], None, "sample.cfg_truncate_keep='both': must be one of uncond, cond"),
    (["sample.cfg_truncate_steps=-1"], None, "sample.cfg_truncate_steps=-1: must be >= 0"),
    (["sample.cfg_truncate_high_noise_steps=-2"], None, "sample.cfg_truncate_high_noise_steps=-2: must be >= 0"),
    (["model=t2v-A14B"], {"cfg_truncate_keep": "Uncond"}, "cfg_truncate_keep='Uncond': must be one of uncond, cond"),
    (["model=t2v-A14B", "sample.cfg_truncate_steps=15"], None,
     "cfg_truncate_steps=15: must be between 0 and 14, the steps the low-noise expert runs"),
    (["model=t2v-A14B", "sample.cfg_truncate_high_noise_steps=27"], None,
     "cfg_truncate_high_noise_steps=27: must be between 0 and 26, the steps the high-noise expert runs"),
    (["model=t2v-1.3B", "sample.cfg_truncate_high_noise_steps=1"], None, "(t2v-1.3B has no experts)"),
    (["model=t2v-1.3B"], {"cfg_truncate_steps": 51}, "cfg_truncate_steps=51: must be between 0 and 50"),
])
def test_truncation_settings_are_validated(overrides, row, needle):
    with pytest.raises(ValueError) as e:
        _request(overrides, row)
    assert needle in str(e.value)


def test_the_windows_may_fill_each_expert():
    req = _request(["model=t2v-A14B", "sample.cfg_truncate_steps=14", "sample.cfg_truncate_high_noise_steps=26",
                    "sample.cfg_truncate_keep=cond"])
    from wan_dist.pipeline.request import step_plan
    experts, passes = step_plan(req, 0.875)
    assert passes == ["cond"] * 40 and experts.count("high") == 26
    assert _request(["model=t2v-A14B"]).cfg_truncate_keep == "uncond"          # the seed's mode is the default


def test_manifest_column_cfg_truncate_keep(tmp_path):
    from wan_dist.batch.manifest import ManifestError, load_items
    from wan_dist.models.registry import get_model
    cfg = compose(["ckpt_dir=/x", "prompt=x", "model=t2v-A14B"])
    m = tmp_path / "m.csv"
    m.write_text("id,prompt,cfg_truncate_steps,cfg_truncate_keep\na,x,5,cond\nb,x,5,\nc,x,3,sideways\n")
    with pytest.raises(ManifestError) as e:
        load_items(m, cfg, get_model("t2v-A14B"))
    assert e.value.problems == [f"{m}:4 cfg_truncate_keep='sideways': must be one of uncond, cond"]
    m.write_text("id,prompt,cfg_truncate_steps,cfg_truncate_keep\na,x,5,cond\nb,x,5,\n")
    items = load_items(m, cfg, get_model("t2v-A14B"))
    assert [it.request.cfg_truncate_keep for it in items] == ["cond", "uncond"]

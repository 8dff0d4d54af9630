"""Pipeline behaviour on tiny native checkpoints: noise, end-to-end videos (forwards under CFG truncation:
test_cfg_truncation.py)."""
import json
from pathlib import Path

import pytest
import torch

from wan_dist.config import compose
from wan_dist.models.registry import MODELS, TINY_MODELS
from wan_dist.pipeline.latents import draw_noise, prepare
from wan_dist.pipeline.video_io import read_mp4
from wan_dist.worker import run


def test_noise_is_the_native_draw():
    shape = (16, 21, 60, 104)
    g = torch.Generator(device="cpu").manual_seed(1234)
    native = torch.randn(*shape, dtype=torch.float32, device="cpu", generator=g)
    assert torch.equal(draw_noise(shape, 1234, "cpu"), native)


def test_t2v_latents_shape_and_values():
    spec = MODELS["t2v-A14B"]
    cond = prepare(spec, None, size=(832, 480), frame_num=81, seed=7, device="cpu")
    assert cond.latents.shape == (16, 21, 60, 104)
    assert torch.equal(cond.latents, draw_noise((16, 21, 60, 104), 7, "cpu"))


def _cfg(ckpt, out, model, extra=(), prompt="a cat on the beach"):
    return compose([f"model={model}", f"ckpt_dir={ckpt}", f"out_dir={out}", f"prompt={prompt}",
                    "sample.steps=6", "sample.frame_num=5", "batch.progress=false", *extra])


def _sidecar(out):
    return json.loads(next(Path(out, "videos").glob("*.json")).read_text())


REQUIRED = ["id", "prompt", "negative_prompt", "seed", "size", "frame_num_requested", "frame_num", "fps", "steps",
            "shift", "solver", "guide_scale", "cfg_truncate_steps", "cfg_truncate_high_noise_steps", "forwards",
            "expert_steps", "expert_switches", "timings", "per_step_s", "frames_per_second", "warnings"]


@pytest.mark.parametrize("model", TINY_MODELS)
def test_end_to_end_mp4(tiny_ckpt, test_image, tmp_path, model):
    spec = MODELS[model]
    size = "64*32" if spec.image != "required" else "64*64"
    extra = [f"sample.size={size}", "sample.frame_num=6", "sample.steps=3"]
    if spec.image != "none":
        extra.append(f"image={test_image}")
    assert run(_cfg(tiny_ckpt(model), tmp_path, model, extra)) == 0
    sc = _sidecar(tmp_path)
    assert all(k in sc for k in REQUIRED)
    assert sc["frame_num_requested"] == 6 and sc["frame_num"] == 5 and sc["warnings"]
    frames = read_mp4(tmp_path / "videos" / f"{sc['id']}.mp4")
    w, h = (64, 64) if spec.image == "required" else (64, 32)   # i2v: a square image in a 64*64 max area
    assert frames.shape == (5, h, w, 3) and sc["size"] == [w, h]
    assert sc["fps"] == _cfg(tiny_ckpt(model), tmp_path, model, extra).model.fps and sc["forwards"]["cond"] == 3
    t = sc["timings"]
    assert t["model_load"] > 0 and t["total"] >= sum(v for k, v in t.items() if k not in ("total", "expert_switch"))
    ledger = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in ledger] == ["ok"] and (tmp_path / "config.yaml").exists()


def test_dpm_solver_end_to_end(tiny_ckpt, tmp_path):
    assert run(_cfg(tiny_ckpt("tiny-t2v"), tmp_path, "tiny-t2v", ["sample.solver=dpm++"])) == 0
    sc = _sidecar(tmp_path)
    assert sc["solver"] == "dpm++" and sc["timesteps"][0] == 1000


def test_same_seed_same_video_and_resume_skips(tiny_ckpt, tmp_path):
    cfg = _cfg(tiny_ckpt("tiny-t2v"), tmp_path / "a", "tiny-t2v")
    assert run(cfg) == 0
    assert run(_cfg(tiny_ckpt("tiny-t2v"), tmp_path / "b", "tiny-t2v")) == 0
    fa = read_mp4(next((tmp_path / "a" / "videos").glob("*.mp4")))
    fb = read_mp4(next((tmp_path / "b" / "videos").glob("*.mp4")))
    assert (fa == fb).all()
    assert run(cfg) == 0   # rerun: skipped, ledger unchanged
    assert len((tmp_path / "a" / "results.jsonl").read_text().splitlines()) == 1


def test_ti2v_image_mode_pins_first_frame_and_zero_timesteps():
    from wan_dist.pipeline.latents import Conditioning
    z_img = torch.randn(48, 1, 4, 6)
    mask2 = torch.ones(48, 3, 4, 6)
    mask2[:, 0] = 0
    cond = Conditioning("ti2v", torch.randn(48, 3, 4, 6), (96, 64), mask2=mask2, z_image=z_img)
    ts = cond.timestep(torch.tensor(900))
    assert ts.shape == (1, 3 * 2 * 3)                          # [1, T * h/2 * w/2]
    assert (ts[0, :6] == 0).all() and (ts[0, 6:] == 900).all()  # first latent frame: t = 0
    out = cond.after_step(torch.randn(48, 3, 4, 6))
    assert torch.equal(out[:, :1], z_img) and not torch.equal(out[:, 1:], z_img.expand(48, 2, 4, 6))

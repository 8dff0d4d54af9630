"""Exact outputs (issue 7): saved latents, lossless mp4, PNG frames; and what the lossy default loses.

Three in-process runs of the tiny t2v model share one checkpoint (written once for this module) and one seed:
  exact:   output.save_latents=true output.lossless=true output.frames=png
  again:   output.save_latents=true (lossy mp4)      -> same seed, same latents
  default: no output options                          -> no extras, lossy mp4 that is not bit-exact
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wan_dist import config as config_mod
from wan_dist.batch import extras
from wan_dist.batch.outputs import OutputDir
from wan_dist.batch.runner import BatchRunner
from wan_dist.models.loading import LoadStats, load_pth
from wan_dist.models.registry import get_model
from wan_dist.models.tiny import write_tiny_checkpoint
from wan_dist.pipeline import vae as vae_ops
from wan_dist.pipeline.video_io import encode_mp4, read_mp4
from wan_dist.worker import run

MODEL = "tiny-t2v"
SEED = 1234
ID = "cat"
PRODUCED: dict[str, tuple[torch.Tensor, np.ndarray]] = {}   # run name -> (result.latents, result.frames)
RUNS = {
    "exact": ["output.save_latents=true", "output.lossless=true", "output.frames=png"],
    "again": ["output.save_latents=true"],
    "default": [],
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(MODEL, tmp_path_factory.mktemp("outputs-ckpt") / MODEL, seed=0)


@pytest.fixture(scope="module")
def runs(ckpt, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("outputs-runs")
    manifest = base / "prompts.jsonl"
    manifest.write_text(json.dumps({"id": ID, "prompt": "a cat", "seed": SEED}) + "\n")
    outs = {}
    real = BatchRunner.write_extras
    for name, extra in RUNS.items():
        out = base / name
        cfg = config_mod.compose([f"model={MODEL}", f"ckpt_dir={ckpt}", f"manifest={manifest}", f"out_dir={out}",
                                  "sample.frame_num=5", "sample.steps=2", "batch.progress=false", *extra])
        seen = []

        def spy(self, item_id, result, _seen=seen):  # what the pipeline produced, before anything is written
            _seen.append((result.latents.clone(), result.frames.numpy().copy()))
            return real(self, item_id, result)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(BatchRunner, "write_extras", spy)
            assert run(cfg) == 0, name
        assert len(seen) == 1
        outs[name] = out
        PRODUCED[name] = seen[0]
    return outs


def _sidecar(out: Path) -> dict:
    return json.loads((out / "videos" / f"{ID}.json").read_text())


def _latents(out: Path):
    return extras.load_latents(out / "videos" / f"{ID}{extras.LATENTS_SUFFIX}")


# -- latents -----------------------------------------------------------------------------------------------------------
def test_latents_file_shape_dtype_and_metadata(runs):
    spec = get_model(MODEL)
    lat, meta = _latents(runs["exact"])
    side = _sidecar(runs["exact"])
    w, h = side["size"]
    t = (side["frame_num"] - 1) // spec.vae_stride[0] + 1
    assert lat.dtype == torch.float32
    assert list(lat.shape) == [spec.z_dim, t, h // spec.vae_stride[1], w // spec.vae_stride[2]]
    assert torch.isfinite(lat).all()
    assert torch.equal(lat, PRODUCED["exact"][0])  # exactly the final latent the pipeline decoded
    assert meta["id"] == ID and meta["model"] == MODEL and meta["seed"] == str(SEED) == str(side["seed"])
    assert json.loads(meta["timesteps"]) == side["timesteps"]
    assert meta["steps"] == "2" == str(side["steps"]) and meta["solver"] == side["solver"]
    assert meta["size"] == f"{w}*{h}" and json.loads(meta["shape"]) == list(lat.shape)


def test_latents_redecode_to_the_video_frames(runs, ckpt):
    """Saved latent -> the project's VAE decode -> uint8 frames == the lossless mp4 == the PNGs, bit for bit."""
    spec = get_model(MODEL)
    vae = load_pth("vae" + spec.vae_version, spec.vae, ckpt / spec.vae_file, torch.float32, "cpu", LoadStats(),
                   "vae")
    lat, _ = _latents(runs["exact"])
    assert lat.shape[0] == vae.config.z_dim
    frames = vae_ops.to_uint8_frames(vae_ops.decode(vae, lat)).numpy()
    videos = runs["exact"] / "videos"
    np.testing.assert_array_equal(frames, PRODUCED["exact"][1])
    np.testing.assert_array_equal(frames, read_mp4(videos / f"{ID}.mp4"))
    np.testing.assert_array_equal(frames, extras.read_png_frames(videos / ID))


def test_same_seed_same_latents(runs):
    a, meta_a = _latents(runs["exact"])
    b, meta_b = _latents(runs["again"])
    assert torch.equal(a, b)
    assert meta_a == meta_b
    for name in RUNS:  # the run without save_latents made the same latent and frames too
        assert torch.equal(PRODUCED[name][0], a)
        np.testing.assert_array_equal(PRODUCED[name][1], PRODUCED["exact"][1])


# -- lossless mp4 and the sidecar --------------------------------------------------------------------------------------
def test_lossless_mp4_is_bit_exact(runs):
    videos = runs["exact"] / "videos"
    pngs = extras.read_png_frames(videos / ID)
    produced = PRODUCED["exact"][1]
    assert produced.shape == (5, 64, 64, 3) and produced.dtype == np.uint8
    np.testing.assert_array_equal(pngs, produced)
    np.testing.assert_array_equal(read_mp4(videos / f"{ID}.mp4"), produced)
    video = _sidecar(runs["exact"])["video"]
    assert video["lossless"] is True and video["pix_fmt"] == "rgb24" and "libx264rgb" in video["codec"]


def test_lossless_encoder_on_random_frames():
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 48, 80, 3), dtype=np.uint8)
    data, info = encode_mp4(frames, 16, lossless=True)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"wan-dist-lossless-{os.getpid()}.mp4"
    try:
        path.write_bytes(data)
        np.testing.assert_array_equal(read_mp4(path), frames)
    finally:
        path.unlink(missing_ok=True)
    assert info["lossless"] and info["pix_fmt"] == "rgb24"


def test_sidecar_lists_the_files(runs):
    out = runs["exact"]
    o = _sidecar(out)["outputs"]
    assert o["latents"] == f"videos/{ID}{extras.LATENTS_SUFFIX}" and (out / o["latents"]).is_file()
    assert o["frames"] == f"videos/{ID}/" and (out / o["frames"]).is_dir()
    assert o["frames_count"] == 5
    names = sorted(p.name for p in (out / o["frames"]).iterdir())
    assert names == [o["frames_pattern"].rsplit("/", 1)[1] % i for i in range(5)]
    assert (out / o["mp4"]).is_file() and (out / o["sidecar"]).is_file()
    # the run with latents only: latents listed, no frames; its mp4 is the lossy default
    side = _sidecar(runs["again"])
    assert set(side["outputs"]) == {"mp4", "sidecar", "latents"}
    assert side["video"]["pix_fmt"] == "yuv420p" and side["video"]["lossless"] is False
    # no temp files or directories left behind
    for name in RUNS:
        assert not [p for p in (runs[name] / "videos").iterdir() if p.name.startswith(".")]


def test_defaults_write_no_extras(runs):
    out = runs["default"]
    cfg = config_mod.compose([f"model={MODEL}", "prompt=x", "ckpt_dir=/nonexistent"])
    assert (cfg.output.save_latents, cfg.output.lossless, cfg.output.frames) == (False, False, None)
    assert sorted(p.name for p in (out / "videos").iterdir()) == [f"{ID}.json", f"{ID}.mp4"]
    side = _sidecar(out)
    assert set(side["outputs"]) == {"mp4", "sidecar"}
    assert side["video"]["codec"] == "h264 (libx264)" and side["video"]["pix_fmt"] == "yuv420p"
    assert side["video"]["lossless"] is False and side["video"]["crf"] == 18


# -- why lossless exists -----------------------------------------------------------------------------------------------
def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def test_lossy_default_is_not_bit_exact(runs, tmp_path):
    # the default run's own frames through its default mp4 come back different
    exact = PRODUCED["default"][1]
    lossy = read_mp4(runs["default"] / "videos" / f"{ID}.mp4")
    assert lossy.shape == exact.shape and not np.array_equal(lossy, exact)
    # noise-like frames: H.264 yuv420p at the default crf loses a lot (chroma subsampling alone halves the colour)
    frames = np.random.default_rng(1).integers(0, 256, size=(5, 64, 64, 3), dtype=np.uint8)
    data, info = encode_mp4(frames, 16)
    (tmp_path / "lossy.mp4").write_bytes(data)
    back = read_mp4(tmp_path / "lossy.mp4")
    assert info["pix_fmt"] == "yuv420p" and not info["lossless"]
    assert not np.array_equal(back, frames)
    assert _psnr(back, frames) < 25, _psnr(back, frames)  # ~13 dB on uniform noise


# -- PNG frame sets are all-or-nothing ---------------------------------------------------------------------------------
def _frames(n=3, value=0):
    f = np.zeros((n, 16, 16, 3), dtype=np.uint8)
    f[..., 0] = value
    f[:, 0, 0] = np.arange(n, dtype=np.uint8)[:, None]
    return f


def test_png_frames_crash_leaves_nothing_trusted(tmp_path, monkeypatch):
    out = OutputDir(tmp_path)
    out.prepare()
    from PIL import Image
    real_save, calls = Image.Image.save, []

    def failing_save(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save(self, *a, **kw)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        extras.write_png_frames(out, "v1", _frames())
    monkeypatch.undo()
    assert list(out.videos.iterdir()) == []  # neither videos/v1/ nor a temp directory
    # a later attempt writes the set; another replaces it whole
    d = extras.write_png_frames(out, "v1", _frames(3, value=10))
    np.testing.assert_array_equal(extras.read_png_frames(d), _frames(3, value=10))
    extras.write_png_frames(out, "v1", _frames(2, value=20))
    np.testing.assert_array_equal(extras.read_png_frames(d), _frames(2, value=20))
    assert [p.name for p in out.videos.iterdir()] == ["v1"]


def test_temp_area_of_a_dead_writer_is_removed_a_live_ones_kept(tmp_path):
    out = OutputDir(tmp_path)
    host = out.writer.rsplit("-", 2)[0]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = tmp_path / ".partial" / f"{host}-{dead}-abcdef" / "v1.frames.x1"
    stale.mkdir(parents=True)
    (stale / "frame_00000.png").write_bytes(b"half")
    live = tmp_path / ".partial" / f"{host}-{os.getppid()}-abcdef"   # a live process: another writer at work
    live.mkdir()
    (live / "v2.mp4.1234").write_bytes(b"in progress")
    out.prepare()
    assert not stale.parent.exists() and live.exists()
    extras.write_png_frames(out, "v1", _frames())
    assert sorted(p.name for p in (out.videos / "v1").iterdir()) == [f"frame_{i:05d}.png" for i in range(3)]
    assert [p.name for p in out.videos.iterdir()] == ["v1"]        # an id never meets a temp name in videos/


def test_frames_option_is_validated():
    with pytest.raises(ValueError, match="output.frames"):
        config_mod.compose([f"model={MODEL}", "prompt=x", "ckpt_dir=/x", "output.frames=jpg"])


def test_decode_command_turns_saved_latents_into_the_same_frames(runs, ckpt, tmp_path):
    """`wan-dist decode LATENTS --ckpt-dir D --out x.mp4` needs nothing but the checkpoint and the latents file, and
    gives the run's own frames (lossless both ways)."""
    from wan_dist.batch.redecode import decode_latents
    from wan_dist.cli import main
    videos = runs["exact"] / "videos"
    lat = sorted(videos.glob("*.latents.safetensors"))[0]
    item = lat.name.split(".latents")[0]
    frames, meta = decode_latents(lat, ckpt)
    np.testing.assert_array_equal(frames, read_mp4(videos / f"{item}.mp4"))
    out = tmp_path / "again.mp4"
    assert main(["decode", str(lat), "--ckpt-dir", str(ckpt), "--out", str(out), "--lossless"]) == 0
    np.testing.assert_array_equal(read_mp4(out), frames)
    import av
    with av.open(str(out)) as f:      # the model's own frame rate (conf/model/<name>.yaml), as the run wrote it
        assert f.streams.video[0].average_rate == json.loads((videos / f"{item}.json").read_text())["video"]["fps"]
    assert main(["decode", str(lat), "--ckpt-dir", str(tmp_path), "--out", str(tmp_path / "x.mp4")]) == 2
    assert not (tmp_path / "x.mp4").exists()

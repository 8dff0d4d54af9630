"""Checkpoint validation (wan_dist.models.checkpoint), the tiny native checkpoint writer and `wan-dist` CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from wan_dist import cli
from wan_dist.models.checkpoint import CheckpointError, check, detect_format, validate_checkpoint
from wan_dist.models.registry import TINY_MODELS, get_model
from wan_dist.models.tiny import make_test_image, write_tiny_checkpoint

SHARD1 = "diffusion_pytorch_model-00001-of-00002.safetensors"
SHARD2 = "diffusion_pytorch_model-00002-of-00002.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tiny_ckpts")
    return {m: write_tiny_checkpoint(m, base / m, seed=0) for m in TINY_MODELS}


@pytest.fixture
def damaged(tiny_ckpts, tmp_path):
    """copy(model) -> a fresh copy of that tiny checkpoint to damage."""
    def copy(model: str) -> Path:
        dst = tmp_path / model
        shutil.copytree(tiny_ckpts[model], dst)
        return dst
    return copy


def _error(ckpt: Path, model: str) -> str:
    with pytest.raises(CheckpointError) as ei:
        check(ckpt, model)
    assert isinstance(ei.value, ValueError)
    return str(ei.value)


def _files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# -- healthy tiny checkpoints -------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", TINY_MODELS)
def test_tiny_checkpoint_is_valid_and_deterministic(model, tiny_ckpts, tmp_path, capsys):
    ckpt = tiny_ckpts[model]
    report = validate_checkpoint(ckpt, model)
    assert report.ok, report.format()
    assert report.ckpt_format == "native" and detect_format(ckpt) == "native"
    spec = get_model(model)
    for sub in spec.dit_dirs():
        d = ckpt / sub
        assert json.loads((d / "config.json").read_text()) == spec.dit
        index = json.loads((d / INDEX).read_text())
        assert set(index["weight_map"].values()) == {SHARD1, SHARD2} and index["metadata"]["total_size"] > 0
    assert {e.dtype for e in report.files["t5"]} == {"BF16"} and {e.dtype for e in report.files["vae"]} == {"F32"}
    assert (ckpt / spec.vae_file).is_file() and "random weights" in (ckpt / "README.txt").read_text().lower()

    assert cli.main(["check-checkpoint", str(ckpt), "--model", model]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "format: native" in out and "BF16" in out

    again = write_tiny_checkpoint(model, tmp_path / "again", seed=0)
    assert _files(again) == _files(ckpt)


def test_seeds_and_experts_differ(tiny_ckpts, tmp_path):
    moe = tiny_ckpts["tiny-t2v-moe"]
    assert (moe / "high_noise_model" / SHARD1).read_bytes() != (moe / "low_noise_model" / SHARD1).read_bytes()
    assert cli.main(["tiny-checkpoint", "tiny-t2v", str(tmp_path / "s1"), "--seed", "1"]) == 0
    assert (tmp_path / "s1" / SHARD1).read_bytes() != (tiny_ckpts["tiny-t2v"] / SHARD1).read_bytes()
    # tokenizer does not depend on the seed
    tok = "google/umt5-xxl/tokenizer.json"
    assert (tmp_path / "s1" / tok).read_bytes() == (tiny_ckpts["tiny-t2v"] / tok).read_bytes()


def test_writer_refuses_real_models_and_overwrite(tiny_ckpts, tmp_path):
    with pytest.raises(ValueError, match="t2v-1.3B.*tiny"):
        write_tiny_checkpoint("t2v-1.3B", tmp_path / "real")
    with pytest.raises(ValueError, match="not empty.*overwrite"):
        write_tiny_checkpoint("tiny-t2v", tiny_ckpts["tiny-t2v"])
    assert cli.main(["tiny-checkpoint", "no-such-model", str(tmp_path / "x")]) == 2
    assert cli.main(["check-checkpoint", str(tmp_path), "--model", "no-such-model"]) == 2
    assert cli.main(["check-checkpoint", str(tmp_path / "absent"), "--model", "tiny-t2v"]) == 1
    with pytest.raises(ValueError, match="not an existing directory"):
        detect_format(tmp_path / "absent")
    assert not list(tmp_path.glob("*.tmp-*"))


def test_tokenizer_loads_with_autotokenizer(tiny_ckpts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_ckpts["tiny-t2v"] / "google/umt5-xxl"))
    assert len(tok) == 256 and tok.pad_token_id == 0 and tok.eos_token_id == 1 and tok.unk_token_id == 2
    for prompt in ("a cat on the beach", "a robot in the city at sunset", "ocean waves near a forest"):
        ids = tok(prompt).input_ids
        assert ids[-1] == 1 and all(0 <= i < 256 for i in ids)
        assert sum(i == 2 for i in ids) == 0, (prompt, ids)


def test_make_test_image(tmp_path):
    from PIL import Image

    a = make_test_image(tmp_path / "a.png", 64, 48)
    b = make_test_image(tmp_path / "b.png", 64, 48)
    assert a.read_bytes() == b.read_bytes()
    img = Image.open(a)
    assert img.size == (64, 48) and img.mode == "RGB" and len(img.getcolors(maxcolors=1 << 16) or []) > 10


# -- one distinct error per kind of damage ------------------------------------------------------------------------
def test_missing_dit_shard(damaged):
    d = damaged("tiny-t2v")
    (d / SHARD2).unlink()
    msg = _error(d, "tiny-t2v")
    assert f"{SHARD2}: DiT shard needed by model tiny-t2v: missing DiT shard (named by {INDEX}" in msg
    assert "missing tensors" in msg  # its keys are then missing from the union


def test_missing_index(damaged):
    d = damaged("tiny-t2v")
    (d / INDEX).unlink()
    msg = _error(d, "tiny-t2v")
    assert f"{INDEX}: DiT index needed by model tiny-t2v: missing index: 2 shard files" in msg


def test_missing_t5_and_vae_and_tokenizer_reported_together(damaged):
    d = damaged("tiny-t2v")
    (d / "models_t5_umt5-xxl-enc-bf16.pth").unlink()
    (d / "Wan2.1_VAE.pth").unlink()
    shutil.rmtree(d / "google")
    msg = _error(d, "tiny-t2v")
    lines = msg.splitlines()
    assert "3 problems" in lines[0]
    assert "  models_t5_umt5-xxl-enc-bf16.pth: T5 encoder needed by model tiny-t2v: missing" in lines
    assert "  Wan2.1_VAE.pth: VAE needed by model tiny-t2v: missing" in lines
    assert any(ln.startswith("  google/umt5-xxl: tokenizer needed by model tiny-t2v: missing directory")
               for ln in lines)


def test_wrong_vae_version_is_named(damaged):
    d = damaged("tiny-t2v")
    (d / "Wan2.1_VAE.pth").rename(d / "Wan2.2_VAE.pth")
    msg = _error(d, "tiny-t2v")
    assert "Wan2.1_VAE.pth: VAE needed by model tiny-t2v: missing; found Wan2.2_VAE.pth instead" in msg


def test_tokenizer_without_files(damaged):
    d = damaged("tiny-ti2v")
    for f in (d / "google/umt5-xxl").iterdir():
        f.unlink()
    assert "google/umt5-xxl: tokenizer needed by model tiny-ti2v: holds neither tokenizer.json nor spiece.model" \
        in _error(d, "tiny-ti2v")


def test_wrong_shape(damaged):
    import torch
    from safetensors.torch import load_file, save_file

    d = damaged("tiny-t2v")
    sd = load_file(d / SHARD2)
    key = sorted(sd)[0]
    sd[key] = sd[key].reshape(-1).contiguous() if sd[key].dim() > 1 else torch.zeros(sd[key].numel() + 1)
    save_file(sd, d / SHARD2, metadata={"format": "pt"})
    msg = _error(d, "tiny-t2v")
    assert f"{SHARD2}: DiT weights needed by model tiny-t2v: 1 tensors with wrong shape: {key} expected" in msg
    assert "missing" not in msg and SHARD1 not in msg


def test_truncated_shard_and_pth(damaged):
    d = damaged("tiny-t2v-moe")
    shard = d / "low_noise_model" / SHARD1
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size // 2])
    t5 = d / "models_t5_umt5-xxl-enc-bf16.pth"
    t5.write_bytes(t5.read_bytes()[:1000])
    msg = _error(d, "tiny-t2v-moe")
    assert (f"low_noise_model/{SHARD1}: DiT shard needed by model tiny-t2v-moe: truncated: header and data offsets "
            f"need {size} bytes, file has {size // 2} bytes") in msg
    assert "models_t5_umt5-xxl-enc-bf16.pth: T5 encoder needed by model tiny-t2v-moe: corrupt or truncated" in msg
    assert "high_noise_model" not in msg


def test_corrupt_header(damaged):
    d = damaged("tiny-t2v")
    raw = bytearray((d / SHARD1).read_bytes())
    raw[8:12] = b"\xff\xfe{]"
    (d / SHARD1).write_bytes(bytes(raw))
    assert f"{SHARD1}: DiT shard needed by model tiny-t2v: corrupt: header is not valid" in _error(d, "tiny-t2v")


def test_ti2v_checked_as_moe_and_config_mismatch(tiny_ckpts):
    msg = _error(tiny_ckpts["tiny-ti2v"], "tiny-t2v-moe")
    assert "high_noise_model: DiT expert directory needed by model tiny-t2v-moe: missing directory high_noise_model/" \
        in msg and "low_noise_model: DiT expert directory" in msg
    assert "Wan2.1_VAE.pth: VAE needed by model tiny-t2v-moe: missing; found Wan2.2_VAE.pth instead" in msg
    assert msg.splitlines()[-1] == "this directory looks like a tiny-ti2v checkpoint"
    # single-DiT model with the wrong DiT: the config fields are named
    msg = _error(tiny_ckpts["tiny-ti2v"], "tiny-t2v")
    assert "config.json: DiT config needed by model tiny-t2v: model_type='ti2v' but the model needs 't2v'; " \
           "in_dim=48 but the model needs 16; out_dim=48" in msg


def test_cli_exit_1_names_the_file(damaged, capsys):
    d = damaged("tiny-i2v-moe")
    (d / "high_noise_model" / SHARD2).unlink()
    assert cli.main(["check-checkpoint", str(d), "--model", "tiny-i2v-moe"]) == 1
    out = capsys.readouterr().out
    assert f"high_noise_model/{SHARD2}: DiT shard needed by model tiny-i2v-moe: missing DiT shard" in out


# -- diffusers layout ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def diffusers_dir(tiny_ckpts, tmp_path_factory) -> Path:
    import torch
    from diffusers import UniPCMultistepScheduler

    from wan_dist.models import convert

    spec = get_model("tiny-t2v")
    d = tmp_path_factory.mktemp("diffusers") / "Wan-tiny-Diffusers"
    torch.manual_seed(0)
    convert.build_library_module("dit", spec.dit, "cpu").save_pretrained(d / "transformer")
    convert.build_library_module("vae2.1", spec.vae, "cpu").save_pretrained(d / "vae")
    convert.build_library_module("t5", spec.t5, "cpu").save_pretrained(d / "text_encoder")
    shutil.copytree(tiny_ckpts["tiny-t2v"] / "google/umt5-xxl", d / "tokenizer")
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0).save_pretrained(
        d / "scheduler")
    index = {"_class_name": "WanPipeline", "_diffusers_version": "0.42.1",
             "transformer": ["diffusers", "WanTransformer3DModel"], "transformer_2": [None, None],
             "vae": ["diffusers", "AutoencoderKLWan"], "text_encoder": ["transformers", "UMT5EncoderModel"],
             "tokenizer": ["transformers", "T5Tokenizer"], "scheduler": ["diffusers", "UniPCMultistepScheduler"]}
    (d / "model_index.json").write_text(json.dumps(index))
    return d


def test_diffusers_layout(diffusers_dir, tmp_path):
    report = validate_checkpoint(diffusers_dir, "tiny-t2v")
    assert report.ckpt_format == "diffusers" and report.ok, report.format()
    assert cli.main(["check-checkpoint", str(diffusers_dir), "--model", "tiny-t2v"]) == 0

    d = tmp_path / "dd"
    shutil.copytree(diffusers_dir, d)
    shutil.rmtree(d / "vae")
    msg = _error(d, "tiny-t2v")
    assert "vae/config.json: VAE needed by model tiny-t2v: diffusers component 'vae' missing: vae/config.json" in msg
    # as an A14B-style model the second expert is missing too
    msg = _error(diffusers_dir, "tiny-t2v-moe")
    assert "model_index.json: diffusers model index needed by model tiny-t2v-moe: does not list component " \
           "'transformer_2'" in msg
    assert "diffusers component 'transformer_2' missing: transformer_2/config.json" in msg


def test_diffusers_truncated_and_wrong_model(diffusers_dir, tmp_path):
    d = tmp_path / "dd"
    shutil.copytree(diffusers_dir, d)
    w = d / "transformer" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    msg = _error(d, "tiny-t2v")
    assert "transformer/diffusion_pytorch_model.safetensors: DiT weights needed by model tiny-t2v: truncated" in msg
    msg = _error(diffusers_dir, "tiny-i2v-moe")
    assert "transformer/config.json: DiT config needed by model tiny-i2v-moe: in_channels=16 but the model needs 36" \
        in msg


def test_single_file_dit_and_unsupported_dtype(damaged):
    import torch
    from safetensors.torch import load_file, save_file

    d = damaged("tiny-t2v")
    sd = {**load_file(d / SHARD1), **load_file(d / SHARD2)}
    for f in (SHARD1, SHARD2, INDEX):
        (d / f).unlink()
    save_file(sd, d / "diffusion_pytorch_model.safetensors")
    report = validate_checkpoint(d, "tiny-t2v")
    assert report.ok, report.format()
    assert [e.path for e in report.files["dit"]] == ["config.json", "diffusion_pytorch_model.safetensors"]
    key = sorted(sd)[0]
    sd[key] = sd[key].to(torch.float64)
    save_file(sd, d / "diffusion_pytorch_model.safetensors")
    assert (f"diffusion_pytorch_model.safetensors: DiT weights needed by model tiny-t2v: 1 tensors with dtype F64, "
            f"allowed F32/BF16/F16: {key}") in _error(d, "tiny-t2v")


def test_overwrite_replaces_atomically(tiny_ckpts, tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    (d / "stale.txt").write_text("x")
    write_tiny_checkpoint("tiny-t2v", d, overwrite=True)
    assert not (d / "stale.txt").exists() and validate_checkpoint(d, "tiny-t2v").ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]

"""Bad input is refused before any model loads: one table of distinct bad inputs (manifest rows, config values, sizes,
frame counts, checkpoint problems), each run through the real entry (`run_distributed_or_local`, exit 2) or the
config composer, asserting the message (field, value, rule) AND that no output file appeared."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from wan_dist.config import compose
from wan_dist.models.tiny import make_test_image
from wan_dist.worker import main as run_distributed_or_local

BASE = ["sample.steps=2", "sample.frame_num=5", "sample.size=32*32", "batch.progress=false", "device=cpu"]


def _csv(text):
    return ("m.csv", text)


def _jsonl(*rows):
    return ("m.jsonl", "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


# (name, model, manifest (file name, text) or None, extra overrides, checkpoint damage, expected regex)
CASES = [
    # --- manifest rows ----------------------------------------------------------------------------------------
    ("unknown-column", "tiny-t2v", _csv("prompt,colour\na cat,red\n"), [], None,
     r"m\.csv:2 colour='red': unknown column"),
    ("empty-prompt", "tiny-t2v", _csv("id,prompt\na,\n"), [], None, r"m\.csv:2 prompt='': must be a non-empty"),
    ("whitespace-prompt", "tiny-t2v", _jsonl({"prompt": "   "}), [], None, r"m\.jsonl:1 prompt='   ': must be"),
    ("missing-prompt-column", "tiny-t2v", _csv("id,seed\na,1\n"), [], None, r"m\.csv:2 prompt=None: must be"),
    ("prompt-not-string", "tiny-t2v", _jsonl({"prompt": 5}), [], None, r"m\.jsonl:1 prompt=5: must be a string"),
    ("seed-not-int", "tiny-t2v", _csv("prompt,seed\na cat,abc\n"), [], None,
     r"m\.csv:2 seed='abc': must be an integer"),
    ("seed-negative", "tiny-t2v", _csv("prompt,seed\na cat,-1\n"), [], None, r"m\.csv:2 seed=-1: must be between"),
    ("seed-too-big", "tiny-t2v", _jsonl({"prompt": "a", "seed": 2**64}), [], None, r"seed=\d+: must be between 0"),
    ("seed-bool", "tiny-t2v", _jsonl({"prompt": "a", "seed": True}), [], None, r"seed=True: must be an integer"),
    ("steps-float", "tiny-t2v", _jsonl({"prompt": "a", "steps": 2.5}), [], None, r"steps=2\.5: must be an integer"),
    ("steps-zero", "tiny-t2v", _csv("prompt,steps\na,0\n"), [], None, r"m\.csv:2 steps=0: must be >= 1"),
    ("shift-nan", "tiny-t2v", _csv("prompt,shift\na,nan\n"), [], None, r"shift='nan': must be a finite number"),
    ("shift-negative", "tiny-t2v", _csv("prompt,shift\na,-2\n"), [], None, r"shift=-2\.0: must be > 0"),
    ("guide-scale-below-1", "tiny-t2v", _csv("prompt,guide_scale\na,0.5\n"), [], None,
     r"guide_scale=0\.5: must be >= 1\.0"),
    ("guide-scale-high-single-expert", "tiny-t2v", _csv("prompt,guide_scale_high\na,3\n"), [], None,
     r"guide_scale_high=3\.0: tiny-t2v has a single expert"),
    ("cfg-truncate-too-many", "tiny-t2v", _csv("prompt,cfg_truncate_steps\na,9\n"), [], None,
     r"cfg_truncate_steps=9: must be between 0 and 2"),
    ("cfg-truncate-high-no-experts", "tiny-t2v", _csv("prompt,cfg_truncate_high_noise_steps\na,1\n"), [], None,
     r"cfg_truncate_high_noise_steps=1: must be between 0 and 0"),
    ("bad-solver", "tiny-t2v", _csv("prompt,solver\na,euler\n"), [], None, r"solver='euler': must be one of"),
    ("duplicate-id", "tiny-t2v", _csv("id,prompt\na,x\na,y\n"), [], None,
     r"m\.csv:3 id='a': duplicate id \(first on line 2\)"),
    ("id-path-traversal", "tiny-t2v", _csv("id,prompt\n../evil,x\n"), [], None,
     r"id='\.\./evil': must match \[A-Za-z0-9\._-\]"),
    ("id-slash", "tiny-t2v", _jsonl({"id": "a/b", "prompt": "x"}), [], None, r"id='a/b': must match"),
    ("id-dotdot", "tiny-t2v", _jsonl({"id": "..", "prompt": "x"}), [], None, r"id='\.\.': must match"),
    ("id-too-long", "tiny-t2v", _jsonl({"id": "x" * 129, "prompt": "x"}), [], None, r"id='x{129}': must match"),
    ("size-garbage", "tiny-t2v", _csv("prompt,size\na,big\n"), [], None, r"size='big': must be W\*H"),
    ("size-not-multiple", "tiny-t2v", _csv("prompt,size\na,33*32\n"), [], None,
     r"size=33\*32: width and height of tiny-t2v must be multiples of 16"),
    ("size-zero", "tiny-t2v", _csv("prompt,size\na,0x32\n"), [], None, r"size='0x32': width and height must be"),
    ("frame-num-zero", "tiny-t2v", _csv("prompt,frame_num\na,0\n"), [], None, r"frame_num=0: must be >= 1"),
    ("frame-num-text", "tiny-t2v", _csv("prompt,frame_num\na,many\n"), [], None,
     r"frame_num='many': must be an integer"),
    ("image-for-text-only", "tiny-t2v", _csv("prompt,image\na,img.png\n"), [], None,
     r"image='img\.png': tiny-t2v is text-to-video and takes no image"),
    ("image-missing", "tiny-ti2v", _csv("prompt,image\na,nope.png\n"), [], None,
     r"image='nope\.png': file not found"),
    ("image-undecodable", "tiny-ti2v", _csv("prompt,image\na,junk.png\n"), [], None,
     r"image='junk\.png': cannot decode the image"),
    ("image-required", "tiny-i2v-moe", _csv("prompt\na\n"), [], None, r"image=None: tiny-i2v-moe needs"),
    ("too-many-cells", "tiny-t2v", _csv("id,prompt\na,b,c\n"), [], None, r"m\.csv:2: 3 cells but the header has 2"),
    ("duplicate-header", "tiny-t2v", _csv("prompt,prompt\na,b\n"), [], None, r"prompt: column appears more than once"),
    ("bad-json-line", "tiny-t2v", _jsonl({"prompt": "ok"}, "{not json"), [], None, r"m\.jsonl:2: not valid JSON"),
    ("json-not-object", "tiny-t2v", _jsonl("[1, 2]"), [], None, r"m\.jsonl:1: each line must be a JSON object"),
    ("empty-manifest", "tiny-t2v", _csv("id,prompt\n"), [], None, r"m\.csv: no rows"),
    ("manifest-wrong-suffix", "tiny-t2v", ("m.txt", "prompt\na\n"), [], None, r"manifest='.*m\.txt': must end in"),
    # --- config values -----------------------------------------------------------------------------------------
    ("config-unknown-key", "tiny-t2v", _csv("prompt\na\n"), ["+sample.colour=red"], None,
     r"sample\.colour='red': unknown key"),
    ("config-bad-solver", "tiny-t2v", _csv("prompt\na\n"), ["sample.solver=euler"], None,
     r"sample\.solver='euler': must be one of unipc, dpm\+\+"),
    ("config-steps-zero", "tiny-t2v", _csv("prompt\na\n"), ["sample.steps=0"], None, r"sample\.steps=0: must be >= 1"),
    ("config-seed-negative", "tiny-t2v", _csv("prompt\na\n"), ["sample.seed=-3"], None,
     r"sample\.seed=-3: must be between 0 and 2\*\*63-1"),
    ("config-crf", "tiny-t2v", _csv("prompt\na\n"), ["output.crf=99"], None, r"output\.crf=99: must be between 0"),
    ("config-size", "tiny-t2v", _csv("prompt\na\n"), ["sample.size=31*32"], None,
     r"size=31\*32: width and height of tiny-t2v must be multiples of 16"),
    ("config-manifest-and-prompt", "tiny-t2v", _csv("prompt\na\n"), ["prompt=hi"], None,
     r"give one of manifest or prompt, not both"),
    ("config-ulysses", "tiny-t2v", _csv("prompt\na\n"), ["parallel.ulysses=3"], None,
     r"parallel\.ulysses=3: must divide the head count"),
    ("config-manifest-missing", "tiny-t2v", None, ["manifest=/nonexistent/p.csv"], None,
     r"manifest='/nonexistent/p\.csv': file not found"),
    # --- checkpoint problems -----------------------------------------------------------------------------------
    ("ckpt-dir-missing", "tiny-t2v", _csv("prompt\na\n"), ["ckpt_dir=/nonexistent/ckpt"], None,
     r"ckpt_dir='/nonexistent/ckpt': not an existing directory"),
    ("ckpt-vae-missing", "tiny-t2v", _csv("prompt\na\n"), [], "rm:Wan2.1_VAE.pth", r"Wan2\.1_VAE\.pth"),
    ("ckpt-shard-truncated", "tiny-t2v", _csv("prompt\na\n"), [],
     "truncate:diffusion_pytorch_model-00002-of-00002.safetensors", r"00002-of-00002\.safetensors"),
    ("ckpt-t5-missing", "tiny-t2v", _csv("prompt\na\n"), [], "rm:models_t5_umt5-xxl-enc-bf16.pth",
     r"models_t5_umt5-xxl-enc-bf16\.pth"),
]


@pytest.fixture(scope="module")
def ckpt_copy(tiny_ckpt, tmp_path_factory):
    """A damageable copy per (model, damage), made on demand."""
    base = tmp_path_factory.mktemp("damaged")

    def get(model: str, damage: str | None) -> Path:
        src = tiny_ckpt(model)
        if damage is None:
            return src
        dst = base / f"{model}-{damage.replace(':', '_')}"
        shutil.copytree(src, dst)
        op, name = damage.split(":", 1)
        if op == "rm":
            (dst / name).unlink()
        elif op == "truncate":
            p = dst / name
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        return dst
    return get


def attempt(overrides: list[str], capsys) -> str:
    """Compose + run through the real entry. Returns the user-facing message (asserting exit 2 when it ran)."""
    try:
        cfg = compose(overrides)
    except ValueError as e:  # the config layer refuses it (launch/run.py turns this into exit 2)
        return str(e)
    capsys.readouterr()
    rc = run_distributed_or_local(cfg)
    err = capsys.readouterr().err
    assert rc == 2, f"expected exit 2 (user error), got {rc}; stderr:\n{err}"
    return err


def test_table_has_30_distinct_cases():
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names)) and len(names) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_refused_before_anything_is_written(case, tmp_path, ckpt_copy, capsys):
    name, model, manifest, extra, damage, expected = case
    work = tmp_path / "in"
    work.mkdir()
    make_test_image(work / "img.png", 32, 32)
    (work / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    overrides = [f"model={model}", f"ckpt_dir={ckpt_copy(model, damage)}", f"out_dir={out}", *BASE]
    if manifest is not None:
        fname, text = manifest
        (work / fname).write_text(text)
        overrides.append(f"manifest={work / fname}")
    overrides += extra
    loaded = []
    import wan_dist.worker as run_mod
    orig = run_mod.load_models
    run_mod.load_models = lambda *a, **k: loaded.append(1) or orig(*a, **k)
    try:
        msg = attempt(overrides, capsys)
    finally:
        run_mod.load_models = orig
    assert re.search(expected, msg), f"{name}: message does not match {expected!r}:\n{msg}"
    assert not loaded, f"{name}: a model was loaded before the input was refused"
    assert not out.exists() or not any(out.rglob("*")), f"{name}: files appeared: {list(out.rglob('*'))}"


def test_all_manifest_problems_reported_together(tmp_path, tiny_ckpt, capsys):
    m = tmp_path / "m.csv"
    m.write_text("id,prompt,seed,size\na,x,1,32*32\na,y,2,32*32\nb,,3,32*32\nc,z,no,32*32\nd,w,4,7*7\n")
    msg = attempt([f"ckpt_dir={tiny_ckpt('tiny-t2v')}", f"manifest={m}", f"out_dir={tmp_path / 'o'}", *BASE], capsys)
    assert "4 problems in the manifest (nothing was run)" in msg
    for line, col in ((3, "id='a'"), (4, "prompt=''"), (5, "seed='no'"), (6, "size=7*7")):
        assert f"{m}:{line} {col}" in msg, msg
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message; this machine has CUDA")
def test_device_cuda_without_gpu(tmp_path, tiny_ckpt, capsys):
    m = tmp_path / "m.csv"
    m.write_text("prompt\na\n")
    over = [f"ckpt_dir={tiny_ckpt('tiny-t2v')}", f"manifest={m}", f"out_dir={tmp_path / 'o'}", *BASE, "device=cuda"]
    msg = attempt(over, capsys)
    assert "device='cuda': no CUDA device is available" in msg
    assert not (tmp_path / "o").exists()
    assert os.environ.get("WAN_DIST_TEST_INJECT_NAN") is None

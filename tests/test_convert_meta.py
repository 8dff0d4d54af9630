"""Key-level checks of wan_dist.models.convert against the real native checkpoint key lists (meta device, no weights)
and a small-numbers round trip with real tensors."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from wan_dist.models.convert import (
    COMPONENTS,
    build_library_module,
    convert_state_dict,
    library_to_native_keys,
    native_spec,
    native_to_library_keys,
    to_native_state_dict,
)

# A copy of the project's reference (../shared/reference/native_keys.json) so a clone tests on its own;
# test_native_keys_copy_matches_the_shared_reference flags drift when the shared file is present.
NATIVE_KEYS = Path(os.environ.get("WAN_DIST_NATIVE_KEYS") or Path(__file__).resolve().parent / "data/native_keys.json")
SHARED_KEYS = Path(__file__).resolve().parents[2] / "shared/reference/native_keys.json"
REAL = {
    "t2v-1.3B": "dit",
    "t2v-14B": "dit",
    "ti2v-5B": "dit",
    "t2v-A14B(expert)": "dit",
    "i2v-A14B(expert)": "dit",
    "vae2.1 (Wan2.1_VAE.pth)": "vae2.1",
    "vae2.2 (Wan2.2_VAE.pth)": "vae2.2",
    "umt5-xxl encoder (models_t5_umt5-xxl-enc-bf16.pth)": "t5",
}
DIT_DEFAULTS = {"eps": 1e-6, "freq_dim": 256, "text_len": 512}


@pytest.fixture(scope="module")
def native_json() -> dict:
    if not NATIVE_KEYS.is_file():
        pytest.fail(f"native key reference {NATIVE_KEYS} is missing (set WAN_DIST_NATIVE_KEYS to its path); "
                    "these tests must not be skipped")
    data = json.loads(NATIVE_KEYS.read_text())
    missing = sorted(set(REAL) - set(data))
    assert not missing, f"{NATIVE_KEYS} lacks components {missing}"
    return data


def _real(native_json, name):
    entry, component = native_json[name], REAL[name]
    cfg = dict(entry["config"])
    if component == "dit":
        for k, v in DIT_DEFAULTS.items():
            cfg.setdefault(k, v)
    return component, cfg, {k: tuple(v) for k, v in entry["keys"].items()}, entry["num_params"]


@pytest.mark.parametrize("name", list(REAL))
def test_real_component_keys(native_json, name):
    component, cfg, keys, num_params = _real(native_json, name)
    lib_shapes = {k: tuple(t.shape) for k, t in build_library_module(component, cfg).state_dict().items()}

    mapping = native_to_library_keys(component, keys)
    assert set(mapping) == set(keys)
    pairs = [(lk, nk) for nk, lks in mapping.items() for lk in lks]
    mapped = [lk for lk, _ in pairs]
    assert len(mapped) == len(set(mapped)), "two native keys fill the same library key"
    missing, unexpected = set(lib_shapes) - set(mapped), set(mapped) - set(lib_shapes)
    assert not missing and not unexpected, f"missing {sorted(missing)[:10]}, unexpected {sorted(unexpected)[:10]}"
    bad = [(nk, lk, keys[nk], lib_shapes[lk]) for lk, nk in pairs if keys[nk] != lib_shapes[lk]]
    assert not bad, f"shape mismatches: {bad[:10]}"

    assert native_spec(component, cfg) == keys
    assert num_params == sum(math.prod(s) for s in keys.values())

    inverse = library_to_native_keys(component, mapped)
    assert {lk: inverse[lk] for lk in mapped} == dict(pairs)
    assert set(inverse.values()) == set(keys)


def test_t5_tied_embedding(native_json):
    _, _, keys, _ = _real(native_json, "umt5-xxl encoder (models_t5_umt5-xxl-enc-bf16.pth)")
    assert native_to_library_keys("t5", ["token_embedding.weight"]) == {
        "token_embedding.weight": ["shared.weight", "encoder.embed_tokens.weight"]}
    assert library_to_native_keys("t5", ["shared.weight", "encoder.embed_tokens.weight"]) == {
        "shared.weight": "token_embedding.weight", "encoder.embed_tokens.weight": "token_embedding.weight"}


# ------------------------------------------------------------------------------------------ small numbers
def _tiny_dit(in_dim, out_dim, **extra):
    return {"model_type": "t2v", "dim": 64, "ffn_dim": 128, "freq_dim": 256, "in_dim": in_dim, "out_dim": out_dim,
            "num_heads": 2, "num_layers": 2, "eps": 1e-6, "text_len": 512, "text_dim": 32, **extra}


VAE21_TINY = {"dim": 8, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
              "temperal_downsample": [False, True, True], "dropout": 0.0}
VAE22_TINY = dict(VAE21_TINY, dim=8, dec_dim=16, z_dim=48)
T5_TINY = {"vocab_size": 256, "dim": 32, "dim_attn": 32, "dim_ffn": 64, "num_heads": 4, "encoder_layers": 2,
           "num_buckets": 32, "shared_pos": False, "dropout": 0.1}
TINY = {
    "dit-16": ("dit", _tiny_dit(16, 16), "t2v-1.3B"),
    "dit-48": ("dit", _tiny_dit(48, 48, model_type="ti2v"), "ti2v-5B"),
    "dit-i2v2.2": ("dit", _tiny_dit(36, 16, model_type="i2v"), "i2v-A14B(expert)"),
    "vae2.1": ("vae2.1", VAE21_TINY, "vae2.1 (Wan2.1_VAE.pth)"),
    "vae2.2": ("vae2.2", VAE22_TINY, "vae2.2 (Wan2.2_VAE.pth)"),
    "t5": ("t5", T5_TINY, "umt5-xxl encoder (models_t5_umt5-xxl-enc-bf16.pth)"),
}


def _first_layers(keys, n=2):
    """Real keys restricted to blocks 0..n-1 (tiny models keep the structure, fewer layers)."""
    return {k for k in keys if not k.startswith("blocks.") or int(k.split(".")[1]) < n}


@pytest.mark.parametrize("tiny", list(TINY))
def test_tiny_round_trip(native_json, tiny):
    component, cfg, real_name = TINY[tiny]
    spec = native_spec(component, cfg)
    # the tiny native layout is the real one with narrower widths (and 2 layers)
    assert set(spec) == _first_layers(native_json[real_name]["keys"])
    gen = torch.Generator().manual_seed(0)
    native = {k: torch.randn(s, generator=gen) for k, s in spec.items()}

    module = build_library_module(component, cfg, device="cpu")
    module.load_state_dict(convert_state_dict(component, native), strict=True)
    back = to_native_state_dict(component, module.state_dict())
    assert set(back) == set(native)
    assert all(torch.equal(back[k], native[k]) for k in native)


def test_wan21_i2v_dit_has_clip_keys():
    cfg = _tiny_dit(36, 16, model_type="i2v", wan_version="2.1")
    spec = native_spec("dit", cfg)
    assert len(spec) == 32 * 2 + 23  # wan_facts §2.12: 32 per block + 23 globals
    assert spec["img_emb.proj.1.weight"] == (1280, 1280) and spec["img_emb.proj.3.weight"] == (64, 1280)
    assert spec["blocks.1.cross_attn.k_img.weight"] == (64, 64)  # CLIP tokens are projected to dim first
    native = {k: torch.randn(s) for k, s in spec.items()}
    module = build_library_module("dit", cfg, device="cpu")
    module.load_state_dict(convert_state_dict("dit", native), strict=True)
    back = to_native_state_dict("dit", module.state_dict())
    assert all(torch.equal(back[k], native[k]) for k in native)
    flf = native_spec("dit", dict(cfg, model_type="flf2v"))
    assert flf["img_emb.emb_pos"] == (1, 514, 1280)


def test_errors():
    with pytest.raises(ValueError, match="unknown component"):
        native_to_library_keys("clip", [])
    for component, key in [("dit", "blocks.0.self_attn.x.weight"), ("vae2.1", "encoder.foo"),
                           ("vae2.2", "decoder.upsamples.0.upsamples.0.residual.9.weight"), ("t5", "lm_head.weight")]:
        with pytest.raises(ValueError, match="unmappable native"):
            native_to_library_keys(component, [key])
    with pytest.raises(ValueError, match="unmappable library"):
        library_to_native_keys("dit", ["blocks.0.attn1.not_there.weight"])
    assert COMPONENTS == ("dit", "vae2.1", "vae2.2", "t5")


@pytest.mark.skipif(not SHARED_KEYS.exists(), reason=f"no shared reference at {SHARED_KEYS}")
def test_native_keys_copy_matches_the_shared_reference():
    assert json.loads(NATIVE_KEYS.read_text()) == json.loads(SHARED_KEYS.read_text())

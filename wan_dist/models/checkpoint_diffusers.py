"""Validation of a diffusers-layout Wan repo (`Wan-AI/Wan2.x-*-Diffusers`): model_index.json + component folders.

Each needed component folder must hold its config and weights; safetensors headers are checked for truncation and,
for transformer(s), vae and text_encoder, tensor names/shapes are compared with the library class built on the
`meta` device from the folder's own config.json (so nothing is allocated).
"""
from __future__ import annotations

import json
from pathlib import Path

from wan_dist.models.checkpoint_files import Collector, collect_safetensors, compare_tensors
from wan_dist.models.registry import ModelSpec

# component -> (what, weights file stem or None, config file)
_COMPONENTS = {
    "transformer": ("DiT", "diffusion_pytorch_model", "config.json"),
    "transformer_2": ("DiT (low-noise expert)", "diffusion_pytorch_model", "config.json"),
    "vae": ("VAE", "diffusion_pytorch_model", "config.json"),
    "text_encoder": ("T5 encoder", "model", "config.json"),
    "tokenizer": ("tokenizer", None, None),
    "scheduler": ("scheduler", None, "scheduler_config.json"),
}


def needed_components(spec: ModelSpec) -> list[str]:
    names = ["transformer", "vae", "text_encoder", "tokenizer", "scheduler"]
    return names[:1] + ["transformer_2"] + names[1:] if spec.is_moe else names


def validate_diffusers(col: Collector, spec: ModelSpec) -> None:
    index_path = col.root / "model_index.json"
    try:
        index = json.loads(index_path.read_text())
        if not isinstance(index, dict):
            raise ValueError("not a JSON object")
    except (ValueError, OSError) as e:
        col.add(index_path, "diffusers model index", f"corrupt ({e})")
        return
    col.file("model_index", index_path, "diffusers model index")
    for name in needed_components(spec):
        what, stem, cfg_name = _COMPONENTS[name]
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
            col.add(index_path, "diffusers model index", f"does not list component {name!r} ({name}: {entry!r})")
        folder = col.root / name
        if name == "tokenizer":
            _check_tokenizer(col, folder)
            continue
        cfg_path = folder / cfg_name
        if not cfg_path.is_file():
            col.add(cfg_path, what, f"diffusers component {name!r} missing: {col.rel(cfg_path)}")
            continue
        try:
            lib_cfg = json.loads(cfg_path.read_text())
        except (ValueError, OSError) as e:
            col.add(cfg_path, what, f"corrupt config ({e})")
            continue
        col.file(name, cfg_path, f"{what} config")
        if stem is None:
            continue
        found = collect_safetensors(col, folder, stem, f"{what} weights", name, f"{what} shard", f"{what} index")
        _check_config(col, spec, name, cfg_path, lib_cfg)
        if found is None:
            continue
        try:
            expected, tied = _expected(name, lib_cfg)
        except Exception as e:  # config.json that the library class rejects
            col.add(cfg_path, what, f"the library class cannot be built from it ({type(e).__name__}: {e})")
            continue
        for k in tied:  # transformers saves one copy of tied weights
            if k not in found:
                expected.pop(k, None)
        single = folder / f"{stem}.safetensors"
        where = single if single.is_file() else folder / f"{stem}.safetensors.index.json"
        compare_tensors(col, where, f"{what} weights", found, expected)


def _check_tokenizer(col: Collector, folder: Path) -> None:
    if not folder.is_dir():
        col.add(folder, "tokenizer", f"diffusers component 'tokenizer' missing: {col.rel(folder)}/")
    elif (folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file():
        name = "tokenizer.json" if (folder / "tokenizer.json").is_file() else "spiece.model"
        col.file("tokenizer", folder / name, "tokenizer")
    else:
        col.add(folder, "tokenizer", "holds neither tokenizer.json nor spiece.model")


def _check_config(col: Collector, spec: ModelSpec, name: str, path: Path, lib_cfg: dict) -> None:
    """Compare the library config with what the registry model needs (field, found, needed)."""
    d, v, t = spec.dit, spec.vae, spec.t5
    if name.startswith("transformer"):
        heads, hd = lib_cfg.get("num_attention_heads"), lib_cfg.get("attention_head_dim")
        want = {"num_attention_heads": (heads, d["num_heads"]),
                "num_attention_heads*attention_head_dim": (heads * hd if heads and hd else None, d["dim"]),
                "ffn_dim": (lib_cfg.get("ffn_dim"), d["ffn_dim"]),
                "num_layers": (lib_cfg.get("num_layers"), d["num_layers"]),
                "in_channels": (lib_cfg.get("in_channels"), d["in_dim"]),
                "out_channels": (lib_cfg.get("out_channels"), d["out_dim"])}
    elif name == "vae":
        want = {"z_dim": (lib_cfg.get("z_dim"), v["z_dim"]), "base_dim": (lib_cfg.get("base_dim"), v["dim"])}
    else:
        want = {"d_model": (lib_cfg.get("d_model"), t["dim"]),
                "num_layers": (lib_cfg.get("num_layers"), t["encoder_layers"]),
                "vocab_size": (lib_cfg.get("vocab_size"), t["vocab_size"])}
    wrong = [f"{k}={got!r} but the model needs {need!r}" for k, (got, need) in want.items() if got != need]
    if wrong:
        col.add(path, _COMPONENTS[name][0] + " config", "; ".join(wrong))


def _expected(name: str, lib_cfg: dict) -> tuple[dict, list[str]]:
    """{tensor name: shape} of the library class for this config, built on meta; and its tied keys."""
    import torch
    with torch.device("meta"):
        if name.startswith("transformer"):
            from diffusers import WanTransformer3DModel
            module, tied = WanTransformer3DModel.from_config(lib_cfg), []
        elif name == "vae":
            from diffusers import AutoencoderKLWan
            module, tied = AutoencoderKLWan.from_config(lib_cfg), []
        else:
            from transformers import UMT5Config, UMT5EncoderModel
            conf = UMT5Config.from_dict(lib_cfg)
            module = UMT5EncoderModel(conf)
            tied = list(getattr(module, "_tied_weights_keys", None) or [])
    return {k: tuple(p.shape) for k, p in module.state_dict().items()}, tied

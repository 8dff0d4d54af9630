"""Saved latents back into frames and an mp4, from just the checkpoint directory and the latents file.

    frames, meta = decode_latents("out/videos/<id>.latents.safetensors", ckpt_dir="/ckpt/Wan2.2-TI2V-5B")
    wan-dist decode out/videos/<id>.latents.safetensors --ckpt-dir /ckpt/Wan2.2-TI2V-5B --out video.mp4

The latents file names its model (metadata `model`, written by output.save_latents=true), which says which VAE to
load; only the VAE is read from the checkpoint. On the same device and VAE dtype this gives the same frames as the run.
"""
from __future__ import annotations

from pathlib import Path


def decode_latents(latents_path, ckpt_dir, *, model: str | None = None, device: str = "cpu",
                   vae_dtype: str = "fp32"):
    """-> (uint8 frames [F, H, W, 3], metadata). `model` overrides the file's own (files written by other tools)."""
    from ..models.checkpoint import detect_format
    from ..models.device import resolve_device
    from ..models.dtypes import parse_dtype
    from ..models.loading import LoadStats, load_pth
    from ..models.registry import get_model
    from ..pipeline import vae as vae_ops
    from .extras import load_latents      # torch: not at import, `wan-dist` builds every subcommand's parser at start
    latents, meta = load_latents(latents_path)
    name = model or meta.get("model")
    if not name:
        raise ValueError(f"{latents_path}: the file does not name its model; pass --model")
    spec = get_model(name)
    ckpt = Path(ckpt_dir)
    if detect_format(ckpt) != "native":
        raise ValueError(f"ckpt_dir={str(ckpt)!r}: decode reads the native layout's {spec.vae_file}; a diffusers "
                         "repo is not supported here")
    vae_file = ckpt / spec.vae_file
    if not vae_file.is_file():
        raise ValueError(f"ckpt_dir={str(ckpt)!r}: {spec.vae_file} not found (model {name} needs the "
                         f"Wan{spec.vae_version} VAE)")
    if latents.shape[0] != spec.z_dim:
        raise ValueError(f"{latents_path}: latents have {latents.shape[0]} channels, the {name} VAE expects "
                         f"{spec.z_dim}")
    dev = resolve_device(device)
    vae = load_pth("vae" + spec.vae_version, spec.vae, vae_file, parse_dtype(vae_dtype, "vae_dtype"), dev,
                   LoadStats(), "vae")
    return vae_ops.to_uint8_frames(vae_ops.decode(vae, latents)).numpy(), meta


def model_fps(name: str | None) -> int:
    """The model's native frame rate, from its defaults in conf/model/<name>.yaml (the one owner of that fact)."""
    import yaml

    from ..config import CONF_DIR
    path = CONF_DIR / "model" / f"{name}.yaml"
    return int((yaml.safe_load(path.read_text()) or {}).get("fps") or 16) if name and path.is_file() else 16


def add_args(p) -> None:
    p.add_argument("latents", help="a videos/<id>.latents.safetensors file (written with output.save_latents=true)")
    p.add_argument("--ckpt-dir", required=True, help="the checkpoint directory (native layout): its VAE is used")
    p.add_argument("--out", required=True, help="the mp4 to write")
    p.add_argument("--model", default=None, help="model name, when the file does not record it")
    p.add_argument("--fps", type=int, default=None, help="frames per second (default: the model's, 16 or 24)")
    p.add_argument("--lossless", action="store_true", help="lossless H.264 (decoded frames equal these frames)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")


def run_cli(args) -> int:
    import sys

    from ..files import write_bytes_atomic
    from ..pipeline.video_io import encode_mp4
    try:
        frames, meta = decode_latents(args.latents, args.ckpt_dir, model=args.model, device=args.device)
    except (ValueError, FileNotFoundError) as e:
        print(f"wan-dist decode: error: {e}", file=sys.stderr)
        return 2
    fps = args.fps or model_fps(args.model or meta.get("model"))
    data, _ = encode_mp4(frames, fps, lossless=args.lossless)
    out = Path(args.out)
    write_bytes_atomic(out, data)
    print(f"wrote {out} ({frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]} at {fps} fps)")
    return 0

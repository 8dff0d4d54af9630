"""Optional per-video outputs for exact comparison: saved latents (output.save_latents) and PNG frames (output.frames).

Both are written before the mp4, the sidecar and the ledger line, so a ledger line 'ok' implies they are complete:

* latents: `videos/<id>.latents.safetensors`, one tensor `latents` (float32 [C, T, H, W], C = the VAE's z_dim): the
  final denoised latent before VAE decode, in the normalised space the DiT works in (decode it with
  wan_dist.pipeline.vae.decode). String metadata: id, model, seed, timesteps (JSON list), steps, solver, ... .
  Serialised in memory and written with write_bytes_atomic (temp file, fsync, rename).
* PNG frames: `videos/<id>/frame_00000.png ...` (RGB, 8 bit, lossless). Written into a temp directory in the
  writer's own `out_dir/.partial/<writer>/`, every file and the directory fsynced, then the directory is renamed into
  place, so `videos/<id>/` is either absent or complete; a crash leaves only the writer's temp area, removed by the
  next run.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..files import fsync_dir, write_bytes_atomic

LATENTS_SUFFIX = ".latents.safetensors"
LATENTS_KEY = "latents"
LATENTS_FORMAT = "wan-dist-latents/1"
FRAME_NAME = "frame_{:05d}.png"


def write_extras(out, output_cfg, item_id: str, result, *, model: str | None = None) -> dict:
    """Write the extras output_cfg asks for; returns entries for the sidecar's `outputs` (paths relative to out_dir)."""
    outputs: dict = {}
    if output_cfg.save_latents:
        path = write_latents(out, item_id, result, model=model)
        outputs["latents"] = path.relative_to(out.root).as_posix()
    if output_cfg.frames == "png":
        d = write_png_frames(out, item_id, result.frames)
        outputs["frames"] = d.relative_to(out.root).as_posix() + "/"
        outputs["frames_pattern"] = outputs["frames"] + FRAME_NAME.replace("{:05d}", "%05d")
        outputs["frames_count"] = int(result.frames.shape[0])
    elif output_cfg.frames is not None:
        raise ValueError(f"output.frames={output_cfg.frames!r}: must be png or null")
    return outputs


# -- latents ----------------------------------------------------------------------------------------------------------
def latents_metadata(result, *, model: str | None = None) -> dict[str, str]:
    req, dn = result.request, result.denoise
    lat = result.latents
    meta = {
        "format": LATENTS_FORMAT,
        "id": req.id, "model": model or "", "seed": str(req.seed),
        "size": f"{result.size[0]}*{result.size[1]}", "frame_num": str(req.frame_num),
        "steps": str(req.steps), "solver": req.solver, "shift": repr(float(req.shift)),
        "guide_scale": repr(float(req.guide_scale)),
        "guide_scale_high": "" if req.guide_scale_high is None else repr(float(req.guide_scale_high)),
        "cfg_truncate_steps": str(req.cfg_truncate_steps),
        "cfg_truncate_high_noise_steps": str(req.cfg_truncate_high_noise_steps),
        "cfg_truncate_keep": req.cfg_truncate_keep,
        "timesteps": json.dumps([int(t) for t in dn.timesteps]),
        "step_experts": json.dumps(list(dn.step_experts)),
        "layout": "C,T,H,W", "shape": json.dumps(list(lat.shape)),
        "space": "normalised (decode with wan_dist.pipeline.vae.decode)",
        "prompt": req.prompt,
    }
    if req.image:
        meta["image"] = str(req.image)
    return meta


def latents_bytes(result, *, model: str | None = None) -> bytes:
    from safetensors.torch import save
    lat = result.latents.detach().to("cpu", torch.float32).contiguous()
    if lat.ndim != 4:
        raise ValueError(f"item {result.request.id}: latents have shape {tuple(lat.shape)}, expected [C, T, H, W]")
    return save({LATENTS_KEY: lat}, metadata=latents_metadata(result, model=model))


def write_latents(out, item_id: str, result, *, model: str | None = None) -> Path:
    path = out.path_for(item_id, LATENTS_SUFFIX)
    write_bytes_atomic(path, latents_bytes(result, model=model), out.partial)
    return path


def load_latents(path) -> tuple[torch.Tensor, dict[str, str]]:
    """videos/<id>.latents.safetensors -> (float32 [C, T, H, W], metadata strings)."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(LATENTS_KEY), dict(f.metadata() or {})


# -- PNG frames -------------------------------------------------------------------------------------------------------
def write_png_frames(out, item_id: str, frames) -> Path:
    """uint8 [F, H, W, 3] -> videos/<id>/frame_00000.png ...; the directory appears complete or not at all."""
    from PIL import Image
    arr = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"item {item_id}: frames must be uint8 [F, H, W, 3], got {arr.dtype} {arr.shape}")
    final = out.path_for(item_id, "")
    videos = final.parent
    videos.mkdir(parents=True, exist_ok=True)
    out.partial.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{item_id}.frames.", dir=out.partial))   # this writer's own temp area
    old = out.partial / f"{tmp.name}.old"
    try:
        for i, frame in enumerate(arr):
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="PNG")
            with open(tmp / FRAME_NAME.format(i), "wb") as fh:
                fh.write(buf.getvalue())
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)                      # mkdtemp makes 0700; the frames dir reads like any other
        fsync_dir(tmp)
        if final.exists() or final.is_symlink():  # an earlier attempt's set: move it aside, then swap
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(videos)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_png_frames(directory) -> np.ndarray:
    """videos/<id>/ -> uint8 [F, H, W, 3] in frame order."""
    from PIL import Image
    files = sorted(Path(directory).glob("frame_*.png"))
    if not files:
        raise FileNotFoundError(f"{directory}: no frame_*.png")
    out = []
    for f in files:
        with Image.open(f) as im:
            out.append(np.asarray(im.convert("RGB")))
    return np.stack(out)

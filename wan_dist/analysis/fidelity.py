"""How far one video is from another: PSNR and SSIM of the decoded frames, relative L2 and cosine of final latents.

Metrics library: torchmetrics (Lightning AI's metrics package, pinned in setup.cfg). Chosen over scikit-image because
it is torch-native (a GPU node compares on the GPU; frames go through in chunks), adds one small dependency
(lightning-utilities) where scikit-image brings scipy, networkx, imageio and tifffile, and its SSIM defaults are the
reference ones of Wang et al. 2004 (Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03; reflect-padded borders)
where scikit-image defaults to a 7x7 uniform window.

Definitions (a = the setting's video, b = the baseline's; uint8 RGB frames [F, H, W, 3], data range 255):
  psnr_db      mean over frames of 10 log10(255^2 / MSE(frame)); inf when every frame is identical
  psnr_db_min  the worst frame's PSNR
  ssim         mean over frames of the per-frame SSIM (averaged over the 3 channels and all pixels)
  latent_rel_l2  ||a - b||_2 / ||b||_2 of the final latents (float64);  latent_cosine  <a, b> / (|a| |b|)
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def _to_tensor(frames: np.ndarray, device) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float32 [F, 3, H, W] in 0..255."""
    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float()


def frame_metrics(a: np.ndarray, b: np.ndarray, device="cpu", chunk: int = 16) -> dict:
    """PSNR / SSIM of two uint8 videos of the same shape [F, H, W, 3], frame by frame."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
    if a.shape != b.shape:
        raise ValueError(f"frames: shapes differ ({a.shape} vs {b.shape}); compare videos of the same size and length")
    psnr, ssim = [], []
    for i in range(0, a.shape[0], chunk):
        x, y = _to_tensor(a[i:i + chunk], device), _to_tensor(b[i:i + chunk], device)   # [f, 3, H, W]
        psnr += peak_signal_noise_ratio(x, y, data_range=255.0, reduction="none", dim=(1, 2, 3)).tolist()
        ssim += structural_similarity_index_measure(x, y, data_range=255.0, reduction="none").tolist()
    return {"psnr_db": float(np.mean(psnr)), "psnr_db_min": float(np.min(psnr)), "ssim": float(np.mean(ssim)),
            "frames": len(psnr)}


def latent_metrics(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Relative L2 distance and cosine similarity of two latents of the same shape (b is the reference)."""
    if a.shape != b.shape:
        raise ValueError(f"latents: shapes differ ({tuple(a.shape)} vs {tuple(b.shape)})")
    x, y = a.double().flatten(), b.double().flatten()
    nb, nx = float(y.norm()), float(x.norm())
    return {"latent_rel_l2": float((x - y).norm()) / nb if nb > 0 else math.nan,
            "latent_cosine": float(x @ y) / (nx * nb) if nx > 0 and nb > 0 else math.nan}


def read_frames(run_dir: Path, sidecar: dict) -> tuple[np.ndarray, str]:
    """The video's uint8 frames and where they came from: `png` (output.frames=png), `mp4 lossless`
    (output.lossless=true; exact) or `mp4 lossy` (H.264 yuv420p: codec noise adds to any difference)."""
    out = sidecar.get("outputs") or {}
    if out.get("frames"):
        from PIL import Image
        files = sorted((run_dir / out["frames"]).glob("frame_*.png"))
        if files:
            return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]), "png"
    from ..pipeline.video_io import read_mp4
    mp4 = run_dir / out.get("mp4", f"videos/{sidecar.get('id')}.mp4")
    lossless = bool((sidecar.get("video") or {}).get("lossless"))
    return read_mp4(mp4), "mp4 lossless" if lossless else "mp4 lossy"


def read_latents(run_dir: Path, sidecar: dict) -> torch.Tensor | None:
    rel = (sidecar.get("outputs") or {}).get("latents")
    if not rel or not (run_dir / rel).is_file():
        return None
    from ..batch.extras import load_latents
    return load_latents(run_dir / rel)[0]


def video_fidelity(run_dir: Path, sidecar: dict, base_dir: Path, base_sidecar: dict, device="cpu") -> dict:
    """Every metric of one video against its baseline video (latent metrics only when both saved their latents)."""
    fa, src_a = read_frames(Path(run_dir), sidecar)
    fb, src_b = read_frames(Path(base_dir), base_sidecar)
    exact = src_a != "mp4 lossy" and src_b != "mp4 lossy"
    row = {**frame_metrics(fa, fb, device), "frames_source": src_a if src_a == src_b else f"{src_a} / {src_b}",
           "frames_exact": exact}
    la, lb = read_latents(Path(run_dir), sidecar), read_latents(Path(base_dir), base_sidecar)
    if la is not None and lb is not None:
        row.update(latent_metrics(la, lb))
    return row

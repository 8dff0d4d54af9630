"""VAE stage helpers: the native latent normalisation around diffusers' AutoencoderKLWan (wan_facts.md §3).

Shapes: video [3, F, H, W] in [-1, 1]; latent [z, T, H/s, W/s] with T = (F-1)/4 + 1.
encode: z = (mu - mean) * (1/std); decode: x = z / (1/std) + mean -> decoder -> clamp(-1, 1). The VAE class itself does
not normalise; the native wrapper (and diffusers' pipelines) do, in this exact arithmetic order.
"""
from __future__ import annotations

import torch


def _scale(vae, device):
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=device).view(-1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std, dtype=torch.float32, device=device).view(-1, 1, 1, 1)
    return mean, inv_std


@torch.no_grad()
def encode(vae, video: torch.Tensor) -> torch.Tensor:
    """[3, F, H, W] -> normalised latent [z, T, h, w] (float32; deterministic: the posterior mean)."""
    dev = next(vae.parameters()).device
    mu = vae.encode(video[None].to(device=dev, dtype=vae.dtype)).latent_dist.mode()[0].float()
    mean, inv_std = _scale(vae, dev)
    return (mu - mean) * inv_std


@torch.no_grad()
def decode(vae, latent: torch.Tensor) -> torch.Tensor:
    """normalised latent [z, T, h, w] -> video [3, F, H, W] in [-1, 1] (float32)."""
    dev = next(vae.parameters()).device
    mean, inv_std = _scale(vae, dev)
    x = latent.to(dev, torch.float32) / inv_std + mean
    return vae.decode(x[None].to(vae.dtype)).sample[0].float().clamp(-1, 1)


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """[3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3] (native save_video: (x+1)/2*255, truncating cast)."""
    x = (video.clamp(-1, 1) + 1) / 2
    return (x * 255).to(torch.uint8).permute(1, 2, 3, 0).contiguous().cpu()

"""Latents stage: noise drawn exactly as the native code draws it, plus the per-family conditioning.

t2v:  latents [z, T, h, w] = randn(generator=Generator(device).manual_seed(seed)), float32.
ti2v: same noise; image mode pins the first latent frame to the image latent (mask2[:, 0] = 0), re-blended after every
      step, and those tokens get timestep 0 (per-token timesteps [1, T*(h/2)*(w/2)]).
i2v:  noise [16, T, lat_h, lat_w]; y = [mask(4) ; image-video latent(16)] = [20, T, lat_h, lat_w] concatenated to the
      DiT input on channels -> [1, 36, T, lat_h, lat_w].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..models.registry import ModelSpec
from . import vae as vae_ops
from .sizes import best_output_size, i2v_latent_hw, latent_frames


def draw_noise(shape: tuple[int, ...], seed: int, device) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float32, device=device, generator=g)


def image_to_tensor(img) -> torch.Tensor:
    """PIL RGB -> [3, H, W] in [-1, 1] (torchvision to_tensor().sub(0.5).div(0.5) without torchvision)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).sub(0.5).div(0.5)


@dataclass
class Conditioning:
    family: str
    latents: torch.Tensor                  # initial latents [z, T, h, w]
    size: tuple[int, int]                  # output (W, H) in pixels
    y: torch.Tensor | None = None          # i2v: [20, T, h, w]
    mask2: torch.Tensor | None = None      # ti2v: [z, T, h, w]; 0 on pinned (image) positions
    z_image: torch.Tensor | None = None    # ti2v image mode: [z, 1, h, w]

    def model_input(self, latents: torch.Tensor, dtype) -> torch.Tensor:
        """[z, T, h, w] -> DiT input [1, C, T, h, w]."""
        x = latents if self.y is None else torch.cat([latents, self.y], dim=0)
        return x[None].to(dtype)

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """ti2v: per-token [1, T*(h/2)*(w/2)] (mask x t, patch-subsampled); others: [1]."""
        if self.family != "ti2v":
            return t.reshape(1)
        per_token = (self.mask2[0][:, ::2, ::2] * t).flatten()   # [T * h/2 * w/2]
        return per_token[None]

    def after_step(self, latents: torch.Tensor) -> torch.Tensor:
        if self.z_image is None:
            return latents
        return (1.0 - self.mask2) * self.z_image + self.mask2 * latents


def prepare(spec: ModelSpec, vae, *, size: tuple[int, int], frame_num: int, seed: int, device,
            image=None) -> Conditioning:
    z, T = spec.z_dim, latent_frames(frame_num, spec)
    sh, sw = spec.vae_stride[1], spec.vae_stride[2]
    if spec.family == "i2v":
        if image is None:
            raise ValueError(f"image=None: {spec.name} needs a conditioning image")
        img = image_to_tensor(image)                                   # [3, ih, iw]
        lat_h, lat_w = i2v_latent_hw(img.shape[1], img.shape[2], size[0] * size[1], spec)
        h, w = lat_h * sh, lat_w * sw
        noise = draw_noise((z, T, lat_h, lat_w), seed, device)
        msk = torch.ones(1, frame_num, lat_h, lat_w, device=device)
        msk[:, 1:] = 0
        msk = torch.cat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
        msk = msk.view(1, msk.shape[1] // 4, 4, lat_h, lat_w).transpose(1, 2)[0]     # [4, T, lat_h, lat_w]
        first = F.interpolate(img[None].cpu(), size=(h, w), mode="bicubic").transpose(0, 1)  # [3, 1, h, w]
        video = torch.cat([first, torch.zeros(3, frame_num - 1, h, w)], dim=1)              # [3, F, h, w]
        y = torch.cat([msk, vae_ops.encode(vae, video.to(device))])                       # [20, T, lat_h, lat_w]
        return Conditioning("i2v", noise, (w, h), y=y)
    if spec.family == "ti2v":
        if image is not None:
            iw, ih = image.size
            dw, dh = spec.patch_size[2] * sw, spec.patch_size[1] * sh
            ow, oh = best_output_size(iw, ih, dw, dh, size[0] * size[1])
            scale = max(ow / iw, oh / ih)
            from PIL import Image
            img = image.convert("RGB").resize((round(iw * scale), round(ih * scale)), Image.LANCZOS)
            x1, y1 = (img.width - ow) // 2, (img.height - oh) // 2
            img = img.crop((x1, y1, x1 + ow, y1 + oh))
            noise = draw_noise((z, T, oh // sh, ow // sw), seed, device)
            z_img = vae_ops.encode(vae, image_to_tensor(img)[:, None].to(device))        # [z, 1, h, w]
            mask2 = torch.ones_like(noise)
            mask2[:, 0] = 0
            latents = (1.0 - mask2) * z_img + mask2 * noise
            return Conditioning("ti2v", latents, (ow, oh), mask2=mask2, z_image=z_img)
        noise = draw_noise((z, T, size[1] // sh, size[0] // sw), seed, device)
        return Conditioning("ti2v", noise, size, mask2=torch.ones_like(noise))
    if image is not None:
        raise ValueError(f"image given: {spec.name} is a text-to-video model and takes no image")
    return Conditioning("t2v", draw_noise((z, T, size[1] // sh, size[0] // sw), seed, device), size)

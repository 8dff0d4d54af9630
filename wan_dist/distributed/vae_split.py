"""VAE decode split over the ranks of a replica by spatial tiles with an exact halo (not rank 0 alone).

Shapes: latent [z, T, h, w] -> video [3, F, H, W], F = 1 + 4 (T - 1). The decoder runs frame by frame (causal time
caches). Per latent frame, every rank runs conv_in + the mid block on the whole frame (latent resolution: cheap, and
the mid block's attention is global over the frame), then the up path + head -- the expensive, full-resolution part,
purely local in space -- only on its column band [a, b) widened by a halo of `halo` latent columns, and keeps
the output columns of [a, b). The halo is the up path's receptive field, so each kept pixel sees exactly the inputs
it sees in the whole decode: the frames equal AutoencoderKLWan's own decode up to float summation order.
Bands are gathered over the "replica" axis, padded to equal width (gloo needs equal sizes).
Each rank keeps its own causal caches (conv_in/mid: whole frame; up path: its band), which is valid because time
causality is per position.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from ..pipeline import vae as vae_ops


def up_path_geometry(decoder) -> tuple[int, int]:
    """(halo in latent columns, output pixels per latent column) of the decoder's up path + head, from its modules:
    each 3x3 conv adds one pixel of reach at the scale it runs at; conservative (counts a block's convs at the
    block's input scale) plus one column for nearest-upsampling alignment."""
    reach, scale = 0.0, 1
    for block in decoder.up_blocks:
        n3 = sum(1 for mod in block.modules() if isinstance(mod, (nn.Conv2d, nn.Conv3d))
                 and mod.kernel_size[-1] == 3)
        reach += n3 / scale
        ups = [mod for mod in block.modules() if getattr(mod, "mode", None) in ("upsample2d", "upsample3d")]
        scale *= 2 ** len(ups)
    reach += 1 / scale                                    # conv_out
    return math.ceil(reach) + 1, scale


def _cached_conv(conv, x, cache, idx, cache_t):
    """One causal conv with its time cache, as WanDecoder3d.forward does for conv_in / conv_out."""
    i = idx[0]
    cache_x = x[:, :, -cache_t:].clone()
    if cache_x.shape[2] < 2 and cache[i] is not None:
        cache_x = torch.cat([cache[i][:, :, -1:].to(cache_x.device), cache_x], dim=2)
    out = conv(x, cache[i])
    cache[i] = cache_x
    idx[0] += 1
    return out


@torch.no_grad()
def decode_band(vae, z: torch.Tensor, a: int, b: int, halo: int, scale: int) -> torch.Tensor:
    """z [1, z, T, h, w] (denormalised) -> decoder output of latent columns [a, b): [1, C, F, H', (b-a)*scale]."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import CACHE_T
    dec = vae.decoder
    n = len(vae._feat_map) if getattr(vae, "_feat_map", None) is not None else 64
    cache_full, cache_band = [None] * n, [None] * n
    lo, hi = max(0, a - halo), min(z.shape[-1], b + halo)
    x = vae.post_quant_conv(z)
    outs = []
    for i in range(z.shape[2]):
        idx = [0]
        h = _cached_conv(dec.conv_in, x[:, :, i:i + 1], cache_full, idx, CACHE_T)
        h = dec.mid_block(h, feat_cache=cache_full, feat_idx=idx)          # [1, C, 1, h, w] whole frame
        h = h[..., lo:hi]                                                  # [1, C, 1, h, hi-lo] band + halo
        idx = [0]
        for up in dec.up_blocks:
            h = up(h, feat_cache=cache_band, feat_idx=idx, first_chunk=(i == 0))
        h = dec.nonlinearity(dec.norm_out(h))
        h = _cached_conv(dec.conv_out, h, cache_band, idx, CACHE_T)
        outs.append(h[..., (a - lo) * scale:(b - lo) * scale])
    return torch.cat(outs, 2)


def bands(w: int, n: int) -> list[tuple[int, int]]:
    base, extra = divmod(w, n)
    out, s = [], 0
    for r in range(n):
        e = s + base + (1 if r < extra else 0)
        out.append((s, e))
        s = e
    return out


class SplitDecode:
    def __init__(self, m):
        self.group = m.group("replica")
        self.rank, self.n = m.local_rank("replica"), m.size("replica")

    @torch.no_grad()
    def __call__(self, vae, latent: torch.Tensor) -> torch.Tensor:
        """normalised latent [z, T, h, w] -> video [3, F, H, W] in [-1, 1] (float32), identical on every rank."""
        w = latent.shape[-1]
        if w < self.n:
            return vae_ops.decode(vae, latent)
        halo, scale = up_path_geometry(vae.decoder)
        dev = next(vae.parameters()).device
        mean, inv_std = vae_ops._scale(vae, dev)
        z = (latent.to(dev, torch.float32) / inv_std + mean)[None].to(vae.dtype)       # [1, z, T, h, w]
        spans = bands(w, self.n)
        a, b = spans[self.rank]
        mine = decode_band(vae, z, a, b, halo, scale)                                  # [1, C, F, H', (b-a)s]
        width = max(e - s for s, e in spans) * scale
        padded = torch.zeros((*mine.shape[:-1], width), dtype=mine.dtype, device=mine.device)
        padded[..., :mine.shape[-1]] = mine
        allb = torch.empty((self.n * padded.shape[0], *padded.shape[1:]), dtype=padded.dtype, device=padded.device)
        dist.all_gather_into_tensor(allb, padded.contiguous(), group=self.group)       # axis: replica
        out = torch.cat([allb[r:r + 1, ..., :(e - s) * scale] for r, (s, e) in enumerate(spans)], dim=-1)
        if vae.config.patch_size is not None:                                    # Wan2.2: [1, 12, ..] -> [1, 3, ..]
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify
            out = unpatchify(out, patch_size=vae.config.patch_size)
        return out[0].float().clamp(-1, 1)

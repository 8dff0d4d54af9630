"""`compile=regional`: torch.compile each transformer block once, at load time, so compiling is its own stage and not
part of the first video's inference.

    compile_dits(dits, with_cache) -> targets      mark the modules for compilation (lazy: nothing compiles yet)
    warm_up(dits, spec, ...)                       one forward per expert and batch size on the run's default shape:
                                                   this is where the compiling happens

Why regional: every block of a Wan DiT has the same code, and dynamo compiles it once and reuses the graph for every
block instance (module parameters are graph inputs), so compiling 30-40 blocks costs about as much as one.
`block.compile()` is used rather than diffusers' `compile_repeated_blocks()`, which matches the exact class name and
misses blocks FSDP2 has re-classed (FSDPWanTransformerBlock).

With a step cache in the run the cache hooks replace the blocks' `forward` and MagCache's are excluded from
compilation (`torch.compiler.disable`): a compiled block would then run eagerly. So the heavy sub-modules beneath the
hooks (attn1, attn2, ffn) are compiled instead, and the hooks run eagerly around them.

Shapes of the warm-up forward: x [B, C_in, T, h, w] zeros at the run's default size and frame count; timestep
[B] int64 (per token [B, L] float32 for TI2V, as the denoising loop passes it); text [B, 512, text_dim] zeros.
B = 1, and 2 with sample.cfg_batch. A row with another size compiles again (dynamo makes the shape dynamic) inside
its own denoise.
"""
from __future__ import annotations

import torch

from ..models.registry import ModelSpec
from .cache import cache_context
from .sizes import latent_frames
from .text import TEXT_LEN

BLOCKS, SUBMODULES = "blocks", "attn1+attn2+ffn"


def compile_dits(dits: dict, with_cache: bool) -> str:
    for model in dits.values():
        for block in model.blocks:
            for module in ((block.attn1, block.attn2, block.ffn) if with_cache else (block,)):
                module.compile()
    return SUBMODULES if with_cache else BLOCKS


@torch.no_grad()
def warm_up(dits: dict, spec: ModelSpec, *, size: tuple[int, int], frame_num: int, device, dtype,
            batches: tuple[int, ...] = (1,)) -> None:
    from diffusers.hooks import HookRegistry
    sh, sw = spec.vae_stride[1], spec.vae_stride[2]
    for model in dits.values():
        c = model.config
        T, h, w = latent_frames(frame_num, spec), size[1] // sh, size[0] // sw
        for b in batches:
            x = torch.zeros(b, c.in_channels, T, h, w, device=device, dtype=dtype)
            if spec.family == "ti2v":
                pt, ph, pw = c.patch_size
                t = torch.full((b, (T // pt) * (h // ph) * (w // pw)), 500.0, device=device)
            else:   # the schedulers' timesteps are int64 (dynamo guards on the dtype: match the loop's)
                t = torch.full((b,), 500, device=device, dtype=torch.int64)
            text = torch.zeros(b, TEXT_LEN, c.text_dim, device=device, dtype=dtype)
            with cache_context(model, "warmup"):
                model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)
        HookRegistry.check_if_exists_or_initialize(model).reset_stateful_hooks()   # no cache state survives

"""Hand-written native <-> library key rules where diffusers has no converter (see ``convert.py``).

A rule is ``(native_pattern, (library_pattern, ...), resample_offset)``.  Patterns are literal key names with
placeholders: ``{e}`` encoder|decoder, ``{i}``/``{j}`` integers, ``{a}`` q|k|v|o, ``{p}`` weight|bias.
``resample_offset`` is set on Wan2.2 VAE resampler rules: the library name has no ``j`` (``downsampler`` /
``upsampler``) and the native index is ``num_res_blocks + offset`` (encoder stage: 2 resblocks then the resampler;
decoder stage: 3 resblocks then the resampler).
"""
from __future__ import annotations

import functools
import re

_GROUPS = {"e": "encoder|decoder", "i": r"\d+", "j": r"\d+", "a": "q|k|v|o", "p": "weight|bias"}

# ---- Wan2.2 VAE (wan_facts.md §3.2; diffusers scripts/convert_wan_to_diffusers.py `convert_vae_22`)
_RES = [("residual.0.gamma", "norm1.gamma"), ("residual.2.{p}", "conv1.{p}"), ("residual.3.gamma", "norm2.gamma"),
        ("residual.6.{p}", "conv2.{p}"), ("shortcut.{p}", "conv_shortcut.{p}")]
VAE22_RULES = [
    ("conv1.{p}", ("quant_conv.{p}",), None),
    ("conv2.{p}", ("post_quant_conv.{p}",), None),
    ("{e}.conv1.{p}", ("{e}.conv_in.{p}",), None),
    ("{e}.head.0.gamma", ("{e}.norm_out.gamma",), None),
    ("{e}.head.2.{p}", ("{e}.conv_out.{p}",), None),
    ("{e}.middle.1.norm.gamma", ("{e}.mid_block.attentions.0.norm.gamma",), None),
    ("{e}.middle.1.to_qkv.{p}", ("{e}.mid_block.attentions.0.to_qkv.{p}",), None),
    ("{e}.middle.1.proj.{p}", ("{e}.mid_block.attentions.0.proj.{p}",), None),
]
for _n, _l in _RES:
    VAE22_RULES += [
        ("{e}.middle.0." + _n, ("{e}.mid_block.resnets.0." + _l,), None),
        ("{e}.middle.2." + _n, ("{e}.mid_block.resnets.1." + _l,), None),
        ("encoder.downsamples.{i}.downsamples.{j}." + _n, ("encoder.down_blocks.{i}.resnets.{j}." + _l,), None),
        ("decoder.upsamples.{i}.upsamples.{j}." + _n, ("decoder.up_blocks.{i}.resnets.{j}." + _l,), None),
    ]
for _r in ("resample.1.{p}", "time_conv.{p}"):
    VAE22_RULES += [
        ("encoder.downsamples.{i}.downsamples.{j}." + _r, ("encoder.down_blocks.{i}.downsampler." + _r,), 0),
        ("decoder.upsamples.{i}.upsamples.{j}." + _r, ("decoder.up_blocks.{i}.upsampler." + _r,), 1),
    ]

# ---- umt5 encoder -> transformers UMT5EncoderModel (wan_facts.md §4.2)
_T5_BLOCK = [("attn.{a}.weight", "layer.0.SelfAttention.{a}.weight"),
             ("pos_embedding.embedding.weight", "layer.0.SelfAttention.relative_attention_bias.weight"),
             ("norm1.weight", "layer.0.layer_norm.weight"),
             ("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),  # GELU branch
             ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"),  # linear branch
             ("ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight"),
             ("norm2.weight", "layer.1.layer_norm.weight")]
T5_RULES = [("token_embedding.weight", ("shared.weight", "encoder.embed_tokens.weight"), None),
            ("norm.weight", ("encoder.final_layer_norm.weight",), None)]
T5_RULES += [("blocks.{i}." + n, ("encoder.block.{i}." + lib,), None) for n, lib in _T5_BLOCK]


@functools.lru_cache(maxsize=None)
def _rx(pattern: str) -> re.Pattern:
    parts = re.split(r"\{(\w)\}", pattern)  # literal, group, literal, group, ...
    body = "".join(re.escape(x) if n % 2 == 0 else f"(?P<{x}>{_GROUPS[x]})" for n, x in enumerate(parts))
    return re.compile(f"^{body}$")


def rules_to_library(rules, native_keys) -> tuple[dict[str, list[str]], list[str]]:
    """(native -> [library keys], unmatched native keys)."""
    out, bad = {}, []
    for k in native_keys:
        for nat, libs, _ in rules:
            m = _rx(nat).match(k)
            if m:
                out[k] = [lib.format(**m.groupdict()) for lib in libs]
                break
        else:
            bad.append(k)
    return out, bad


def rules_to_native(rules, library_keys, num_res_blocks: int) -> tuple[dict[str, str], list[str]]:
    """(library -> native key, unmatched library keys)."""
    out, bad = {}, []
    for k in library_keys:
        hit = None
        for nat, libs, offset in rules:
            for lib in libs:
                m = _rx(lib).match(k)
                if m:
                    g = m.groupdict()
                    if offset is not None:
                        g["j"] = str(num_res_blocks + offset)
                    hit = nat.format(**g)
                    break
            if hit:
                break
        if hit is None:
            bad.append(k)
        else:
            out[k] = hit
    return out, bad

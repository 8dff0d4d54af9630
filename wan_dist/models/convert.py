"""Native Wan checkpoint layout <-> library classes, on key names only.

Why this module exists: the runner reads the *native* checkpoints (``Wan-AI/Wan2.x-*`` repos, not the ``*-Diffusers``
ones) but runs diffusers' ``WanTransformer3DModel`` / ``AutoencoderKLWan`` and transformers' ``UMT5EncoderModel``.
We own that conversion: it works on key names (no tensors), so it can drive sharded/lazy loading and validate a
safetensors header before any weight is read.  Where diffusers ships a converter (DiT:
``convert_wan_transformer_to_diffusers``; Wan2.1 VAE: ``convert_wan_vae_to_diffusers``) the mapping is *read out of
it* by converting a dict of sentinels, so we follow diffusers' own naming.  The Wan2.2 VAE (no single-file converter
in diffusers) and the umt5 encoder use the rule tables in ``convert_rules.py`` (wan_facts.md §3.2, §4.2).

Unknown keys raise ``ValueError`` listing them.  Wan2.1 i2v/flf2v DiTs (CLIP ``img_emb``) share ``model_type`` with
Wan2.2 i2v-A14B (no CLIP); pass ``"wan_version": "2.1"`` in the native config to get the image embedder.
"""
from __future__ import annotations

import contextlib
import functools
import re
from typing import Iterable

import torch

from .convert_rules import T5_RULES, VAE22_RULES, rules_to_library, rules_to_native
from .registry import ROPE_MAX_SEQ_LEN

COMPONENTS = ("dit", "vae2.1", "vae2.2", "t5")

# wan_facts.md §3 (= official vae2_1.py / vae2_2.py mean/std)
VAE21_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632,
              -0.1922, -0.9497, 0.2503, -0.2921]
VAE21_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382,
             1.1253, 2.8251, 1.9160]
VAE22_MEAN = [-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
              0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
              -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
              -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667]
VAE22_STD = [0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901, 0.6885,
             0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659, 0.7069, 0.5338,
             0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458,
             1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744]


def _check(component: str) -> None:
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; expected one of {COMPONENTS}")


# ---------------------------------------------------------------------------------------------------- configs
def library_config(component: str, native_cfg: dict):
    """Library constructor kwargs (dit, vae*) or a ``UMT5Config`` (t5) from a native config dict."""
    _check(component)
    c = native_cfg
    if component == "dit":
        dim, heads = c["dim"], c["num_heads"]
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {heads}")
        if not c.get("qk_norm", True) or not c.get("cross_attn_norm", True) or \
                tuple(c.get("window_size", (-1, -1))) != (-1, -1):
            raise NotImplementedError("only qk_norm=True, cross_attn_norm=True, global attention (all Wan models)")
        kw = dict(patch_size=tuple(c.get("patch_size", (1, 2, 2))), num_attention_heads=heads,
                  attention_head_dim=dim // heads, in_channels=c["in_dim"], out_channels=c["out_dim"],
                  text_dim=c.get("text_dim", 4096), freq_dim=c["freq_dim"], ffn_dim=c["ffn_dim"],
                  num_layers=c["num_layers"], cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=c["eps"],
                  image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=ROPE_MAX_SEQ_LEN)
        if c.get("model_type") in ("i2v", "flf2v") and str(c.get("wan_version", "")) == "2.1":
            kw.update(image_dim=1280, added_kv_proj_dim=dim)  # Wan2.1 CLIP image tokens (wan_facts §2.10, §2.13)
            if c["model_type"] == "flf2v":
                kw["pos_embed_seq_len"] = 514
        return kw
    if component in ("vae2.1", "vae2.2"):
        v22 = component == "vae2.2"
        z = c.get("z_dim", 48 if v22 else 16)
        kw = dict(base_dim=c["dim"], z_dim=z, dim_mult=list(c.get("dim_mult", [1, 2, 4, 4])),
                  num_res_blocks=c.get("num_res_blocks", 2), attn_scales=list(c.get("attn_scales", [])),
                  temperal_downsample=list(c.get("temperal_downsample", [False, True, True])),
                  dropout=c.get("dropout", 0.0))
        mean, std = (VAE22_MEAN, VAE22_STD) if v22 else (VAE21_MEAN, VAE21_STD)
        if len(mean) != z:  # non-standard z_dim (toy configs only): neutral normalisation
            mean, std = [0.0] * z, [1.0] * z
        kw.update(latents_mean=list(mean), latents_std=list(std))
        if v22:
            kw.update(decoder_base_dim=c.get("dec_dim", 256), is_residual=True, in_channels=12, out_channels=12,
                      patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16)
        else:
            if c.get("dec_dim", c["dim"]) != c["dim"]:
                raise ValueError("Wan2.1 VAE has no separate decoder width (dec_dim)")
            if kw["num_res_blocks"] != 2 or len(kw["dim_mult"]) != 4:
                raise ValueError("diffusers' Wan2.1 VAE converter only knows num_res_blocks=2 and 4 stages")
        return kw
    from transformers import UMT5Config

    if c.get("shared_pos", False):
        raise NotImplementedError("shared_pos=True is T5 (one position bias) style, not UMT5; no Wan model uses it")
    if c["dim_attn"] % c["num_heads"]:
        raise ValueError(f"dim_attn {c['dim_attn']} is not divisible by num_heads {c['num_heads']}")
    return UMT5Config(vocab_size=c["vocab_size"], d_model=c["dim"], d_kv=c["dim_attn"] // c["num_heads"],
                      d_ff=c["dim_ffn"], num_layers=c["encoder_layers"], num_heads=c["num_heads"],
                      relative_attention_num_buckets=c["num_buckets"], relative_attention_max_distance=128,
                      dropout_rate=c.get("dropout", 0.1), layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu",
                      use_cache=False, tie_word_embeddings=True)  # shared == encoder.embed_tokens (one native tensor)


def build_library_module(component: str, native_cfg: dict, device="meta") -> torch.nn.Module:
    """The library module for ``native_cfg``, constructed on ``device`` (meta: no memory, no init cost)."""
    lib_cfg = library_config(component, native_cfg)
    # device=None: the caller's context decides (e.g. accelerate.init_empty_weights with real buffers)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        if component == "dit":
            from diffusers import WanTransformer3DModel
            return WanTransformer3DModel(**lib_cfg)
        if component == "t5":
            from transformers import UMT5EncoderModel
            return UMT5EncoderModel(lib_cfg)
        from diffusers import AutoencoderKLWan
        return AutoencoderKLWan(**lib_cfg)


# ---------------------------------------------------------------------------- native key universes (dit, vae2.1)
_WB = ("weight", "bias")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@functools.lru_cache(maxsize=None)
def _dit_template() -> frozenset:
    """Every native DiT key with blocks collapsed to ``blocks.0.`` (Wan2.1 i2v/flf2v extras included)."""
    glob = ["patch_embedding", "text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2",
            "time_projection.1", "head.head", "img_emb.proj.0", "img_emb.proj.1", "img_emb.proj.3", "img_emb.proj.4"]
    blk = ["norm3", "ffn.0", "ffn.2", "cross_attn.k_img", "cross_attn.v_img"]
    blk += [f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"]
    keys = [f"{m}.{x}" for m in glob for x in _WB] + ["head.modulation", "img_emb.emb_pos", "blocks.0.modulation"]
    keys += [f"blocks.0.{m}.{x}" for m in blk for x in _WB]
    keys += [f"blocks.0.{a}.norm_{n}.weight" for a in ("self_attn", "cross_attn") for n in "qk"]
    return frozenset(keys + ["blocks.0.cross_attn.norm_k_img.weight"])


@functools.lru_cache(maxsize=None)
def _vae21_universe() -> frozenset:
    """Native Wan2.1 VAE keys (num_res_blocks 2, 4 stages; time_conv allowed on every resampler)."""
    res = ["residual.0.gamma", "residual.3.gamma"] + [f"residual.{i}.{x}" for i in (2, 6) for x in _WB]
    rs = [f"{m}.{x}" for m in ("resample.1", "time_conv") for x in _WB]
    sc = [f"shortcut.{x}" for x in _WB]
    keys = [f"{m}.{x}" for m in ("conv1", "conv2", "encoder.conv1", "decoder.conv1", "encoder.head.2",
                                 "decoder.head.2") for x in _WB]
    for e in ("encoder", "decoder"):
        keys += [f"{e}.head.0.gamma", f"{e}.middle.1.norm.gamma"]
        keys += [f"{e}.middle.1.{m}.{x}" for m in ("to_qkv", "proj") for x in _WB]
        keys += [f"{e}.middle.{i}.{r}" for i in (0, 2) for r in res]
    for i in range(11):  # resblocks 0,1 | 3,4 | 6,7 | 9,10, resamplers 2,5,8; shortcut on a stage's first block
        keys += [f"encoder.downsamples.{i}.{r}" for r in (rs if i % 3 == 2 else res + (sc if i % 3 == 0 else []))]
    for i in range(15):  # resblocks 0-2 | 4-6 | 8-10 | 12-14, resamplers 3,7,11; diffusers maps a shortcut only at 4
        keys += [f"decoder.upsamples.{i}.{r}" for r in (rs if i % 4 == 3 else res + (sc if i == 4 else []))]
    return frozenset(keys)


def _via_converter(component: str, keys: list[str]) -> dict[str, str]:
    """Run diffusers' converter on ``{key: sentinel}`` and read back where each sentinel went."""
    from diffusers.loaders import single_file_utils as sfu

    fn = sfu.convert_wan_transformer_to_diffusers if component == "dit" else sfu.convert_wan_vae_to_diffusers
    tokens = {k: object() for k in keys}
    out = fn(dict(tokens))  # the DiT converter pops from its input: give it a copy
    where = {id(v): k for k, v in out.items()}
    if len(where) != len(out) or len(out) != len(tokens):
        raise RuntimeError(f"diffusers {fn.__name__} did not move every key exactly once")
    res = {k: where[id(t)] for k, t in tokens.items()}
    if component == "dit":  # the single-file converter lacks scripts/convert_wan_to_diffusers.py's emb_pos rule
        res = {k: v.replace("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed") for k, v in res.items()}
    return res


@functools.lru_cache(maxsize=None)
def _inverse_table(component: str) -> dict[str, str]:
    universe = _dit_template() if component == "dit" else _vae21_universe()
    fwd = _via_converter(component, sorted(universe))
    inv = {lib: nat for nat, lib in fwd.items()}
    if len(inv) != len(fwd):
        raise RuntimeError(f"{component}: diffusers' converter is not injective on the native key universe")
    return inv


def _unmappable(component: str, bad: list[str], side: str):
    if bad:
        raise ValueError(f"{component}: {len(bad)} unmappable {side} key(s): {sorted(bad)[:20]}")


# ---------------------------------------------------------------------------------------------- public mapping
def native_to_library_keys(component: str, native_keys: Iterable[str]) -> dict[str, list[str]]:
    """native key -> library key(s) it fills (T5 ``token_embedding.weight`` fills two). ValueError on unknown keys."""
    _check(component)
    keys = list(native_keys)
    if component in ("dit", "vae2.1"):
        if component == "dit":
            bad = [k for k in keys if _BLOCK.sub("blocks.0.", k) not in _dit_template()]
        else:
            bad = [k for k in keys if k not in _vae21_universe()]
        _unmappable(component, bad, "native")
        res = {k: [v] for k, v in _via_converter(component, keys).items()}
    else:
        res, bad = rules_to_library(VAE22_RULES if component == "vae2.2" else T5_RULES, keys)
        _unmappable(component, bad, "native")
    flat = [lk for lks in res.values() for lk in lks]
    if len(flat) != len(set(flat)):
        raise ValueError(f"{component}: several native keys map to the same library key")
    return res


def library_to_native_keys(component: str, library_keys: Iterable[str], *,
                           num_res_blocks: int | None = None) -> dict[str, str]:
    """library key -> native key (both tied T5 embedding keys -> ``token_embedding.weight``).

    ``num_res_blocks`` (vae2.2 only: the native index of a stage's resampler) is inferred from the keys when
    omitted (highest encoder resnet index + 1), defaulting to 2.
    """
    _check(component)
    keys = list(library_keys)
    if component in ("dit", "vae2.1"):
        table, res, bad = _inverse_table(component), {}, []
        for k in keys:
            m = _BLOCK.match(k) if component == "dit" else None
            nat = table.get(_BLOCK.sub("blocks.0.", k, count=1) if m else k)
            if nat is None:
                bad.append(k)
            else:
                res[k] = _BLOCK.sub(f"blocks.{m.group(1)}.", nat, count=1) if m else nat
    else:
        if component == "vae2.2" and num_res_blocks is None:
            js = [int(m.group(1)) for k in keys if (m := re.match(r"encoder\.down_blocks\.\d+\.resnets\.(\d+)\.", k))]
            num_res_blocks = max(js) + 1 if js else 2
        res, bad = rules_to_native(VAE22_RULES if component == "vae2.2" else T5_RULES, keys, num_res_blocks or 2)
    _unmappable(component, bad, "library")
    return res


def native_spec(component: str, native_cfg: dict) -> dict[str, tuple[int, ...]]:
    """Expected native key -> shape for ``native_cfg`` (library module on meta + ``library_to_native_keys``)."""
    sd = build_library_module(component, native_cfg, device="meta").state_dict()
    inv = library_to_native_keys(component, sd, num_res_blocks=native_cfg.get("num_res_blocks", 2))
    spec: dict[str, tuple[int, ...]] = {}
    for lk, nk in inv.items():
        shape = tuple(sd[lk].shape)
        if spec.setdefault(nk, shape) != shape:
            raise RuntimeError(f"{component}: tied library keys for {nk} disagree on shape")
    return spec


def convert_state_dict(component: str, native_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """native names -> library names (tensors are not copied; tied keys share one tensor)."""
    mapping = native_to_library_keys(component, native_sd)
    return {lk: native_sd[nk] for nk, lks in mapping.items() for lk in lks}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.device == b.device and a.dtype == b.dtype and a.shape == b.shape
                      and a.stride() == b.stride() and a.data_ptr() == b.data_ptr())


def to_native_state_dict(component: str, library_sd: dict[str, torch.Tensor], *,
                         num_res_blocks: int | None = None) -> dict[str, torch.Tensor]:
    """library names -> native names; one copy of tied weights (ValueError if the tied copies differ)."""
    out: dict[str, torch.Tensor] = {}
    for lk, nk in library_to_native_keys(component, library_sd, num_res_blocks=num_res_blocks).items():
        t = library_sd[lk]
        if nk not in out:
            out[nk] = t
        elif not _same(out[nk], t) and not (out[nk].shape == t.shape and torch.equal(out[nk], t)):
            raise ValueError(f"{component}: tied library weights for {nk} differ")
    return out

"""Load native (or diffusers-layout) Wan checkpoints into the library modules without two copies in host RAM.

Every module is built with parameters on `meta` (buffers real, e.g. the DiT's RoPE tables), then filled tensor by
tensor from the checkpoint: safetensors are memory-mapped and read one tensor at a time, `.pth` files are opened with
`torch.load(weights_only=True, mmap=True)`. Each tensor is cast to the run dtype on its way in (modules that diffusers
keeps in fp32 stay fp32) and handed to `load_state_dict(assign=True)`, so peak host memory is the model in its run dtype
plus one tensor.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import safe_open

from . import convert
from .registry import DIT_WEIGHTS, T5_FILE, TOKENIZER_DIR, ModelSpec

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(name: str, field_name: str = "dtype") -> torch.dtype:
    try:
        return DTYPES[str(name)]
    except KeyError:
        raise ValueError(f"{field_name}={name!r}: unknown dtype; use one of fp32, bf16, fp16") from None


def build_empty(component: str, native_cfg: dict) -> torch.nn.Module:
    """Library module with parameters on meta and buffers materialised (RoPE tables are non-persistent buffers)."""
    with init_empty_weights(include_buffers=False):
        return convert.build_library_module(component, native_cfg, device=None)


def keep_fp32_names(module: torch.nn.Module) -> tuple[str, ...]:
    return tuple(getattr(module, "_keep_in_fp32_modules", None) or ())


def target_dtype(name: str, dtype: torch.dtype, keep_fp32: tuple[str, ...]) -> torch.dtype:
    """diffusers keeps some modules in fp32 (time embedder, modulation tables, norms); we honour the same list."""
    if dtype != torch.float32 and any(part in keep_fp32 for part in name.split(".")):
        return torch.float32
    return dtype


def assign_state_dict(module: torch.nn.Module, library_sd: dict[str, torch.Tensor], what: str) -> None:
    missing, unexpected = module.load_state_dict(library_sd, strict=False, assign=True)
    # tied weights (T5 shared/embed_tokens) arrive once per name; anything else missing is a bug or a bad file
    if missing or unexpected:
        raise ValueError(f"{what}: checkpoint does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    still_meta = [n for n, p in module.named_parameters() if p.is_meta]
    if still_meta:
        raise ValueError(f"{what}: parameters left unloaded: {still_meta[:5]}")


def dit_weight_files(dit_dir: Path) -> list[Path]:
    index = dit_dir / f"{DIT_WEIGHTS}.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [dit_dir / f for f in sorted(set(weight_map.values()))]
    return [dit_dir / f"{DIT_WEIGHTS}.safetensors"]


def safetensors_reader(files: list[Path], device: str = "cpu"):
    """(names, get) over memory-mapped safetensors files; `get(name)` reads one tensor."""
    from contextlib import ExitStack
    stack = ExitStack()
    where = {}
    for f in files:
        fh = stack.enter_context(safe_open(str(f), framework="pt", device=device))
        for name in fh.keys():
            where[name] = fh
    return list(where), (lambda name: where[name].get_tensor(name)), stack


@dataclass
class LoadStats:
    seconds: dict[str, float] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    checkpoint_dtype: dict[str, str] = field(default_factory=dict)


def _fill(component: str, module, native_keys, get, dtype, device, what, stats: LoadStats):
    keymap = convert.native_to_library_keys(component, native_keys)
    keep = keep_fp32_names(module)
    sd, nbytes, ck_dtype = {}, 0, None
    for native_name in native_keys:
        tensor = get(native_name)
        ck_dtype = ck_dtype or str(tensor.dtype).replace("torch.", "")
        cast = None
        for lib_name in keymap[native_name]:
            want = target_dtype(lib_name, dtype, keep)
            # tied names (T5 shared / embed_tokens) share one cast tensor
            cast = cast if cast is not None and cast.dtype == want else tensor.to(device=device, dtype=want)
            sd[lib_name] = cast
        nbytes += tensor.numel() * tensor.element_size()
        del tensor, cast
    assign_state_dict(module, sd, what)
    stats.bytes[what] = nbytes
    stats.checkpoint_dtype[what] = ck_dtype or "?"
    return module


def load_dit(spec: ModelSpec, dit_dir: Path, dtype: torch.dtype, device: str, stats: LoadStats, what="dit"):
    t0 = time.perf_counter()
    cfg = dict(spec.dit)
    cfg_file = dit_dir / "config.json"
    if cfg_file.exists():
        cfg.update({k: v for k, v in json.loads(cfg_file.read_text()).items() if not k.startswith("_")})
    module = build_empty("dit", cfg)
    names, get, stack = safetensors_reader(dit_weight_files(dit_dir))
    with stack:
        _fill("dit", module, names, get, dtype, device, what, stats)
    stats.seconds[what] = time.perf_counter() - t0
    return module.eval().requires_grad_(False)


def load_pth(component: str, native_cfg: dict, path: Path, dtype, device, stats: LoadStats, what: str):
    t0 = time.perf_counter()
    module = build_empty(component, native_cfg)
    native_sd = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    _fill(component, module, list(native_sd), native_sd.__getitem__, dtype, device, what, stats)
    del native_sd
    stats.seconds[what] = time.perf_counter() - t0
    return module.eval().requires_grad_(False)


def load_tokenizer(ckpt_dir: Path, stats: LoadStats):
    from transformers import AutoTokenizer
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(ckpt_dir / TOKENIZER_DIR))
    stats.seconds["tokenizer"] = time.perf_counter() - t0
    return tok


@dataclass
class LoadedModel:
    spec: ModelSpec
    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    dits: dict[str, torch.nn.Module]     # {"high": ..., "low": ...} for MoE, {"single": ...} otherwise
    stats: LoadStats


def load_native(spec: ModelSpec, ckpt_dir: Path, *, dtype: torch.dtype, device: str,
                t5_dtype: torch.dtype, t5_device: str, vae_dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Everything a run needs, from a validated native checkpoint directory."""
    ckpt_dir = Path(ckpt_dir)
    stats = LoadStats()
    tok = load_tokenizer(ckpt_dir, stats)
    t5 = load_pth("t5", spec.t5, ckpt_dir / T5_FILE, t5_dtype, t5_device, stats, "t5")
    vae = load_pth("vae" + spec.vae_version, spec.vae, ckpt_dir / spec.vae_file, vae_dtype, device, stats, "vae")
    if spec.is_moe:
        dits = {"high": load_dit(spec, ckpt_dir / spec.experts[0], dtype, device, stats, "dit_high"),
                "low": load_dit(spec, ckpt_dir / spec.experts[1], dtype, device, stats, "dit_low")}
    else:
        dits = {"single": load_dit(spec, ckpt_dir, dtype, device, stats, "dit")}
    return LoadedModel(spec, tok, t5, vae, dits, stats)


def load_diffusers_layout(spec: ModelSpec, ckpt_dir: Path, *, dtype, device, t5_dtype, t5_device,
                          vae_dtype=torch.float32) -> LoadedModel:
    """A `*-Diffusers` repository: each component through the library's own from_pretrained."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel
    ckpt_dir = Path(ckpt_dir)
    stats = LoadStats()
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(ckpt_dir / "tokenizer"))
    stats.seconds["tokenizer"] = time.perf_counter() - t0

    def timed(what, fn):
        t = time.perf_counter()
        out = fn()
        stats.seconds[what] = time.perf_counter() - t
        return out.eval().requires_grad_(False)

    t5 = timed("t5", lambda: UMT5EncoderModel.from_pretrained(str(ckpt_dir / "text_encoder"), dtype=t5_dtype)
               .to(t5_device))
    vae = timed("vae", lambda: AutoencoderKLWan.from_pretrained(str(ckpt_dir / "vae"), torch_dtype=vae_dtype)
                .to(device))
    if spec.is_moe:
        dits = {"high": timed("dit_high", lambda: WanTransformer3DModel.from_pretrained(
                    str(ckpt_dir / "transformer"), torch_dtype=dtype).to(device)),
                "low": timed("dit_low", lambda: WanTransformer3DModel.from_pretrained(
                    str(ckpt_dir / "transformer_2"), torch_dtype=dtype).to(device))}
    else:
        dits = {"single": timed("dit", lambda: WanTransformer3DModel.from_pretrained(
            str(ckpt_dir / "transformer"), torch_dtype=dtype).to(device))}
    return LoadedModel(spec, tok, t5, vae, dits, stats)

"""Load native (or diffusers-format) Wan checkpoints into the library modules without two copies in host RAM.

One sequence for every run (`load_models`): tokenizer, T5, VAE, then the DiT(s). Every module is built with parameters
on `meta` (buffers real, e.g. the DiT's RoPE tables), then filled tensor by tensor from the checkpoint: safetensors
are memory-mapped and read one tensor at a time, `.pth` files are opened with `torch.load(weights_only=True,
mmap=True)`. Each tensor is cast to the run dtype on its way in (modules that diffusers keeps in fp32 stay fp32) and
handed to `load_state_dict(assign=True)`, so peak host memory is the model in its run dtype plus one tensor.

Sharded DiT loading (`shard_dit` given, native format): the DiT is built on meta, the caller's `shard_dit(module)`
shards it (FSDP2 from wan_dist.distributed: parameters become dim-0 DTensor shards, still meta), `to_empty` allocates
only this rank's shards and each shard's rows are read from the safetensors files with pread (models/slices.py):
host RSS per rank ~ model bytes / shards + one slice.
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
from .device import Placement
from .dtypes import torch_dtype
from .registry import DIT_WEIGHTS, T5_FILE, TOKENIZER_DIR, ModelSpec
from .slices import SliceReader, local_rows

log = logging.getLogger(__name__)

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


def _dit_config(spec: ModelSpec, dit_dir: Path) -> dict:
    native_cfg = dict(spec.dit)
    cfg_file = dit_dir / "config.json"
    if cfg_file.exists():
        native_cfg.update({k: v for k, v in json.loads(cfg_file.read_text()).items() if not k.startswith("_")})
    return native_cfg


def load_dit(spec: ModelSpec, dit_dir: Path, dtype: torch.dtype, device, stats: LoadStats, what="dit",
             shard_dit=None):
    """One DiT; `shard_dit(module)` (optional) shards the meta module before its shards are filled from disk."""
    t0 = time.perf_counter()
    module = build_empty("dit", _dit_config(spec, dit_dir))
    if shard_dit is None:
        names, get, stack = safetensors_reader(dit_weight_files(dit_dir))
        with stack:
            _fill("dit", module, names, get, dtype, str(device), what, stats)
    else:
        _fill_sharded(module, dit_dir, dtype, torch.device(device), shard_dit, what, stats)
    stats.seconds[what] = time.perf_counter() - t0
    return module.eval().requires_grad_(False)


def _retype_meta(module, dtype) -> None:
    """Meta parameters take their run dtype (diffusers' fp32-kept modules stay fp32), like the assign path."""
    keep = keep_fp32_names(module)
    for mod_name, mod in module.named_modules():
        for pname, p in list(mod._parameters.items()):
            if p is None:
                continue
            want = target_dtype(f"{mod_name}.{pname}" if mod_name else pname, dtype, keep)
            if p.dtype != want:
                mod._parameters[pname] = torch.nn.Parameter(torch.empty_like(p, dtype=want), requires_grad=False)


def _fill_sharded(module, dit_dir: Path, dtype, device: torch.device, shard_dit, what: str, stats: LoadStats):
    module.requires_grad_(False)
    _retype_meta(module, dtype)
    shard_dit(module)
    buffers = {n: b.clone() for n, b in module.named_buffers()}
    module.to_empty(device=device)                               # allocates only the local shards
    for n, b in module.named_buffers():
        b.copy_(buffers[n])
    reader = SliceReader(dit_weight_files(dit_dir))
    keymap = convert.native_to_library_keys("dit", reader.names())
    params = dict(module.named_parameters())
    nbytes, ck = 0, None
    try:
        for native, libs in keymap.items():
            code = reader.dtype_code(native)
            ck = ck or code
            for lib in libs:
                local, a, b = local_rows(params.pop(lib))
                if local.numel() == 0:
                    continue
                if local.device.type == "cpu" and local.is_contiguous() and local.dtype == torch_dtype(code):
                    nbytes += reader.read_into(native, a, b, local)     # same dtype on CPU: no copy at all
                    continue
                src = reader.rows(native, a, b)                          # cast / device: one slice in flight
                local.copy_(src.view(local.shape))
                nbytes += src.numel() * src.element_size()
                del src
    finally:
        reader.close()
    if params:
        raise ValueError(f"{what}: parameters left unloaded: {sorted(params)[:5]}")
    stats.bytes[what] = nbytes
    stats.checkpoint_dtype[what] = str(torch_dtype(ck)).replace("torch.", "") if ck else "?"


def load_pth(component: str, native_cfg: dict, path: Path, dtype, device, stats: LoadStats, what: str):
    t0 = time.perf_counter()
    module = build_empty(component, native_cfg)
    native_sd = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    _fill(component, module, list(native_sd), native_sd.__getitem__, dtype, str(device), what, stats)
    del native_sd
    stats.seconds[what] = time.perf_counter() - t0
    return module.eval().requires_grad_(False)


def load_tokenizer(tok_dir: Path, stats: LoadStats):
    from transformers import AutoTokenizer
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
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
    dits_sharded: bool = False           # True when shard_dit was applied while loading


def load_models(spec: ModelSpec, ckpt_dir, place: Placement, *, ckpt_format: str = "native",
                shard_dit=None) -> LoadedModel:
    """Everything a run needs from a validated checkpoint directory (models/checkpoint.py checks it first).

    ckpt_format: "native" (the Wan-AI repos) or "diffusers" (`*-Diffusers`, each component through the library's own
    from_pretrained; `shard_dit` is then not applied here: the caller shards the loaded DiTs)."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_format == "diffusers":
        return _load_diffusers_format(spec, ckpt_dir, place)
    stats = LoadStats()
    tok = load_tokenizer(ckpt_dir / TOKENIZER_DIR, stats)
    t5 = load_pth("t5", spec.t5, ckpt_dir / T5_FILE, place.t5_dtype, place.t5_load_device, stats, "t5")
    vae = load_pth("vae" + spec.vae_version, spec.vae, ckpt_dir / spec.vae_file, place.vae_dtype, place.device,
                   stats, "vae")
    dit_device = place.device if shard_dit is not None else place.dit_load_device
    if spec.is_moe:
        dits = {name: load_dit(spec, ckpt_dir / sub, place.dtype, dit_device, stats, f"dit_{name}", shard_dit)
                for name, sub in zip(("high", "low"), spec.experts)}
    else:
        dits = {"single": load_dit(spec, ckpt_dir, place.dtype, dit_device, stats, "dit", shard_dit)}
    return LoadedModel(spec, tok, t5, vae, dits, stats, dits_sharded=shard_dit is not None)


def _load_diffusers_format(spec: ModelSpec, ckpt_dir: Path, place: Placement) -> LoadedModel:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5EncoderModel
    stats = LoadStats()
    tok = load_tokenizer(ckpt_dir / "tokenizer", stats)

    def timed(what, fn):
        t = time.perf_counter()
        out = fn()
        stats.seconds[what] = time.perf_counter() - t
        return out.eval().requires_grad_(False)

    t5 = timed("t5", lambda: UMT5EncoderModel.from_pretrained(str(ckpt_dir / "text_encoder"), dtype=place.t5_dtype)
               .to(place.t5_load_device))
    vae = timed("vae", lambda: AutoencoderKLWan.from_pretrained(str(ckpt_dir / "vae"), torch_dtype=place.vae_dtype)
                .to(place.device))
    subdirs = {"high": "transformer", "low": "transformer_2"} if spec.is_moe else {"single": "transformer"}
    dits = {name: timed(f"dit_{name}" if spec.is_moe else "dit", lambda sub=sub: WanTransformer3DModel.from_pretrained(
                str(ckpt_dir / sub), torch_dtype=place.dtype).to(place.dit_load_device))
            for name, sub in subdirs.items()}
    return LoadedModel(spec, tok, t5, vae, dits, stats)

"""FSDP2 inside a replica and sharded loading straight into the shards.

Plan (DESIGN §2): `fully_shard` each transformer block, then the root (for T5: each encoder block, then the root),
on the 1-D "replica" mesh. Inference only: parameters keep requires_grad=False, so FSDP2 accepts the mixed dtypes of
diffusers' fp32-kept modules.

Sharded loading: build the DiT on `meta`, shard it (still meta), `to_empty` allocates only this rank's shards, then
each parameter's local rows are read from the safetensors file with `os.pread` at the right byte offset (FSDP2
shards dim 0, so a shard is a contiguous byte range). No mmap stays mapped and no full tensor is ever
materialised: host RSS per rank ~ model bytes / replica size + one shard.
Shapes: parameter [d0, ...] -> local shard [ceil(d0 / n) rows or fewer, ...] at global row offset r * ceil(d0 / n).
"""
from __future__ import annotations

import json
import logging
import os
import struct
import time
from pathlib import Path

import numpy as np
import torch
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from ..models import convert
from ..models.loading import LoadStats, build_empty, dit_weight_files, keep_fp32_names, target_dtype

log = logging.getLogger(__name__)

ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
             "I64": torch.int64, "I32": torch.int32}


def shard_dit(model, mesh) -> None:
    """Each block, then the root (patch/text/time embeddings, head)."""
    for block in model.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)


def shard_t5(model, mesh) -> None:
    for block in model.encoder.block:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)


class SliceReader:
    """Rows [a, b) of a tensor in a safetensors file via pread (no mmap): header once per file, one read per slice."""

    def __init__(self, files: list[Path]):
        self.where = {}
        for f in files:
            with open(f, "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                header = json.loads(fh.read(n))
            header.pop("__metadata__", None)
            for name, meta in header.items():
                self.where[name] = (str(f), 8 + n, meta)
        self.fds = {f: os.open(f, os.O_RDONLY) for f in {w[0] for w in self.where.values()}}

    def names(self) -> list[str]:
        return list(self.where)

    def _span(self, name: str, a: int, b: int):
        f, base, meta = self.where[name]
        dtype, shape = ST_DTYPES[meta["dtype"]], meta["shape"]
        item = torch.empty((), dtype=dtype).element_size()
        row = int(np.prod(shape[1:], dtype=np.int64)) * item if shape else item
        if not shape:
            a, b = 0, 1
        return self.fds[f], dtype, shape, (b - a) * row, base + meta["data_offsets"][0] + a * row

    def rows(self, name: str, a: int, b: int) -> torch.Tensor:
        fd, dtype, shape, nbytes, off = self._span(name, a, b)
        buf = bytearray(os.pread(fd, nbytes, off))
        t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
        return t.view([b - a, *shape[1:]]) if shape else t.view(())

    def read_into(self, name: str, a: int, b: int, dst: torch.Tensor) -> int:
        """Rows [a, b) straight into dst (same dtype, contiguous, CPU): no temporary buffer at all."""
        fd, dtype, _, nbytes, off = self._span(name, a, b)
        assert dst.dtype == dtype and dst.is_contiguous() and dst.numel() * dst.element_size() == nbytes
        view = memoryview(dst.view(-1).view(torch.uint8).numpy())
        done = 0
        while done < nbytes:
            done += os.preadv(fd, [view[done:]], off + done)
        return nbytes

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


def _retype_meta(module, dtype) -> None:
    """Meta parameters take their run dtype (diffusers' fp32-kept modules stay fp32), like the single-device load."""
    keep = keep_fp32_names(module)
    for mod_name, mod in module.named_modules():
        for pname, p in list(mod._parameters.items()):
            if p is None:
                continue
            full = f"{mod_name}.{pname}" if mod_name else pname
            want = target_dtype(full, dtype, keep)
            if p.dtype != want:
                mod._parameters[pname] = torch.nn.Parameter(torch.empty_like(p, dtype=want), requires_grad=False)


def load_dit_sharded(spec, dit_dir: Path, dtype, device, mesh, stats: LoadStats, what: str = "dit"):
    t0 = time.perf_counter()
    cfg = dict(spec.dit)
    cfg_file = dit_dir / "config.json"
    if cfg_file.exists():
        cfg.update({k: v for k, v in json.loads(cfg_file.read_text()).items() if not k.startswith("_")})
    module = build_empty("dit", cfg).requires_grad_(False)       # params on meta, RoPE buffers real
    _retype_meta(module, dtype)
    shard_dit(module, mesh)
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
            for lib in libs:
                p = params.pop(lib)
                if isinstance(p, DTensor):
                    local = p.to_local()
                    shape, off = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
                    a = off[0] if len(off) else 0
                    b = a + (shape[0] if len(shape) else 1)
                else:
                    local, a, b = p.data, 0, (p.shape[0] if p.dim() else 1)
                if local.numel() == 0:
                    continue
                ck = ck or reader.where[native][2]["dtype"]
                if local.device.type == "cpu" and local.is_contiguous() and \
                        local.dtype == ST_DTYPES[reader.where[native][2]["dtype"]]:
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
    stats.checkpoint_dtype[what] = ck or "?"
    stats.seconds[what] = time.perf_counter() - t0
    return module.eval()

"""Rows of safetensors tensors read straight from disk with pread: what sharded loading needs.

FSDP2 shards dim 0, so one rank's shard of a parameter is a contiguous byte range of the file. No mmap stays mapped
and no full tensor is ever materialised. Headers come from checkpoint_files.read_safetensors_table (the one header
reader); dtype codes from dtypes.py (the one table).
Shapes: tensor [d0, ...] -> rows [a, b) = [b - a, ...].
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from .checkpoint_files import read_safetensors_table
from .dtypes import BYTES, torch_dtype


class SliceReader:
    def __init__(self, files: list[Path]):
        self.where: dict[str, tuple[str, int, dict]] = {}      # name -> (file, data start, header entry)
        for f in files:
            table, start = read_safetensors_table(Path(f))
            for name, meta in table.items():
                self.where[name] = (str(f), start, meta)
        self.fds = {f: os.open(f, os.O_RDONLY) for f in {w[0] for w in self.where.values()}}

    def names(self) -> list[str]:
        return list(self.where)

    def dtype_code(self, name: str) -> str:
        return self.where[name][2]["dtype"]

    def _span(self, name: str, a: int, b: int):
        f, start, meta = self.where[name]
        shape = meta["shape"]
        row = math.prod(shape[1:]) * BYTES[meta["dtype"]] if shape else BYTES[meta["dtype"]]
        if not shape:
            a, b = 0, 1
        return self.fds[f], torch_dtype(meta["dtype"]), shape, (b - a) * row, start + meta["data_offsets"][0] + a * row

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


def local_rows(p: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(local tensor, first row, end row) of a parameter: the whole tensor, or this rank's dim-0 shard of a DTensor
    (whatever applied the sharding; models/ only reads the placement it was given)."""
    from torch.distributed.tensor import DTensor
    if isinstance(p, DTensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
        shape, off = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
        a = off[0] if len(off) else 0
        return p.to_local(), a, a + (shape[0] if len(shape) else 1)
    return p.data, 0, (p.shape[0] if p.dim() else 1)

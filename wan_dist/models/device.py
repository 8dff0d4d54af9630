"""Where the models live and run: the one place that resolves `device=auto` and `dtype=auto`.

auto = CUDA + bf16 when a GPU is present, CPU + fp32 otherwise. `offload_model` keeps the DiT(s) and T5 on the CPU
between uses (the generator moves them in); `t5_cpu` runs T5 on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .dtypes import parse_dtype


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda': no CUDA device is available on this machine")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name != "cpu":
        raise ValueError(f"device={name!r}: must be one of auto, cpu, cuda")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device, field: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return parse_dtype(name, field)


def dtype_names(dtype: str, t5_dtype: str, vae_dtype: str, device_type: str) -> dict:
    """The dtype names `Placement.describe()` gives for a device of `device_type` ("cuda" or "cpu"), without needing
    that device here (the Ray driver resolves dtype=auto for gangs on other nodes)."""
    dev = torch.device(device_type)
    names = {"dtype": resolve_dtype(dtype, dev, "dtype"), "t5_dtype": resolve_dtype(t5_dtype, dev, "t5_dtype"),
             "vae_dtype": parse_dtype(vae_dtype, "vae_dtype")}
    return {k: str(v).replace("torch.", "") for k, v in names.items()}


@dataclass(frozen=True)
class Placement:
    device: torch.device          # where the DiT runs
    dtype: torch.dtype            # DiT dtype
    t5_dtype: torch.dtype
    vae_dtype: torch.dtype
    dit_load_device: torch.device  # cpu under offload_model (moved in per expert)
    t5_load_device: torch.device   # cpu under t5_cpu or offload_model
    t5_device: torch.device        # where T5 runs (cpu under t5_cpu)
    offload_model: bool

    def describe(self) -> dict:
        return {"device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "t5_dtype": str(self.t5_dtype).replace("torch.", ""),
                "vae_dtype": str(self.vae_dtype).replace("torch.", ""), "t5_device": str(self.t5_device),
                "offload_model": self.offload_model}


def placement(*, device: str, dtype: str, t5_dtype: str, vae_dtype: str, t5_cpu: bool, offload_model: bool,
              local_rank: int = 0) -> Placement:
    dev = resolve_device(device, local_rank)
    cpu = torch.device("cpu")
    return Placement(device=dev, dtype=resolve_dtype(dtype, dev, "dtype"),
                     t5_dtype=resolve_dtype(t5_dtype, dev, "t5_dtype"), vae_dtype=parse_dtype(vae_dtype, "vae_dtype"),
                     dit_load_device=cpu if offload_model else dev,
                     t5_load_device=cpu if (t5_cpu or offload_model) else dev,
                     t5_device=cpu if t5_cpu else dev, offload_model=offload_model)

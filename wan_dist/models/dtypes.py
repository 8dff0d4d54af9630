"""Dtypes, one table: the config names (fp32 / bf16 / fp16), safetensors codes (F32 ...), torch dtypes, byte widths.

torch is imported inside the functions: checkpoint validation of safetensors headers needs only the names.
"""
from __future__ import annotations

# config name -> safetensors code
CONFIG_NAMES = {"fp32": "F32", "float32": "F32", "bf16": "BF16", "bfloat16": "BF16", "fp16": "F16", "float16": "F16"}
# safetensors code -> bytes per element
BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
         "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
FLOAT_CODES = ("F32", "BF16", "F16")          # what a Wan checkpoint's weights may be stored as
_TORCH_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def torch_dtype(code: str):
    """safetensors code (F32, BF16, ...) -> torch dtype."""
    import torch
    try:
        return getattr(torch, _TORCH_NAMES[code])
    except KeyError:
        raise ValueError(f"dtype code {code!r}: not a dtype wan-dist can load ({', '.join(_TORCH_NAMES)})") from None


def code_of(dtype) -> str:
    """torch dtype -> safetensors code (torch.bfloat16 -> BF16); unknown dtypes keep their torch name."""
    name = str(dtype).replace("torch.", "")
    return next((c for c, n in _TORCH_NAMES.items() if n == name), name)


def parse_dtype(name: str, field: str = "dtype"):
    """A config dtype name (fp32, bf16, fp16 or their long forms) -> torch dtype."""
    code = CONFIG_NAMES.get(str(name))
    if code is None:
        raise ValueError(f"{field}={name!r}: unknown dtype; use one of fp32, bf16, fp16")
    return torch_dtype(code)

"""Size and frame-count rules (wan_facts.md §1.2, §2.8, §2.9, §9)."""
from __future__ import annotations

import math
import re

from ..models.registry import ModelSpec

_SIZE_RE = re.compile(r"^\s*(\d+)\s*[*xX]\s*(\d+)\s*$")


def parse_size(value: str, field: str = "size") -> tuple[int, int]:
    """'1280*720' (official W*H) or '1280x720' -> (width, height)."""
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"{field}={value!r}: must be W*H (e.g. 1280*720) or WxH")
    w, h = int(m.group(1)), int(m.group(2))
    if w <= 0 or h <= 0:
        raise ValueError(f"{field}={value!r}: width and height must be positive")
    return w, h


def check_size(spec: ModelSpec, size: tuple[int, int], field: str = "size", sizes=()) -> None:
    """`sizes`: the model's official W*H list (conf/model/<name>.yaml `sizes`); empty = any size the VAE stride and
    patch allow."""
    w, h = size
    if sizes:
        if f"{w}*{h}" not in sizes:
            raise ValueError(f"{field}={w}*{h}: not a size {spec.name} supports; valid sizes: {', '.join(sizes)}")
        return
    m = spec.size_multiple
    if w % m or h % m:
        near = f"{max(m, int(w / m + 0.5) * m)}*{max(m, int(h / m + 0.5) * m)}"
        raise ValueError(f"{field}={w}*{h}: width and height of {spec.name} must be multiples of {m} "
                         f"(VAE stride x patch); nearest valid size: {near}")


def correct_frame_num(n: int) -> tuple[int, str | None]:
    """1 -> 5; otherwise the nearest 4n+1 (ties go up). Returns (frames, warning or None)."""
    if n < 1:
        raise ValueError(f"frame_num={n}: must be >= 1")
    if n == 1:
        fixed = 5
    elif (n - 1) % 4 == 0:
        return n, None
    else:
        lower = n - (n - 1) % 4
        upper = lower + 4
        fixed = upper if (upper - n) <= (n - lower) else lower
    return fixed, f"frame_num {n} is not 4n+1; using {fixed}"


def latent_frames(frame_num: int, spec: ModelSpec) -> int:
    return (frame_num - 1) // spec.vae_stride[0] + 1


def best_output_size(w: int, h: int, dw: int, dh: int, expected_area: int) -> tuple[int, int]:
    """TI2V image mode (native textimage2video.best_output_size): the output box of area <= expected_area whose
    sides are multiples of (dw, dh) and whose aspect is closest to the image's."""
    ratio = w / h
    ow = (expected_area * ratio) ** 0.5
    oh = expected_area / ow
    ow1 = int(ow // dw * dw)                      # width first
    oh1 = int(expected_area / ow1 // dh * dh)
    ratio1 = ow1 / oh1
    oh2 = int(oh // dh * dh)                      # height first
    ow2 = int(expected_area / oh2 // dw * dw)
    ratio2 = ow2 / oh2
    if max(ratio / ratio1, ratio1 / ratio) < max(ratio / ratio2, ratio2 / ratio):
        return ow1, oh1
    return ow2, oh2


def i2v_latent_hw(img_h: int, img_w: int, max_area: int, spec: ModelSpec) -> tuple[int, int]:
    """I2V-A14B (native image2video): latent (h, w) of the output keeping the image aspect within max_area."""
    aspect = img_h / img_w
    sh, sw = spec.vae_stride[1], spec.vae_stride[2]
    ph, pw = spec.patch_size[1], spec.patch_size[2]
    lat_h = round(math.sqrt(max_area * aspect) // sh // ph * ph)
    lat_w = round(math.sqrt(max_area / aspect) // sw // pw * pw)
    return lat_h, lat_w


def token_count(spec: ModelSpec, frame_num: int, width: int, height: int) -> int:
    t = latent_frames(frame_num, spec)
    h = height // spec.vae_stride[1] // spec.patch_size[1]
    w = width // spec.vae_stride[2] // spec.patch_size[2]
    return t * h * w

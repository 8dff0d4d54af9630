"""Size and frame-count rules (wan_facts.md §1.2, §2.8, §2.9, §9)."""
from __future__ import annotations

import math
import re

from ..models.registry import ROPE_MAX_SEQ_LEN, ModelSpec

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
    patch allow, up to what the DiT's rotary position table covers."""
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
    check_grid(spec, w, h, f"{field}={w}*{h}")


def check_grid(spec: ModelSpec, w: int, h: int, what: str) -> None:
    """The DiT's rotary position table (diffusers WanRotaryPosEmbed, rope_max_seq_len) covers this many patches per
    axis; a larger output fails inside the model, after loading."""
    m = spec.size_multiple
    if w // m > ROPE_MAX_SEQ_LEN or h // m > ROPE_MAX_SEQ_LEN:
        raise ValueError(f"{what}: at most {ROPE_MAX_SEQ_LEN * m} pixels per side for {spec.name} (the DiT's "
                         f"rotary position table covers {ROPE_MAX_SEQ_LEN} patches of {m} pixels per axis)")


def max_frame_num(spec: ModelSpec) -> int:
    """The most frames any Wan DiT can take: its rotary table covers ROPE_MAX_SEQ_LEN latent frames."""
    return (ROPE_MAX_SEQ_LEN - 1) * spec.vae_stride[0] + 1


def check_frame_num(spec: ModelSpec, n: int, field: str = "frame_num") -> tuple[int, str | None]:
    """The frame count a request asks for -> (frames the model makes, warning or None); ValueError when no Wan
    model can make a video of that length."""
    if n < 1:
        raise ValueError(f"{field}={n}: must be >= 1")
    top = max_frame_num(spec)
    if n > top:
        raise ValueError(f"{field}={n}: at most {top} frames ({spec.name}'s rotary position table covers "
                         f"{ROPE_MAX_SEQ_LEN} latent frames of {spec.vae_stride[0]} frames each, plus the first)")
    return correct_frame_num(n)       # top is 4n+1 itself, so the nearest 4n+1 never exceeds it


def correct_frame_num(n: int) -> tuple[int, str | None]:
    """The VAE makes 4n+1 frames (n >= 1: one frame is an image, not a video). 1 -> 5; otherwise the nearest 4n+1
    with n >= 1 (ties go up). Returns (frames, warning or None)."""
    if n < 1:
        raise ValueError(f"frame_num={n}: must be >= 1")
    if n < 5:
        why = "one frame is an image, not a video" if n == 1 else f"{n} is not of the form 4n+1"
        return 5, f"frame_num {n}: {why}; using 5, the shortest video (4n+1 frames, n >= 1)"
    if (n - 1) % 4 == 0:
        return n, None
    lower = n - (n - 1) % 4
    upper = lower + 4
    fixed = upper if (upper - n) <= (n - lower) else lower
    return fixed, f"frame_num {n} is not of the form 4n+1; using {fixed}, the nearest"


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


def image_output_size(spec: ModelSpec, size: tuple[int, int], image_wh: tuple[int, int], what: str) -> tuple[int, int]:
    """The (W, H) a conditioned video gets: the image's aspect ratio within the area of `size` (ti2v image mode:
    native best_output_size; i2v: native latent rounding). ValueError when that leaves a zero side (the native code
    divides by it) or more patches per axis than the DiT covers. `what` names the image in messages."""
    iw, ih = image_wh
    area = size[0] * size[1]
    sh, sw = spec.vae_stride[1], spec.vae_stride[2]
    if spec.family == "ti2v":
        dw, dh = spec.patch_size[2] * sw, spec.patch_size[1] * sh
        ow = (area * iw / ih) ** 0.5
        oh = area / ow
        ow1, oh2 = int(ow // dw * dw), int(oh // dh * dh)
        zero = ow1 == 0 or oh2 == 0 or int(area / ow1 // dh * dh) == 0 or int(area / oh2 // dw * dw) == 0
        out = None if zero else best_output_size(iw, ih, dw, dh, area)
        step = f"{dw}x{dh}"
    elif spec.family == "i2v":
        lat_h, lat_w = i2v_latent_hw(ih, iw, area, spec)
        out = None if lat_h == 0 or lat_w == 0 else (lat_w * sw, lat_h * sh)
        step = f"{sw * spec.patch_size[2]}x{sh * spec.patch_size[1]}"
    else:
        return size
    if out is None or out[0] <= 0 or out[1] <= 0:
        raise ValueError(f"{what} ({iw}x{ih} px) at size={size[0]}*{size[1]}: keeping the image's aspect ratio "
                         f"({iw / ih:.3g}:1) within {area} pixels leaves a side of zero (sides are multiples of "
                         f"{step} px); use a larger size or an image closer to the size's aspect ratio")
    check_grid(spec, out[0], out[1], f"{what} ({iw}x{ih} px) at size={size[0]}*{size[1]} gives {out[0]}*{out[1]}, "
               f"which is too large")
    return out

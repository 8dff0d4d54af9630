"""Conditioning images, checked before any model work: a regular readable file that decodes, its size (the output
size of the video depends on it) and a digest of its bytes (part of the item's settings hash: the same file moved
elsewhere is the same video, an edited file is a new one).

Each distinct file is opened once per run (a manifest may name one image in thousands of rows).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..files import not_a_regular_file


@dataclass(frozen=True)
class ImageFacts:
    width: int
    height: int
    digest: str          # "sha256:<hex>" of the file's bytes


_CACHE: dict[tuple, ImageFacts] = {}


def inspect_image(path: Path, shown: str) -> ImageFacts:
    """ValueError `image='<shown>': <what is wrong>` unless `path` is a readable image file."""
    from PIL import Image
    why = not_a_regular_file(path)
    if why:
        raise ValueError(f"image={shown!r}: {why} ({path})")
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _CACHE:
        return _CACHE[key]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"image={shown!r}: cannot be read ({e.strerror}) ({path})") from None
    try:
        import io
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.convert("RGB").load()
            w, h = im.size
    except Exception as e:  # PIL raises many types for bad files
        raise ValueError(f"image={shown!r}: cannot decode the image ({type(e).__name__}: {e})") from None
    if w < 1 or h < 1:
        raise ValueError(f"image={shown!r}: has no pixels ({w}x{h})")
    facts = ImageFacts(w, h, "sha256:" + hashlib.sha256(data).hexdigest())
    if len(_CACHE) > 4096:
        _CACHE.clear()
    _CACHE[key] = facts
    return facts

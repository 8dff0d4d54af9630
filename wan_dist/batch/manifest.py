"""Manifests (CSV or JSONL) -> validated items. Every row is checked before any model loads; all problems are
reported together as `file:line column=value: rule`. The file format is read by manifest_read.py (strictly: no
row lost, split or invented).

Columns: id, prompt, negative_prompt, seed, image, size, frame_num, steps, shift, guide_scale, guide_scale_high,
cfg_truncate_steps, cfg_truncate_high_noise_steps, cfg_truncate_keep, solver, cache, cache_threshold. Only `prompt`
is required; a given value overrides the config for that row, under the same rule as the config key. Image paths are
relative to the manifest file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .images import ImageFacts, inspect_image
from .manifest_read import ManifestError, read_records

if TYPE_CHECKING:   # building requests needs the pipeline (torch); reading ids does not (wan-dist status)
    from ..config import RunConfig
    from ..models.registry import ModelSpec
    from ..pipeline.request import GenerationRequest

__all__ = ["COLUMNS", "Item", "ManifestError", "check_id", "derive_id", "load_items", "read_ids",
           "single_prompt_items"]

COLUMNS = {"id": str, "prompt": str, "negative_prompt": str, "seed": int, "image": str, "size": str,
           "frame_num": int, "steps": int, "shift": float, "guide_scale": float, "guide_scale_high": float,
           "cfg_truncate_steps": int, "cfg_truncate_high_noise_steps": int, "cfg_truncate_keep": str,
           "solver": str, "cache": str, "cache_threshold": float}
ID_CHARS = "A-Za-z0-9._-"
ID_RE = re.compile(rf"[{ID_CHARS}]{{1,128}}")     # used with fullmatch: `$` would accept a final newline


@dataclass(frozen=True)
class Item:
    index: int              # 0-based row index in the manifest (decides the data-parallel share)
    line: int               # 1-based line in the file, for messages
    request: GenerationRequest
    image_digest: str | None = None   # "sha256:..." of the conditioning image's bytes
    settings: str | None = None       # the settings hash (batch/settings.py), set before the run starts


def derive_id(index: int, prompt: str, row: dict | None = None) -> str:
    """Row without an id: a hash of what the row asks for (prompt and every other given column), so the same row
    gets the same id - and so the same derived seed - on a rerun and in a reordered manifest, and an edited row is a
    new item. `index` is unused (kept for callers); identical rows are told apart by load_items (-2, -3, ...)."""
    content = {k: v for k, v in (row or {}).items() if v is not None and k != "id"}
    content["prompt"] = prompt
    digest = hashlib.sha1(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"p-{digest}"


def check_id(item_id) -> None:
    """An id names files (videos/<id>.mp4): 1-128 of [A-Za-z0-9._-], the whole string (no final newline), not . or
    ..; it is data, never pattern-matched as anything else (a secret, a temp file)."""
    if not isinstance(item_id, str) or not ID_RE.fullmatch(item_id) or item_id in (".", ".."):
        raise ValueError(f"id={item_id!r}: must match [A-Za-z0-9._-]{{1,128}} (and not be . or ..)")


def _typed(column: str, value, typ):
    if value is None or (isinstance(value, str) and value.strip() == "" and column != "prompt"):
        return None
    if typ is str:
        if not isinstance(value, str):
            raise ValueError(f"{column}={value!r}: must be a string")
        if "\x00" in value:
            raise ValueError(f"{column}={value!r}: contains a NUL character (not text)")
        return value
    if isinstance(value, bool):
        raise ValueError(f"{column}={value!r}: must be {'an integer' if typ is int else 'a number'}")
    try:
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{column}={value!r}: must be {'an integer' if typ is int else 'a number'}") from None
    if not math.isfinite(out):
        raise ValueError(f"{column}={value!r}: must be a finite number")
    return out


def check_image(path: Path, shown: str) -> None:
    """ValueError unless `path` is a readable, decodable image (kept for callers; see images.inspect_image)."""
    inspect_image(path, shown)


def _scan(path: Path, make: Callable | None = None) -> tuple[list, list[str]]:
    """Every row in file order, checked and named as the runner sees it: (results, problems). A good row gives
    make(index, line, row, item_id) (a ValueError from it is that row's problem), or (index, item_id) without make."""
    rows, problems = read_records(path)
    out: list = []
    seen: dict[str, int] = {}
    folded: dict[str, tuple[str, int]] = {}   # ids differing only in case are one file on macOS / Windows / SMB
    if not rows and not problems:
        raise ManifestError([f"{path}: no rows (needs a header with at least 'prompt' and one row)"])
    for index, (line, raw) in enumerate(rows):
        where = f"{path}:{line}"
        row, bad = typed_row(raw)
        if bad:
            problems += [f"{where} {p}" for p in bad]
            continue
        prompt = row["prompt"]
        if row.get("id") is None:
            item_id = base = derive_id(index, prompt, row)
            k = 1
            while item_id in seen:  # identical rows: the k-th copy gets -k (each its own video and seed)
                k += 1
                item_id = f"{base}-{k}"
        else:
            item_id = row["id"]
        try:
            check_id(item_id)
        except ValueError as e:
            problems.append(f"{where} {e}")
            continue
        if item_id in seen:
            problems.append(f"{where} id={item_id!r}: duplicate id (first on line {seen[item_id]})")
            continue
        if item_id.casefold() in folded:
            other, other_line = folded[item_id.casefold()]
            problems.append(f"{where} id={item_id!r}: differs from id {other!r} (line {other_line}) only in letter "
                            "case; their files would be one file on a case-insensitive filesystem")
            continue
        seen[item_id] = line
        folded[item_id.casefold()] = (item_id, line)
        try:
            out.append(make(index, line, row, item_id) if make else (index, item_id))
        except ValueError as e:
            problems.append(f"{where} {e}")
    return out, problems


def read_ids(path: str | Path) -> list[tuple[int, str]]:
    """(row index, id) of every row, exactly as load_items numbers and names them, without building requests (no
    torch, no image opened: `wan-dist status` and the Slurm pre-check read manifests this way). ManifestError for the
    rows load_items would reject on their columns or ids."""
    ids, problems = _scan(Path(path))
    if problems:
        raise ManifestError(problems)
    return ids


def load_items(path: str | Path, cfg: RunConfig, spec: ModelSpec) -> list[Item]:
    path = Path(path)
    items, problems = _scan(path, lambda index, line, row, item_id: _item(index, line, cfg, spec, row, item_id,
                                                                          path.parent))
    if problems:
        raise ManifestError(problems)
    return items


def typed_row(raw: dict) -> tuple[dict, list[str]]:
    """A row's given columns typed (COLUMNS), and its problems: unknown columns, bad values, no prompt."""
    unknown = sorted(set(raw) - set(COLUMNS), key=str)
    if unknown:
        return {}, [f"{col}={raw[col]!r}: unknown column; known: {', '.join(COLUMNS)}" for col in unknown]
    row, bad = {}, []
    for col, typ in COLUMNS.items():
        try:
            row[col] = _typed(col, raw.get(col), typ)
        except ValueError as e:
            bad.append(str(e))
    if not bad and (row.get("prompt") is None or not row["prompt"].strip()):
        bad.append(f"prompt={row.get('prompt')!r}: must be a non-empty string")
    return row, bad


def resolve_image(row: dict, spec: ModelSpec, base: Path) -> ImageFacts | None:
    """row["image"] (relative to `base`) checked and made absolute (not resolved: a link is checked as a link);
    ValueError for a text-only model or a file that is not a readable image. Returns the image's size and digest."""
    if not row.get("image"):
        return None
    if spec.image == "none":
        raise ValueError(f"image={row['image']!r}: {spec.name} is text-to-video and takes no image")
    img_path = Path(os.path.abspath(base / row["image"]))
    facts = inspect_image(img_path, row["image"])
    row["image"] = str(img_path)
    return facts


def _item(index: int, line: int, cfg: RunConfig, spec: ModelSpec, row: dict, item_id: str, base: Path) -> Item:
    """The row's Item: its image checked (the output size it leads to too), its request built under every rule."""
    from ..pipeline.request import build_request
    shown = row.get("image")
    facts = resolve_image(row, spec, base)
    req = build_request(cfg, spec, row, item_id, image_size=facts and (facts.width, facts.height), image_label=shown)
    return Item(index, line, req, image_digest=facts and facts.digest)


def form_item(raw: dict, cfg: RunConfig, spec: ModelSpec, item_id: str, base: Path) -> Item:
    """One row given directly (the UI's form) instead of read from a file: the same checks, the same messages as a
    manifest row, every problem of the row raised together (ManifestError naming 'the request')."""
    row, problems = typed_row(raw)
    if not problems:
        try:
            return _item(0, 0, cfg, spec, row, item_id, base)
        except ValueError as e:
            problems.append(str(e))
    raise ManifestError(problems, where="the request")


def single_prompt_items(cfg: RunConfig, spec: ModelSpec) -> list[Item]:
    row = {"prompt": cfg.prompt, "image": cfg.image}
    item_id = derive_id(0, cfg.prompt or "", {"image": cfg.image})
    return [_item(0, 0, cfg, spec, row, item_id, Path.cwd())]

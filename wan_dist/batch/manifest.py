"""Manifests (CSV or JSONL) -> validated items. Every row is checked before any model loads; all problems are
reported together as `file:line column=value: rule`.

Columns: id, prompt, negative_prompt, seed, image, size, frame_num, steps, shift, guide_scale, guide_scale_high,
cfg_truncate_steps, cfg_truncate_high_noise_steps, solver. Only `prompt` is required; a given value overrides the
config for that row. Image paths are relative to the manifest file.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig
from ..models.registry import ModelSpec
from ..pipeline.request import GenerationRequest, build_request

COLUMNS = {"id": str, "prompt": str, "negative_prompt": str, "seed": int, "image": str, "size": str,
           "frame_num": int, "steps": int, "shift": float, "guide_scale": float, "guide_scale_high": float,
           "cfg_truncate_steps": int, "cfg_truncate_high_noise_steps": int, "solver": str}
ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class ManifestError(ValueError):
    def __init__(self, problems: list[str], where: str = "the manifest"):
        self.problems = problems
        n = len(problems)
        super().__init__(f"{n} problem{'s' if n > 1 else ''} in {where} (nothing was run):\n  "
                         + "\n  ".join(problems))


@dataclass(frozen=True)
class Item:
    index: int              # 0-based row index in the manifest (decides the data-parallel share)
    line: int               # 1-based line in the file, for messages
    request: GenerationRequest


def derive_id(index: int, prompt: str, row: dict | None = None) -> str:
    """Row without an id: a hash of what the row asks for (prompt and every other given column), so the same row
    gets the same id - and so the same derived seed - on a rerun and in a reordered manifest, and an edited row is a
    new item. `index` is unused (kept for callers); identical rows are told apart by load_items (-2, -3, ...)."""
    content = {k: v for k, v in (row or {}).items() if v is not None and k != "id"}
    content["prompt"] = prompt
    digest = hashlib.sha1(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"p-{digest}"


def check_id(item_id: str) -> None:
    if not ID_RE.match(item_id) or item_id in (".", ".."):
        raise ValueError(f"id={item_id!r}: must match [A-Za-z0-9._-]{{1,128}} (and not be . or ..)")


def _read_rows(path: Path) -> tuple[list[tuple[int, dict]], list[str]]:
    """(line number, raw dict) per row, and the problems of rows that could not be read at all."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError([f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    rows, problems = [], []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(obj, dict):
                problems.append(f"{path}:{n}: each line must be a JSON object, got {type(obj).__name__}")
                continue
            rows.append((n, obj))
        return rows, problems
    if path.suffix.lower() != ".csv":
        raise ValueError(f"manifest={str(path)!r}: must end in .csv or .jsonl")
    reader = csv.DictReader(text.splitlines(keepends=True))
    if reader.fieldnames is None:
        raise ManifestError([f"{path}:1: empty manifest (needs a header with at least 'prompt')"])
    header = [h.strip() if h else h for h in reader.fieldnames]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise ManifestError([f"{path}:1 {h}: column appears more than once in the header" for h in dupes])
    reader.fieldnames = header
    for row in reader:
        if None in row:  # more cells than header columns
            problems.append(f"{path}:{reader.line_num}: {len(row) - 1 + len(row[None])} cells but the header has "
                            f"{len(header)} columns (quote cells that contain commas)")
            continue
        if all((v or "").strip() == "" for v in row.values()):
            continue
        rows.append((reader.line_num, row))
    return rows, problems


def _typed(column: str, value, typ):
    if value is None or (isinstance(value, str) and value.strip() == "" and column != "prompt"):
        return None
    if typ is str:
        if not isinstance(value, str):
            raise ValueError(f"{column}={value!r}: must be a string")
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
    from PIL import Image
    if not path.is_file():
        raise ValueError(f"image={shown!r}: file not found ({path})")
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.convert("RGB").load()
    except Exception as e:  # PIL raises many types for bad files
        raise ValueError(f"image={shown!r}: cannot decode the image ({type(e).__name__}: {e})") from None


def load_items(path: str | Path, cfg: RunConfig, spec: ModelSpec) -> list[Item]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest={str(path)!r}: file not found")
    rows, problems = _read_rows(path)
    items: list[Item] = []
    seen: dict[str, int] = {}
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
        seen[item_id] = line
        try:
            resolve_image(row, spec, path.parent)
            items.append(Item(index, line, build_request(cfg, spec, row, item_id)))
        except ValueError as e:
            problems.append(f"{where} {e}")
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


def resolve_image(row: dict, spec: ModelSpec, base: Path) -> None:
    """row["image"] (relative to `base`) checked and made absolute; ValueError for a text-only model or a bad file."""
    if not row.get("image"):
        return
    if spec.image == "none":
        raise ValueError(f"image={row['image']!r}: {spec.name} is text-to-video and takes no image")
    img_path = (base / row["image"]).resolve()
    check_image(img_path, row["image"])
    row["image"] = str(img_path)


def form_item(raw: dict, cfg: RunConfig, spec: ModelSpec, item_id: str, base: Path) -> Item:
    """One row given directly (the UI's form) instead of read from a file: the same checks, the same messages as a
    manifest row, every problem of the row raised together (ManifestError naming 'the request')."""
    row, problems = typed_row(raw)
    if not problems:
        try:
            resolve_image(row, spec, base)
            return Item(0, 0, build_request(cfg, spec, row, item_id))
        except ValueError as e:
            problems.append(str(e))
    raise ManifestError(problems, where="the request")


def single_prompt_items(cfg: RunConfig, spec: ModelSpec) -> list[Item]:
    row = {"prompt": cfg.prompt, "image": None}
    if cfg.image:
        img = Path(cfg.image).resolve()
        if spec.image != "none":
            check_image(img, cfg.image)
        row["image"] = str(img)
    item_id = derive_id(0, cfg.prompt or "", {"image": cfg.image})
    return [Item(0, 0, build_request(cfg, spec, row, item_id))]

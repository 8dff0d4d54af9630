"""The settings hash of an item: everything that determines its video, so a rerun with other settings never skips an
id silently (README "Changed settings").

    settings = run part (one per run)            + item part (one per id)
               model (model.* keys not on the      every GenerationRequest field (prompt, negative prompt, seed,
               request: name, boundary, fps),      size, frames, steps, shift, solver, guidance, CFG truncation,
               checkpoint identity, the resolved   and whatever field the request gains later), the image as the
               dtypes, sample.* keys not on the    digest of its bytes
               request, output.* keys

Left out, because they never change the video: the id, the request's warnings and frame_num_requested (the corrected
frame_num is in), config keys marked `video=False` in config.py (sample.seed: the seed an item uses is in its
request; model.sizes), the parallel layout, the device, offloading, logging, progress, the work source.

`fields` name -> value is what the sidecar records (`settings.fields`), so a later run can say which fields changed;
free text (prompts, long strings) is recorded as a digest, never as itself (a secret pasted into a prompt stays out).
The hash is taken over the full values.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

from ..pipeline.request import GenerationRequest

REQUEST_NOT_VIDEO = frozenset({"id", "warnings", "frame_num_requested"})
RUN_SECTIONS = ("model", "sample", "output")
_REQUEST_FIELDS = tuple(f.name for f in dataclasses.fields(GenerationRequest) if f.name not in REQUEST_NOT_VIDEO)
_ALL_REQUEST_NAMES = frozenset(f.name for f in dataclasses.fields(GenerationRequest))
_PLAIN_MAX = 64


def _plain(v):
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def run_settings(cfg, ckpt_identity: str, dtypes: dict) -> dict:
    """The part of every item's settings that is the same for the whole run. `dtypes`: the resolved dtype names
    ({"dtype", "t5_dtype", "vae_dtype"}; auto means different dtypes on different machines)."""
    out = {"checkpoint": ckpt_identity, **{k: dtypes[k] for k in ("dtype", "t5_dtype", "vae_dtype")}}
    for section in RUN_SECTIONS:
        obj = getattr(cfg, section)
        for f in dataclasses.fields(obj):
            # a key the request also carries is hashed as the request's value (the row's override, or this default)
            if f.name in _ALL_REQUEST_NAMES or not f.metadata.get("video", True):
                continue
            out[f"{section}.{f.name}"] = _plain(getattr(obj, f.name))
    return out


def item_values(req: GenerationRequest, image_digest: str | None) -> dict:
    out = {name: _plain(getattr(req, name)) for name in _REQUEST_FIELDS}
    if "image" in out:
        out["image"] = image_digest if req.image is not None else None
    return out


_IMAGE_AT = _REQUEST_FIELDS.index("image") if "image" in _REQUEST_FIELDS else -1


def _run_hasher(run: dict):
    """sha256 primed with the run part and the request's field names (their order is the item part's layout)."""
    return hashlib.sha256(json.dumps([run, _REQUEST_FIELDS], sort_keys=True, default=str).encode() + b"\n")


def settings_hash(run: dict, req: GenerationRequest, image_digest: str | None, _base=None) -> str:
    """sha256 over the run part and the item part (the request's values in field order; tuples as JSON lists, the
    image as its digest). ~10 us per item: 100k rows hash in about a second."""
    h = (_base or _run_hasher(run)).copy()
    values = [getattr(req, n) for n in _REQUEST_FIELDS]
    if _IMAGE_AT >= 0:
        values[_IMAGE_AT] = image_digest if req.image is not None else None
    h.update(json.dumps(values, ensure_ascii=False, default=str).encode())
    return "sha256:" + h.hexdigest()[:32]


def _shown(v):
    """What the sidecar records for a value: itself when short and plain, else a digest."""
    if isinstance(v, (bool, int, float)) or v is None:
        return v
    if isinstance(v, list) and all(isinstance(x, (bool, int, float)) for x in v):
        return v
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    if isinstance(v, str) and (v.startswith("sha256:") or
                               (len(v) <= _PLAIN_MAX and all(c.isalnum() or c in "._+*-/" for c in v))):
        return v
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def fields_record(run: dict, req: GenerationRequest, image_digest: str | None) -> dict:
    """name -> recorded value, the sidecar's `settings.fields` (free text as a digest)."""
    merged = {**run, **item_values(req, image_digest)}
    out = {k: _shown(v) for k, v in merged.items()}
    for name in ("prompt", "negative_prompt"):       # free text: a digest even when it is one plain word
        if name in merged and isinstance(merged[name], str):
            out[name] = "sha256:" + hashlib.sha256(merged[name].encode()).hexdigest()[:16]
    return out


def changed_fields(old: dict | None, new: dict) -> list[str]:
    """Names whose recorded values differ (a field only one side has counts as changed)."""
    if not isinstance(old, dict):
        return ["settings (not recorded: made by an older wan-dist or the sidecar is unreadable)"]
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return diff or ["settings (the hash differs, the recorded fields do not: a value recorded as a digest)"]


def attach(items: list, run: dict) -> list:
    """The items with their settings hash (computed once per run, on the main rank)."""
    base = _run_hasher(run)
    return [dataclasses.replace(it, settings=settings_hash(run, it.request, it.image_digest, base)) for it in items]

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


def settings_hash(run: dict, req: GenerationRequest, image_digest: str | None, _run_json: str | None = None) -> str:
    run_json = _run_json if _run_json is not None else json.dumps(run, sort_keys=True, default=str)
    item_json = json.dumps(item_values(req, image_digest), sort_keys=True, ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(f"{run_json}\n{item_json}".encode()).hexdigest()[:32]


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
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def attach(items: list, run: dict) -> list:
    """The items with their settings hash (computed once per run, on the main rank)."""
    run_json = json.dumps(run, sort_keys=True, default=str)
    return [dataclasses.replace(it, settings=settings_hash(run, it.request, it.image_digest, run_json))
            for it in items]

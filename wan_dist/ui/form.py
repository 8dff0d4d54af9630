"""The form behind the page (no Gradio here): which controls a model gets, their defaults (the model's config), their
choices, which ones the command line locked, and a submitted form turned into one validated batch Item.

A submitted form is validated exactly like a manifest row (batch.manifest.form_item: the same rules, the same
messages). Locked controls are not read from the submission at all: their values come from the config, so a
client that bypasses the disabled widget still cannot change them.
"""
from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .. import config as config_mod
from ..batch import manifest
from ..distributed.layout import check_tokens
from ..models.registry import NATIVE_NEGATIVE_PROMPT, get_model

# control -> config key the command line sets it with
KEYS = {
    "prompt": "prompt", "image": "image", "negative_prompt": "sample.negative_prompt", "size": "sample.size",
    "frame_num": "sample.frame_num", "steps": "sample.steps", "guide_scale": "sample.guide_scale",
    "guide_scale_high": "sample.guide_scale_high", "shift": "sample.shift", "solver": "sample.solver",
    "seed": "sample.seed", "cfg_truncate_steps": "sample.cfg_truncate_steps",
    "cfg_truncate_high_noise_steps": "sample.cfg_truncate_high_noise_steps",
    "cfg_truncate_keep": "sample.cfg_truncate_keep", "offload_model": "offload_model", "t5_cpu": "t5_cpu",
}
PLACEMENT = ("offload_model", "t5_cpu")      # not request fields: where the models live (single GPU only)


@dataclass
class Control:
    name: str
    kind: str                    # text | image | choice | int | float | bool
    value: object                # the initial value: the command line's, else the config's default
    locked: str | None = None    # how the command line set it (the control is then disabled)
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    custom: bool = False         # a choice that also takes typed values (sizes of a model without a size table)
    fixed: bool = False          # disabled for another reason than the command line (replica_only)


def new_id() -> str:
    return f"ui-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


class Form:
    def __init__(self, cfg, given: dict[str, str], random_seed: bool = False, replica_size: int = 1):
        self.cfg, self.spec = cfg, get_model(cfg.model.name)
        self.random_seed = random_seed
        s, m, spec = cfg.sample, cfg.model, self.spec
        size = s.size or m.size
        sizes = tuple(m.sizes) or (m.size,)
        seed = s.seed if ("sample.seed" in given and not random_seed) else -1   # -1: draw one per generation
        c = [Control("prompt", "text", cfg.prompt or ""),
             Control("image", "image", cfg.image) if spec.image != "none" else None,
             Control("size", "choice", size, choices=sizes + ((size,) if size not in sizes else ()),
                     custom=not m.sizes),
             Control("frame_num", "int", s.frame_num or m.frame_num, minimum=1, step=4),
             Control("steps", "int", s.steps or m.steps, minimum=1, maximum=max(100, s.steps or 0), step=1),
             Control("guide_scale", "float", _pick(s.guide_scale, m.guide_scale), minimum=1.0,
                     maximum=max(20.0, s.guide_scale or 0), step=0.1),
             Control("guide_scale_high", "float", _pick(s.guide_scale_high, m.guide_scale_high, m.guide_scale),
                     minimum=1.0, maximum=max(20.0, s.guide_scale_high or 0), step=0.1) if spec.is_moe else None,
             Control("shift", "float", _pick(s.shift, m.shift), minimum=min(1.0, s.shift or 1.0),
                     maximum=max(20.0, s.shift or 0), step=0.1),
             Control("solver", "choice", s.solver, choices=config_mod.SOLVERS),
             Control("seed", "int", seed, minimum=-1),
             Control("negative_prompt", "text", NATIVE_NEGATIVE_PROMPT if s.negative_prompt is None
                     else s.negative_prompt),
             Control("cfg_truncate_steps", "int", s.cfg_truncate_steps, minimum=0, step=1),
             Control("cfg_truncate_high_noise_steps", "int", s.cfg_truncate_high_noise_steps, minimum=0, step=1)
             if spec.is_moe else None]
        if "cfg_truncate_keep" in manifest.COLUMNS:          # the keep mode, where this version has it
            c.append(Control("cfg_truncate_keep", "choice", getattr(s, "cfg_truncate_keep", "uncond"),
                             choices=tuple(getattr(config_mod, "TRUNCATE_KEEP", ()))))
        c += [Control("offload_model", "bool", cfg.offload_model, fixed=replica_size > 1),
              Control("t5_cpu", "bool", cfg.t5_cpu, fixed=replica_size > 1)]
        self.controls = {x.name: x for x in c if x is not None}
        for name, ctl in self.controls.items():
            ctl.locked = given.get(KEYS[name])

    @property
    def names(self) -> list[str]:
        """The order the page passes the controls' values in."""
        return list(self.controls)

    def _value(self, name: str, values: dict):
        ctl = self.controls[name]
        return ctl.value if (ctl.locked or ctl.fixed) else values.get(name)

    def placement(self, values: dict) -> dict:
        return {k: bool(self._value(k, values)) for k in PLACEMENT}

    def item(self, values: dict, item_id: str | None = None, layout=None) -> manifest.Item:
        """The submitted values (control name -> value) as one batch Item; ManifestError ('the request') with the
        manifest's messages when something is wrong. A seed of -1 is drawn here (then it is the item's seed)."""
        raw = {}
        for name in self.controls:
            if name in PLACEMENT:
                continue
            v = self._value(name, values)
            if name == "image" and not v:
                continue
            if name in ("negative_prompt",) and v == NATIVE_NEGATIVE_PROMPT:
                v = None                                   # the native default, exactly as a row without it
            raw[name] = v
        if raw.get("seed") is not None and _is_minus_one(raw["seed"]):
            raw["seed"] = secrets.randbelow(config_mod.MAX_SEED + 1)   # native: random.randint(0, sys.maxsize)
        item = manifest.form_item(raw, self.cfg, self.spec, item_id or new_id(), Path.cwd())
        if layout is not None and layout.sp > 1 and item.request.image is None:
            try:
                check_tokens(self.spec, tuple(item.request.size), item.request.frame_num, layout.sp, "size",
                             self.cfg.model.sizes)
            except ValueError as e:
                raise manifest.ManifestError([str(e)], where="the request") from None
        return item


def _pick(*values):
    return next((v for v in values if v is not None), None)


def _is_minus_one(v) -> bool:
    try:
        return float(v) == -1
    except (TypeError, ValueError):
        return False

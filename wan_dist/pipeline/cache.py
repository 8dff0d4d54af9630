"""Step caching per expert with diffusers' own cache hooks (FirstBlockCache, MagCache, TaylorSeer): configured for
each video and each expert, counted, and reset after every video.

    setting = CacheSetting(method, threshold, ...)      one video's choice (sample.cache* / manifest columns)
    cache = StepCache(dits, params)                     one per generator; `pinned` under Ulysses/ring (below)
    cache.begin(setting, step_experts)                  before the denoising loop: hooks per expert for this video
    ... every DiT call inside `model.cache_context("cond" | "uncond" | ...)` (pipeline.denoise.dit_call) ...
    stats = cache.end()                                 after it (also on error): counts, then every hook state reset

Why per expert: each A14B expert is its own WanTransformer3DModel with its own hooks, so its state never sees the
other expert's activations, and MagCache's `num_inference_steps` is that expert's step count in this video (the hook
counts calls per cache context and resets at that number; with CFG truncation the unconditional context falls behind,
so the explicit reset after each video is what keeps the next video exact). Every DiT call runs in a named context
(cond, uncond, cond_uncond for a batch-2 CFG call, shadow for CFG-parallel's discarded forward): hook state is kept
per context name, so truncated steps (one pass only, either kind) leave the other context's history alone.

Counting (sidecar `cache.experts`): a forward hook on each block counts calls (it fires even when a cache hook
short-circuits the block, because diffusers' hooks replace `forward`, not `__call__`), a hook on the block's `norm1`
(its first op) counts blocks really computed. Counting hooks exist only while a cache method is on.

Pinned (Ulysses / ring): the block-level hooks of FirstBlockCache and MagCache must sit *inside* diffusers'
context-parallel split hook on `blocks.0` (they must see the local share), so they are installed once before
`enable_parallelism` and never re-registered: per video only MagCache's schedule changes, in place on the config
object its hooks hold. The method is then fixed per run (config rules in distributed/layout.py).

TaylorSeer's default identifiers (`^blocks.*attn`, matched with fullmatch) never match Wan's `attn1`/`attn2`: it
silently does nothing. Here it caches whole blocks (`blocks.<i>`), the level FirstBlockCache and MagCache skip at.

MagCache calibration (`sample.cache_calibrate=true`, cache off): per step the ratio mean_tokens(|r_t| / |r_{t-1}|) of
the residual r = output of the last block - input of the first block (MagCache's own calibration formula), per expert
and context; the sidecar keeps them under `cache.mag_ratios` and `sample.cache_mag_ratios` reads them back. Under
Ulysses/ring the norms are the writer rank's share of the tokens (calibrate single-process for the exact values).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

TAYLORSEER_IDS = (r"blocks\.\d+",)
DEFAULTS = {"first_block": {"threshold": 0.05}, "mag": {"threshold": 0.06, "max_skip_steps": 3},
            "taylorseer": {"interval": 5, "warmup_steps": 3}}
MAG_RETENTION = 0.2          # MagCache's default share of each expert's first steps that are never skipped


@dataclass(frozen=True)
class CacheSetting:
    method: str = "none"
    threshold: float | None = None       # first_block: relative change of block 0's residual; mag: accumulated error
    max_skip_steps: int | None = None    # mag: consecutive skipped steps at most
    interval: int | None = None          # taylorseer: a full compute every N steps
    warmup_steps: int | None = None      # mag, taylorseer: the first N steps of each expert are always computed
    mag_ratios: tuple = ()               # mag: ((expert, (r_0, r_1, ...)), ...)

    def value(self, name: str):
        v = getattr(self, name)
        return DEFAULTS.get(self.method, {}).get(name) if v is None else v

    def describe(self) -> dict:
        keys = {"first_block": ("threshold",), "mag": ("threshold", "max_skip_steps", "warmup_steps"),
                "taylorseer": ("interval", "warmup_steps")}.get(self.method, ())
        return {"method": self.method, **{k: self.value(k) for k in keys}}


def library_config(s: CacheSetting, expert: str, n_steps: int, dtype: torch.dtype):
    """The diffusers config of `s` for one expert that runs `n_steps` steps in this video (None: no cache)."""
    from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig
    if s.method == "first_block":
        return FirstBlockCacheConfig(threshold=s.value("threshold"))
    if s.method == "mag":
        n = max(n_steps, 1)
        warm = s.warmup_steps if s.warmup_steps is not None else int(MAG_RETENTION * n + 0.5)
        return MagCacheConfig(threshold=s.value("threshold"), max_skip_steps=s.value("max_skip_steps"),
                              retention_ratio=warm / n,     # diffusers: first int(ratio * n + 0.5) = warm steps
                              num_inference_steps=n, mag_ratios=list(dict(s.mag_ratios)[expert]))
    if s.method == "taylorseer":
        return TaylorSeerCacheConfig(cache_interval=s.value("interval"),
                                     disable_cache_before_step=s.value("warmup_steps"),
                                     taylor_factors_dtype=dtype, cache_identifiers=list(TAYLORSEER_IDS))
    return None


def load_mag_ratios(path: str, experts: tuple[str, ...], field_name: str = "sample.cache_mag_ratios") -> tuple:
    """A JSON file with {expert: [ratios]}: a sidecar of a `sample.cache_calibrate=true` run (its `cache.mag_ratios`)
    or that mapping alone. ValueError naming the file and the rule."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{field_name}={path!r}: cannot read a JSON file ({type(e).__name__}: {e})") from None
    if isinstance(data, dict) and isinstance(data.get("cache"), dict):
        data = data["cache"]
    if isinstance(data, dict) and "mag_ratios" in data:
        data = data["mag_ratios"]
    missing = [e for e in experts if not isinstance((data or {}).get(e) if isinstance(data, dict) else None, list)]
    if missing:
        raise ValueError(f"{field_name}={path!r}: needs a list of per-step ratios for expert(s) {', '.join(missing)} "
                         "(the sidecar of a run with sample.cache_calibrate=true holds them under cache.mag_ratios)")
    out = []
    for e in experts:
        vals = data[e]
        if not vals or not all(isinstance(v, (int, float)) and v > 0 for v in vals):
            raise ValueError(f"{field_name}={path!r}: ratios of expert {e} must be positive numbers, got {vals[:5]}")
        out.append((e, tuple(float(v) for v in vals)))
    return tuple(out)


def allow_block_class(model) -> None:
    """FSDP2 swaps each block's class for a generated subclass (FSDPWanTransformerBlock); diffusers' block hooks look
    the class up in their registry, so the subclass is registered with the metadata of the class it wraps."""
    from diffusers.hooks._helpers import TransformerBlockRegistry
    for cls in {type(b) for b in model.blocks}:
        base = next((c for c in cls.__mro__ if c.__name__ == "WanTransformerBlock"), None)
        if base is None or base is cls:
            continue
        try:
            TransformerBlockRegistry.get(cls)
        except ValueError:
            TransformerBlockRegistry.register(cls, dataclasses.replace(TransformerBlockRegistry.get(base)))


@dataclass
class _Counts:
    dit_calls: int = 0
    blocks_called: int = 0
    blocks_computed: int = 0

    def as_dict(self) -> dict:
        return {"dit_calls": self.dit_calls, "blocks_called": self.blocks_called,
                "blocks_computed": self.blocks_computed, "blocks_skipped": self.blocks_called - self.blocks_computed}


@dataclass
class CacheStats:
    setting: dict
    experts: dict = field(default_factory=dict)           # expert -> counts
    mag_ratios: dict | None = None                         # expert -> [ratio per step] (calibration)

    def as_dict(self) -> dict:
        out = dict(self.setting) | {"experts": self.experts}
        if self.mag_ratios is not None:
            out["mag_ratios"] = self.mag_ratios
        return out


class StepCache:
    def __init__(self, dits: dict, *, pinned: bool = False, calibrate: bool = False):
        self.dits = dits
        self.pinned = pinned
        self.calibrate = calibrate
        self._installed: dict[str, tuple] = {}       # expert -> (key, library config object)
        self._handles: list = []
        self._counts: dict[str, _Counts] = {}
        self._calib = None
        self._setting = CacheSetting()

    # -- configuration ------------------------------------------------------------------------------------------
    def _configure(self, expert: str, model, setting: CacheSetting, n_steps: int) -> None:
        key = (setting, n_steps)
        current = self._installed.get(expert)
        # unchanged, and still the config the model runs with (nothing else disabled or replaced it since)
        if current is not None and current[0] == key and getattr(model, "_cache_config", None) is current[1]:
            return
        lib = library_config(setting, expert, n_steps, next(model.parameters()).dtype)
        if self.pinned and current is not None:
            # Ulysses/ring: the hooks stay where they were installed (inside the context-parallel split); only
            # MagCache's schedule may change per video, in place on the config object its hooks hold
            if lib is None and current[1] is None:     # no cache in this run: nothing installed, nothing to change
                self._installed[expert] = (key, None)
                return
            assert lib is not None and type(lib) is type(current[1]), "the cache method is fixed per run here"
            for f in dataclasses.fields(lib):
                setattr(current[1], f.name, getattr(lib, f.name))
            self._installed[expert] = (key, current[1])
            return
        if getattr(model, "is_cache_enabled", False):   # ours from an earlier video, or left by another owner
            model.disable_cache()
        if lib is not None:
            allow_block_class(model)
            model.enable_cache(lib)
        self._installed[expert] = (key, lib)

    def install(self, setting: CacheSetting, step_experts: list[str]) -> None:
        """Install the hooks now (before enable_parallelism when pinned)."""
        for expert, model in self.dits.items():
            self._configure(expert, model, setting, step_experts.count(expert))

    # -- one video ----------------------------------------------------------------------------------------------
    def begin(self, setting: CacheSetting, step_experts: list[str]) -> None:
        self._setting = setting
        self._counts = {e: _Counts() for e in self.dits if e in step_experts}
        for expert, model in self.dits.items():
            if expert in step_experts:
                self._configure(expert, model, setting, step_experts.count(expert))
        for expert in self._counts:
            self._count(expert, self.dits[expert], blocks=setting.method != "none")
        if self.calibrate:
            self._calib = _Calibration(self.dits, self._handles)

    def _count(self, expert: str, model, blocks: bool) -> None:
        c = self._counts[expert]

        def dit_call(*_):      # the root forward is never compiled (compile is regional)
            c.dit_calls += 1

        @torch.compiler.disable
        def called(*_):
            c.blocks_called += 1

        @torch.compiler.disable
        def computed(*_):
            c.blocks_computed += 1

        self._handles.append(model.register_forward_hook(dit_call))
        for block in model.blocks if blocks else ():
            self._handles.append(block.register_forward_hook(called))
            self._handles.append(block.norm1.register_forward_hook(computed))

    def end(self) -> CacheStats:
        """Counts of this video; every hook state reset (also after an error) and the counting hooks removed."""
        from diffusers.hooks import HookRegistry
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for model in self.dits.values():
            HookRegistry.check_if_exists_or_initialize(model).reset_stateful_hooks()
        experts = {}
        for e, c in self._counts.items():
            if self._setting.method == "none":   # no hook ran: every block of every call was computed
                n = len(self.dits[e].blocks)
                c.blocks_called = c.blocks_computed = n * c.dit_calls
            experts[e] = c.as_dict()
        stats = CacheStats(self._setting.describe(), experts, self._calib.ratios() if self._calib else None)
        self._calib = None
        self._counts = {}
        return stats


class _Calibration:
    """MagCache's calibration measure, from plain forward hooks: input of blocks[0] (as its norm1 sees it, i.e. the
    local share under Ulysses/ring) and output of blocks[-1], per expert and cache context."""

    def __init__(self, dits: dict, handles: list):
        self.norms: dict[tuple[str, str], torch.Tensor] = {}
        self.out: dict[tuple[str, str], list[float]] = {}
        self.context: dict[str, str] = {}
        for expert, model in dits.items():
            handles.append(model.blocks[0].norm1.register_forward_pre_hook(self._head(expert)))
            handles.append(model.blocks[-1].register_forward_hook(self._tail(expert)))
        self._input: dict[str, torch.Tensor] = {}

    def _head(self, expert):
        @torch.compiler.disable
        def hook(module, args):
            self._input[expert] = args[0]
        return hook

    def _tail(self, expert):
        @torch.compiler.disable
        def hook(module, args, output):
            x = self._input.pop(expert, None)
            if x is None:
                return
            key = (expert, _current_context())
            # per-token norm of the residual, in chunks of tokens so no [S, C] copy of the whole stream is made
            flat_out, flat_in = output.reshape(-1, output.shape[-1]), x.reshape(-1, x.shape[-1])
            norm = torch.cat([torch.linalg.vector_norm(flat_out[i:i + 4096].float() - flat_in[i:i + 4096].float(),
                                                       dim=-1) for i in range(0, flat_out.shape[0], 4096)])
            prev = self.norms.get(key)
            self.out.setdefault(key, []).append(1.0 if prev is None else (norm / (prev + 1e-8)).mean().item())
            self.norms[key] = norm
        return hook

    def ratios(self) -> dict:
        """expert -> the ratios of its longest context (cond unless a truncation mode ran cond on fewer steps)."""
        best: dict[str, list[float]] = {}
        for (expert, _ctx), vals in sorted(self.out.items(), key=lambda kv: kv[0][1] != "cond"):
            if len(vals) > len(best.get(expert, [])):
                best[expert] = [round(v, 6) for v in vals]
        return best


# the context of the DiT call in flight, for the calibration hooks (one video at a time per process; a stack so a
# nested call, which wan-dist never makes, would still be filed right)
_CONTEXT = ["cond"]


def _current_context() -> str:
    return _CONTEXT[-1]


class cache_context:
    """`with cache_context(model, name)`: diffusers' cache context when the model has a cache on, and the name the
    calibration hooks file their measure under."""

    def __init__(self, model, name: str):
        self.model, self.name = model, name
        self._inner = model.cache_context(name) if getattr(model, "is_cache_enabled", False) else None

    def __enter__(self):
        _CONTEXT.append(self.name)
        if self._inner is not None:
            self._inner.__enter__()
        return self

    def __exit__(self, *exc):
        _CONTEXT.pop()
        if self._inner is not None:
            return self._inner.__exit__(*exc)
        return False

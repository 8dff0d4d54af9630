"""Typed run configuration: frozen dataclasses (the schema), Hydra composition and one `validate` for cross-field rules.

YAML in conf/ selects and overrides; these classes say what each key means. `from_dict` turns a composed config into
a `RunConfig`, raising ValueError that names the field, the value and the rule for unknown keys and bad values, before
any model work. The same classes are registered in Hydra's ConfigStore (group `schema`) for documentation/tooling.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

SOLVERS = ("unipc", "dpm++")
TRUNCATE_KEEP = ("uncond", "cond")    # pipeline.schedule.KEEP_MODES (config sits below pipeline: no import)
WORK_SOURCES = ("static", "array", "queue")
LOGGERS = ("none", "wandb")
DEVICES = ("auto", "cpu", "cuda")
DTYPE_NAMES = ("auto", "fp32", "bf16", "fp16")
UI_LANGS = ("zh", "en")
ON_CHANGE = ("stop", "redo", "keep")
CACHE_METHODS = ("none", "first_block", "mag", "taylorseer")
COMPILE_MODES = ("none", "regional")


def _doc(text: str, default=dataclasses.MISSING, default_factory=dataclasses.MISSING, *, video: bool = True):
    """A documented field. `video=False` marks a model.* / sample.* / output.* key that does not change the video an
    item gets (batch/settings.py leaves it out of the settings hash; e.g. sample.seed: the seed an item actually uses
    is part of its request)."""
    meta = {"doc": text, "video": video}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelConfig:
    """Native defaults of a task (conf/model/<name>.yaml); `sample.*` overrides them per run, manifest columns
    per row."""
    name: str = _doc("registry name: t2v-1.3B, t2v-14B, ti2v-5B, t2v-A14B, i2v-A14B, tiny-t2v, tiny-ti2v, "
                     "tiny-t2v-moe, tiny-i2v-moe", "tiny-t2v")
    steps: int = _doc("sampling steps", 50)
    shift: float = _doc("flow shift (sigma' = s*sigma/(1+(s-1)*sigma))", 5.0)
    guide_scale: float = _doc("CFG scale (of the low-noise expert for MoE models)", 5.0)
    guide_scale_high: Optional[float] = _doc("CFG scale of the high-noise expert (MoE only)", None)
    boundary: Optional[float] = _doc("MoE switch: t >= boundary*1000 runs the high-noise expert", None)
    fps: int = _doc("frames per second of the written mp4", 16)
    frame_num: int = _doc("frames per video (4n+1)", 81)
    size: str = _doc("default W*H", "832*480")
    sizes: tuple = _doc("official W*H sizes (sample.size and manifest sizes must be one of them); empty = any size "
                        "the VAE stride and patch allow", (), video=False)


@dataclass(frozen=True)
class SampleConfig:
    """Run-wide sampling settings; null means 'the model default'."""
    solver: str = _doc("unipc (native default) or dpm++", "unipc")
    steps: Optional[int] = _doc("override model.steps", None)
    shift: Optional[float] = _doc("override model.shift", None)
    guide_scale: Optional[float] = _doc("override model.guide_scale (low-noise expert for MoE)", None)
    guide_scale_high: Optional[float] = _doc("override model.guide_scale_high (MoE)", None)
    size: Optional[str] = _doc("override model.size, W*H (WxH also accepted)", None)
    frame_num: Optional[int] = _doc("override model.frame_num; corrected to 4n+1 with a warning", None)
    negative_prompt: Optional[str] = _doc("null = the native default negative prompt", None)
    seed: int = _doc("run seed; a row without a seed gets one derived from this and its id", 42, video=False)
    cfg_truncate_steps: int = _doc("CFG truncation window of the low-noise expert: the last N steps of the run "
                                   "(N <= the low-noise steps; single-expert models: the whole run) run one "
                                   "forward, see cfg_truncate_keep", 0)
    cfg_truncate_high_noise_steps: int = _doc("CFG truncation window of the high-noise expert: its last M steps "
                                              "before the expert switch (MoE only)", 0)
    cfg_truncate_keep: str = _doc("the pass a truncated step runs, its prediction used alone: uncond (the seed's "
                                  "tool: the conditional forward is skipped) or cond (the unconditional forward is "
                                  "skipped, the 'guidance interval' variant)", "uncond")
    cfg_batch: bool = _doc("run the conditional and unconditional passes of a step as one batch-2 DiT forward "
                           "(not with parallel.cfg=2)", False)
    cache: str = _doc("step caching per expert with diffusers' hooks: none, first_block (skip blocks 1.. when block "
                      "0's residual barely changed; not under Ulysses/ring), mag (MagCache, needs "
                      "cache_mag_ratios) or taylorseer (whole blocks predicted by a Taylor series); manifest column "
                      "`cache`", "none")
    cache_threshold: Optional[float] = _doc("first_block: relative change of block 0's residual below which the "
                                            "other blocks are skipped (default 0.05); mag: accumulated error "
                                            "allowed (default 0.06); manifest column `cache_threshold`", None)
    cache_max_skip_steps: Optional[int] = _doc("mag: consecutive steps that may be skipped (default 3)", None)
    cache_interval: Optional[int] = _doc("taylorseer: one full compute every N steps, predicted in between "
                                         "(default 5)", None)
    cache_warmup_steps: Optional[int] = _doc("mag, taylorseer: the first N steps of each expert are always computed "
                                             "(default: 20% of the expert's steps for mag, 3 for taylorseer)", None)
    cache_mag_ratios: Optional[str] = _doc("mag: JSON file of per-expert magnitude ratios, e.g. the sidecar of a "
                                           "video made with cache_calibrate=true", None)
    cache_calibrate: bool = _doc("measure MagCache's per-step magnitude ratios of each expert (cache none) and record "
                                 "them in the sidecar as cache.mag_ratios", False, video=False)


@dataclass(frozen=True)
class ParallelConfig:
    """world = dp x cfg x ulysses x ring. A replica = cfg x ulysses x ring ranks making one video together."""
    dp: int = _doc("data-parallel replicas; -1 = whatever the world size leaves", -1)
    cfg: int = _doc("1, or 2 to run cond and uncond passes on two halves of a replica", 1)
    ulysses: int = _doc("Ulysses sequence-parallel degree (must divide the head count)", 1)
    ring: int = _doc("ring-attention degree (needs an attention backend returning the log-sum-exp: "
                     "attention_backend=auto picks one on GPU and on CPU)", 1)
    fsdp: bool = _doc("shard the DiT(s) with FSDP2 inside a replica", False)
    t5_fsdp: bool = _doc("shard the T5 encoder with FSDP2 inside a replica", False)
    backend: str = _doc("torch.distributed backend: auto (nccl on GPU, gloo on CPU), nccl or gloo", "auto")
    vae_parallel: bool = _doc("split the VAE decode over the ranks of a replica", True)


@dataclass(frozen=True)
class LoggerConfig:
    kind: str = _doc("none or wandb", "none")
    project: str = _doc("W&B project", "wan-dist")
    group: Optional[str] = _doc("W&B group", None)
    name: Optional[str] = _doc("W&B run name (default: the out_dir name)", None)
    tags: tuple = _doc("W&B tags", ())
    mode: str = _doc("offline (files under out_dir/wandb) or online", "offline")


@dataclass(frozen=True)
class OutputConfig:
    save_latents: bool = _doc("also write videos/<id>.latents.safetensors (final latent before decode)", False)
    lossless: bool = _doc("encode the mp4 losslessly so decoded frames equal the generated uint8 frames", False)
    frames: Optional[str] = _doc("png: also write every frame under videos/<id>/", None)
    crf: int = _doc("H.264 quality for the lossy mp4 (lower = better)", 18)


@dataclass(frozen=True)
class BatchConfig:
    retry_failed: bool = _doc("re-run items whose ledger line says failed", False)
    progress: bool = _doc("progress bars on rank 0", True)
    claim_timeout_s: float = _doc("a claim (out_dir/claims/<id>.claim) whose owner on another host has not "
                                  "refreshed it for this long is taken over (a dead owner on this host at once)",
                                  300.0)
    on_change: str = _doc("an id already made (or failed) in out_dir with other settings (batch/settings.py): stop "
                          "= exit 2 before any model work, listing the ids and the changed fields; redo = make it "
                          "again with the new settings (the old files are replaced atomically); keep = keep the old "
                          "files and say so", "stop")


@dataclass(frozen=True)
class WorkConfig:
    """Which manifest rows this job runs (batch/work.py)."""
    source: str = _doc("static: row i to replica i % dp; array: task k of K in a Slurm array takes its share; "
                       "queue: replicas pull rows dynamically (claims in out_dir)", "static")
    array_task: Optional[int] = _doc("array: this task's index k (null = from SLURM_ARRAY_TASK_ID)", None)
    array_tasks: Optional[int] = _doc("array: the number of tasks K (null = from SLURM_ARRAY_TASK_COUNT)", None)


@dataclass(frozen=True)
class UIConfig:
    """The Gradio app (launch/app.py); ignored by the batch launchers."""
    lang: str = _doc("language of the UI's labels and help: zh or en", "zh")
    host: str = _doc("address the UI listens on; 127.0.0.1 = this machine only (anything else is reachable from "
                     "the network, without authentication: a warning is logged)", "127.0.0.1")
    port: int = _doc("TCP port of the UI; 0 = a free port chosen by the OS (printed at start)", 7860)


@dataclass(frozen=True)
class RayConfig:
    """launch/ray_run.py only (wan_dist/gangs/): gangs of ranks on a Ray cluster pull rows from one queue. A gang is
    one model replica (cfg x ulysses x ring ranks, FSDP inside it); the gangs are the data-parallel axis."""
    address: str = _doc("local: start a private Ray on this machine (loopback only); auto: join the cluster this "
                        "machine belongs to (RAY_ADDRESS or the running head); ray://HOST:PORT: Ray client; "
                        "HOST:PORT: a cluster's GCS address", "local")
    gangs: int = _doc("number of gangs (model replicas) pulling rows", 1)
    gang_size: Optional[int] = _doc("ranks per gang; null = parallel.cfg x parallel.ulysses x parallel.ring (a "
                                    "given value must equal it)", None)
    gpus_per_rank: float = _doc("GPUs reserved per rank (0 on a CPU-only cluster)", 1.0)
    cpus_per_rank: float = _doc("CPUs reserved per rank (> 0)", 1.0)
    max_gang_restarts: int = _doc("how often each gang is killed and rebuilt after one of its ranks died", 3)
    max_item_attempts: int = _doc("a row whose gang died or whose item failed this many times is recorded failed",
                                  3)
    placement_timeout_s: float = _doc("a gang whose placement group is not ready after this long is an error "
                                      "naming the missing resources (a gang no node can hold fails at once)", 60.0)
    temp_dir: Optional[str] = _doc("address=local only: Ray's session directory (null = Ray's default, /tmp/ray)",
                                   None)


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = _doc("the task and its native defaults", default_factory=ModelConfig)
    sample: SampleConfig = _doc("sampling overrides", default_factory=SampleConfig)
    parallel: ParallelConfig = _doc("parallel layout", default_factory=ParallelConfig)
    logger: LoggerConfig = _doc("metrics sink", default_factory=LoggerConfig)
    output: OutputConfig = _doc("extra outputs", default_factory=OutputConfig)
    batch: BatchConfig = _doc("batch behaviour", default_factory=BatchConfig)
    work: WorkConfig = _doc("work distribution", default_factory=WorkConfig)
    ui: UIConfig = _doc("the Gradio app (launch/app.py)", default_factory=UIConfig)
    ray: RayConfig = _doc("Ray gangs (launch/ray_run.py only)", default_factory=RayConfig)
    ckpt_dir: Optional[str] = _doc("checkpoint directory (native layout or *-Diffusers)", None)
    out_dir: str = _doc("output directory", "runs/default")
    manifest: Optional[str] = _doc("CSV or JSONL prompt manifest", None)
    prompt: Optional[str] = _doc("a single prompt instead of a manifest", None)
    image: Optional[str] = _doc("conditioning image for the single prompt", None)
    device: str = _doc("auto (cuda when available), cpu or cuda", "auto")
    dtype: str = _doc("DiT dtype: auto = bf16 on GPU, fp32 on CPU", "auto")
    t5_dtype: str = _doc("T5 dtype: auto = bf16 on GPU, fp32 on CPU", "auto")
    vae_dtype: str = _doc("VAE dtype (the native code runs it in fp32)", "fp32")
    offload_model: bool = _doc("keep the idle expert and T5 off the device between uses", False)
    t5_cpu: bool = _doc("run the T5 encoder on CPU", False)
    compile: str = _doc("none, or regional: torch.compile each transformer block once at load time (its own "
                        "`compile` stage, with one warm-up forward per expert); with a step cache in the run the "
                        "blocks' attn1/attn2/ffn are compiled (the cache hooks sit on the blocks)", "none")
    attention_backend: str = _doc("diffusers attention backend of the DiT: auto (native; under parallel.ring an LSE "
                                  "backend: _native_cudnn on GPU, wan_dist_cpu_flash_lse on CPU) or a backend name "
                                  "(native, flex, _native_cudnn, _native_flash, flash, sage, ...), checked against "
                                  "what is installed and the device", "auto")


# ---------------------------------------------------------------------------------------------------------------------
def _check_type(path: str, value: Any, tp) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check_type(path, value, args[0])
    if tp is tuple or origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise ValueError(f"{path}={value!r}: must be a list")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{path}={value!r}: must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{path}={value!r}: must be an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):     # nan / inf pass every comparison rule the wrong way
                raise ValueError(f"{path}={value!r}: must be a finite number")
            return float(value)
        raise ValueError(f"{path}={value!r}: must be a number")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{path}={value!r}: must be a string")
    return value


def _build(cls, data: dict, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{prefix or 'config'}={data!r}: must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{prefix}{unknown[0]}={data[unknown[0]]!r}: unknown key; known keys of "
                         f"{prefix.rstrip('.') or 'the config'}: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name], f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _check_type(f"{prefix}{f.name}", data[f.name], tp)
    return cls(**kwargs)


def from_dict(data: dict, rows: bool = True) -> RunConfig:
    """Composed (plain) config -> RunConfig; unknown keys and wrong types raise ValueError. `rows=False`: the rows
    come from elsewhere (the UI's form), so neither a manifest nor a prompt is required."""
    data = dict(data)
    data.pop("hydra", None)
    cfg = _build(RunConfig, data, "")
    validate(cfg, rows=rows)
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _choice(path, value, choices):
    if value not in choices:
        raise ValueError(f"{path}={value!r}: must be one of {', '.join(map(str, choices))}")


# -- value rules: each rule in one function, used for config keys (sample.*, model.*) and manifest columns alike ----
MAX_SEED = 2**63 - 1


def _finite(field: str, v) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{field}={v}: must be a finite number")


def _at_least(lo, note=""):
    def rule(field: str, v) -> None:
        _finite(field, v)
        if v < lo:
            raise ValueError(f"{field}={v}: must be >= {lo}{note}")
    return rule


def _range(lo, hi, note=""):
    def rule(field: str, v) -> None:
        _finite(field, v)
        if v < lo:
            raise ValueError(f"{field}={v}: must be >= {lo}")
        if v > hi:
            raise ValueError(f"{field}={v}: must be <= {hi}{note}")
    return rule


def _positive(field: str, v) -> None:
    _finite(field, v)
    if v <= 0:
        raise ValueError(f"{field}={v}: must be > 0")


def _seed(field: str, v) -> None:
    if not 0 <= v <= MAX_SEED:
        raise ValueError(f"{field}={v}: must be between 0 and 2**63-1")


VALUE_RULES = {
    "steps": _range(1, 1000, " (the models are trained on 1000 timesteps; more steps only repeat them)"),
    "shift": _positive,
    "guide_scale": _at_least(1.0, " (1.0 turns classifier-free guidance off)"),
    "guide_scale_high": _at_least(1.0, " (1.0 turns classifier-free guidance off)"),
    "frame_num": _at_least(1),
    "cfg_truncate_steps": _at_least(0),
    "cfg_truncate_high_noise_steps": _at_least(0),
    "seed": _seed,
    "solver": lambda field, v: _choice(field, v, SOLVERS),
    "fps": _range(1, 1000, " (frames per second of the mp4)"),
    "cfg_truncate_keep": lambda field, v: _choice(field, v, TRUNCATE_KEEP),
    "cache": lambda field, v: _choice(field, v, CACHE_METHODS),
    "cache_threshold": _at_least(0.0),
    "cache_max_skip_steps": _at_least(1),
    "cache_interval": _at_least(1),
    "cache_warmup_steps": _at_least(0),
}


def check_value(name: str, value, field: str | None = None) -> None:
    """The rule for one sampling setting (`name` as in the manifest columns); `field` is what the message names."""
    if value is not None:
        VALUE_RULES[name](field or name, value)


def validate(cfg: RunConfig, rows: bool = True) -> None:
    """Single-field and cross-field rules that need no model files and no world size (the parallel layout against
    the world size: distributed.layout.check_layout, called by the worker before any process group exists).
    `rows=False` skips the rules on where the rows come from (manifest / prompt / image): the UI makes its own."""
    from .models.registry import get_model
    spec = get_model(cfg.model.name)
    _choice("logger.kind", cfg.logger.kind, LOGGERS)
    _choice("logger.mode", cfg.logger.mode, ("offline", "online"))
    _choice("device", cfg.device, DEVICES)
    _choice("dtype", cfg.dtype, DTYPE_NAMES)
    _choice("t5_dtype", cfg.t5_dtype, DTYPE_NAMES)
    _choice("vae_dtype", cfg.vae_dtype, DTYPE_NAMES[1:])
    _choice("work.source", cfg.work.source, WORK_SOURCES)
    _choice("compile", cfg.compile, COMPILE_MODES)
    if cfg.sample.cache == "mag" and cfg.sample.cache_mag_ratios is None:
        raise ValueError("sample.cache='mag': MagCache needs per-expert magnitude ratios of this model: set "
                         "sample.cache_mag_ratios=<json> (make one with sample.cache_calibrate=true: the sidecar "
                         "records them)")
    if cfg.sample.cache_calibrate and cfg.sample.cache != "none":
        raise ValueError(f"sample.cache_calibrate=true: measures the uncached run; it needs sample.cache=none, not "
                         f"{cfg.sample.cache!r}")
    if cfg.sample.cfg_batch and cfg.parallel.cfg == 2:
        raise ValueError("sample.cfg_batch=true: with parallel.cfg=2 the two passes already run on two halves of the "
                         "replica; use one of them")
    if cfg.output.frames is not None:
        _choice("output.frames", cfg.output.frames, ("png",))
    if not 0 <= cfg.output.crf <= 51:
        raise ValueError(f"output.crf={cfg.output.crf}: must be between 0 and 51")
    for group in ("model", "sample"):
        for name in VALUE_RULES:
            if hasattr(getattr(cfg, group), name):
                check_value(name, getattr(getattr(cfg, group), name), f"{group}.{name}")
    for size in cfg.model.sizes:
        if not (isinstance(size, str) and re.fullmatch(r"[1-9][0-9]*\*[1-9][0-9]*", size)):
            raise ValueError(f"model.sizes: {size!r}: each official size must be W*H, e.g. 1280*704")
    if spec.is_moe != (cfg.model.boundary is not None):
        raise ValueError(f"model.boundary={cfg.model.boundary}: {spec.name} "
                         f"{'needs' if spec.is_moe else 'has no experts, so takes no'} boundary")
    if cfg.model.boundary is not None and not 0 < cfg.model.boundary < 1:
        raise ValueError(f"model.boundary={cfg.model.boundary}: must be between 0 and 1")
    if rows:
        _check_rows_source(cfg)
    _choice("ui.lang", cfg.ui.lang, UI_LANGS)
    if not 0 <= cfg.ui.port <= 65535:
        raise ValueError(f"ui.port={cfg.ui.port}: must be between 0 and 65535 (0 = a free port chosen by the OS)")
    if not cfg.ui.host.strip():
        raise ValueError(f"ui.host={cfg.ui.host!r}: must be an address or host name, e.g. 127.0.0.1")
    if cfg.ckpt_dir is None:
        raise ValueError("ckpt_dir=null: the checkpoint directory is required (ckpt_dir=/path/to/Wan2.x-...)")
    _choice("batch.on_change", cfg.batch.on_change, ON_CHANGE)
    if not cfg.batch.claim_timeout_s > 0:
        raise ValueError(f"batch.claim_timeout_s={cfg.batch.claim_timeout_s}: must be > 0 seconds")
    p = cfg.parallel
    for path, v in (("parallel.cfg", p.cfg), ("parallel.ulysses", p.ulysses), ("parallel.ring", p.ring)):
        if v < 1:
            raise ValueError(f"{path}={v}: must be >= 1")
    if p.cfg not in (1, 2):
        raise ValueError(f"parallel.cfg={p.cfg}: must be 1 or 2")
    if p.dp == 0 or p.dp < -1:
        raise ValueError(f"parallel.dp={p.dp}: must be >= 1, or -1 for whatever the world size leaves")
    _choice("parallel.backend", p.backend, ("auto", "nccl", "gloo"))
    if spec.num_heads % p.ulysses:
        raise ValueError(f"parallel.ulysses={p.ulysses}: must divide the head count of {spec.name} "
                         f"({spec.num_heads})")
    validate_ray(cfg.ray)


def validate_ray(r: RayConfig) -> None:
    """The `ray` group's own rules (launch/ray_run.py checks the gang against the parallel layout)."""
    if r.address not in ("local", "auto") and not r.address.startswith("ray://") \
            and not (":" in r.address and r.address.rsplit(":", 1)[1].isdigit()):
        raise ValueError(f"ray.address={r.address!r}: must be local, auto, ray://HOST:PORT or HOST:PORT")
    for path, v, lo in (("ray.gangs", r.gangs, 1), ("ray.max_gang_restarts", r.max_gang_restarts, 0),
                        ("ray.max_item_attempts", r.max_item_attempts, 1)):
        if v < lo:
            raise ValueError(f"{path}={v}: must be >= {lo}")
    if r.gang_size is not None and r.gang_size < 1:
        raise ValueError(f"ray.gang_size={r.gang_size}: must be >= 1 (or null for cfg x ulysses x ring)")
    if not (math.isfinite(r.gpus_per_rank) and r.gpus_per_rank >= 0):
        raise ValueError(f"ray.gpus_per_rank={r.gpus_per_rank}: must be >= 0")
    if not (math.isfinite(r.cpus_per_rank) and r.cpus_per_rank > 0):
        raise ValueError(f"ray.cpus_per_rank={r.cpus_per_rank}: must be > 0 (a Ray bundle needs a resource)")
    if not r.placement_timeout_s > 0:
        raise ValueError(f"ray.placement_timeout_s={r.placement_timeout_s}: must be > 0 seconds")


def _check_rows_source(cfg: RunConfig) -> None:
    if cfg.manifest is None and cfg.prompt is None:
        raise ValueError("manifest=null, prompt=null: give a manifest file (manifest=prompts.csv) or prompt=\"...\"")
    if cfg.manifest is not None and cfg.prompt is not None:
        raise ValueError(f"manifest={cfg.manifest!r}, prompt={cfg.prompt!r}: give one of manifest or prompt, not both")
    if cfg.image is not None and cfg.prompt is None:
        raise ValueError(f"image={cfg.image!r}: only with prompt=...; manifests give images per row (column image)")


def config_digest(cfg) -> str:
    """sha256 of the resolved config: every rank of a run must have composed the same one."""
    import hashlib
    import json
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()).hexdigest()


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def _schema_keys(cls=None, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of the schema -> its dataclass field type."""
    out = {}
    for f in dataclasses.fields(cls or RunConfig):
        tp = typing.get_type_hints(cls or RunConfig)[f.name]
        out[prefix + f.name] = tp
        if dataclasses.is_dataclass(tp):
            out.update(_schema_keys(tp, f"{prefix}{f.name}."))
    return out


def check_overrides(overrides: list[str], config_dir: str | Path | None = None) -> None:
    """Hydra command-line overrides checked against the schema and the config groups before Hydra sees them, so a
    typo ends as one ValueError naming the key and the closest valid keys (not Hydra's "use +key" hint)."""
    import difflib

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    conf = Path(config_dir or CONF_DIR)
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise ValueError(f"command line: cannot parse the overrides ({str(e).splitlines()[0]}); write key=value, "
                         "e.g. sample.steps=20 or model=t2v-A14B") from None
    keys = _schema_keys()
    groups = {d.name: sorted(f.stem for f in d.glob("*.yaml")) for d in conf.iterdir() if d.is_dir()}
    for o in parsed:
        key = o.key_or_group
        if key.startswith("hydra") or o.is_delete() or o.is_add():   # +key: the schema check names it later
            continue
        if key in groups and "." not in key:
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
            for v in values:
                if str(v) not in groups[key]:
                    near = difflib.get_close_matches(str(v), groups[key], n=3)
                    raise ValueError(f"{key}={v!r}: unknown {key}; "
                                     + (f"did you mean {', '.join(near)}? " if near else "")
                                     + f"choose one of {', '.join(groups[key])}")
            continue
        if key not in keys:
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            near = difflib.get_close_matches(key, list(keys), n=3, cutoff=0.6)
            known = sorted(k for k in keys if k.rsplit(".", 1)[0] == parent and "." in k) if parent in keys \
                else sorted(k for k in keys if "." not in k)
            raise ValueError(f"{key}: unknown config key" + (f"; did you mean {', '.join(near)}?" if near else "")
                             + f" (keys{' of ' + parent if parent in keys else ''}: {', '.join(known)})")


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (group `schema`), for `--cfg job` tooling and docs."""
    from hydra.core.config_store import ConfigStore
    cs = ConfigStore.instance()
    cs.store(group="schema", name="run", node=RunConfig)


def compose(overrides: list[str], config_dir: str | Path | None = None) -> RunConfig:
    """Compose conf/config.yaml with Hydra's Compose API (tests, tools); Hydra errors become ValueError."""
    return from_dict(compose_data(overrides, config_dir))


def compose_data(overrides: list[str], config_dir: str | Path | None = None) -> dict:
    """The composed config as a plain dict (overrides checked first), before the schema and its rules."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    config_dir = Path(config_dir or CONF_DIR).resolve()
    check_overrides(overrides, config_dir)
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
            dc = hydra_compose("config", overrides=list(overrides))
    except HydraException as e:
        raise ValueError(f"config overrides {overrides}: {e}") from None
    return OmegaConf.to_container(dc, resolve=True)

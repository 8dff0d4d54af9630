"""Checkpoint validation before any tensor is loaded: every file a model needs, named with what is wrong.

`validate_checkpoint(dir, spec)` collects ALL problems (missing files, missing index, truncated or corrupt
safetensors, wrong/missing/unexpected tensor names and shapes, config mismatches) for the native Wan layout
(wan_facts.md §1.3) or a diffusers `*-Diffusers` repo; `check(dir, spec)` raises one `CheckpointError` listing
them one per line. Safetensors are checked from their headers only; the native `.pth` files are opened with
`torch.load(mmap=True)`, which maps the file without reading tensor data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from wan_dist.models.checkpoint_files import Collector, FileEntry, Problem, collect_safetensors, compare_tensors
from wan_dist.models.dtypes import code_of
from wan_dist.models.registry import DIT_WEIGHTS, MODELS, T5_FILE, TOKENIZER_DIR, VAE_FILES, ModelSpec, get_model

__all__ = ["CheckpointError", "CheckpointReport", "Problem", "FileEntry", "check", "detect_format",
           "validate_checkpoint", "looks_like"]

DIT_KEY_FIELDS = ("model_type", "dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim")


class CheckpointError(ValueError):
    """The checkpoint cannot be loaded; the message lists every problem, one per line."""

    def __init__(self, report: "CheckpointReport"):
        self.report = report
        super().__init__(report.format_problems())


@dataclass
class CheckpointReport:
    ckpt_dir: Path
    model: str
    ckpt_format: str                              # "native" | "diffusers"
    files: dict[str, list[FileEntry]] = field(default_factory=dict)  # component -> files the loader will read
    problems: list[Problem] = field(default_factory=list)
    hint: str | None = None                        # "this directory looks like a <name> checkpoint"

    @property
    def ok(self) -> bool:
        return not self.problems

    def format_problems(self) -> str:
        n = len(self.problems)
        lines = [f"checkpoint {self.ckpt_dir} cannot be loaded as model {self.model} ({self.ckpt_format} format): "
                 f"{n} problem{'s' if n != 1 else ''}"]
        lines += [f"  {p}" for p in self.problems]
        if self.hint:
            lines.append(self.hint)
        return "\n".join(lines)

    def identity(self, sample_bytes: int = 1 << 16) -> str:
        """A digest of what the loader will read, cheap for a 60 GB checkpoint: per file its path, size and first
        and last `sample_bytes` (a safetensors header with every tensor's name, dtype, shape and offsets, the pickle
        index of a .pth, the configs and tokenizer whole). A copy of the same checkpoint has the same identity
        (no mtimes); a retrained or re-converted one does not."""
        import hashlib
        h = hashlib.sha256(f"{self.model}:{self.ckpt_format}".encode())
        for comp in sorted(self.files):
            for e in sorted(self.files[comp], key=lambda e: e.path):
                path = self.ckpt_dir / e.path
                size = path.stat().st_size
                h.update(f"\n{comp}:{e.path}:{size}:".encode())
                with open(path, "rb") as fh:
                    h.update(fh.read(sample_bytes))
                    if size > 2 * sample_bytes:
                        fh.seek(size - sample_bytes)
                        h.update(fh.read(sample_bytes))
        return "sha256:" + h.hexdigest()[:32]

    def format(self) -> str:
        lines = [f"checkpoint: {self.ckpt_dir}", f"model: {self.model}", f"format: {self.ckpt_format}", "files:"]
        for comp, entries in self.files.items():
            lines += [f"  {comp:<24} {e.dtype:<10} {e.path}" for e in entries]
        lines.append("OK: loadable" if self.ok else self.format_problems())
        return "\n".join(lines)


def detect_format(ckpt_dir) -> str:
    """"diffusers" when `model_index.json` is present, else "native". A missing directory is a ValueError."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise ValueError(f"ckpt_dir={str(d)!r}: not an existing directory; it must hold a Wan checkpoint "
                         f"(native layout or a diffusers repo with model_index.json)")
    return "diffusers" if (d / "model_index.json").is_file() else "native"


def _spec(spec) -> ModelSpec:
    return get_model(spec) if isinstance(spec, str) else spec


def validate_checkpoint(ckpt_dir, spec) -> CheckpointReport:
    spec = _spec(spec)
    root = Path(ckpt_dir)
    ckpt_format = detect_format(root)
    col = Collector(root, spec.name)
    if ckpt_format == "diffusers":
        from wan_dist.models.checkpoint_diffusers import validate_diffusers
        validate_diffusers(col, spec)
    else:
        _validate_native(col, spec)
    report = CheckpointReport(root, spec.name, ckpt_format, col.files, col.problems)
    if not report.ok:
        matches = looks_like(root) if ckpt_format == "native" else []
        others = [n for n in matches if n != spec.name]
        if others and spec.name not in matches:
            report.hint = f"this directory looks like a {others[0]} checkpoint"
    return report


def check(ckpt_dir, spec) -> CheckpointReport:
    report = validate_checkpoint(ckpt_dir, spec)
    if not report.ok:
        raise CheckpointError(report)
    return report


# -- native layout ---------------------------------------------------------------------------------------------
def _validate_native(col: Collector, spec: ModelSpec) -> None:
    from wan_dist.models import convert
    for sub in spec.dit_dirs():
        _check_dit(col, spec, sub, convert)
    _check_pth(col, col.root / T5_FILE, "T5 encoder", "t5", "t5", spec.t5, convert)
    vae = col.root / spec.vae_file
    other = [f for v, f in VAE_FILES.items() if v != spec.vae_version and (col.root / f).is_file()]
    if not vae.is_file() and other:
        col.add(vae, "VAE", f"missing; found {other[0]} instead, but {spec.name} needs the Wan{spec.vae_version} "
                f"VAE ({spec.vae_file})")
    else:
        _check_pth(col, vae, "VAE", "vae", "vae" + spec.vae_version, spec.vae, convert)
    _check_tokenizer(col, spec)


def _check_dit(col: Collector, spec: ModelSpec, sub: str, convert) -> None:
    folder = col.root / sub if sub else col.root
    component = f"dit/{sub}" if sub else "dit"
    cfg_path = folder / "config.json"
    if sub and not folder.is_dir():
        col.add(folder, "DiT expert directory", f"missing directory {sub}/ ({spec.name} is a mixture of experts: "
                f"it needs {' and '.join(d + '/' for d in spec.dit_dirs())}, each with config.json and weights"
                + ("; the root holds a single DiT (config.json) instead" if (col.root / "config.json").is_file()
                   else "") + ")")
        return
    native_cfg = dict(spec.dit)
    if not cfg_path.is_file():
        col.add(cfg_path, "DiT config", "missing")
    else:
        try:
            native = json.loads(cfg_path.read_text())
            if not isinstance(native, dict):
                raise ValueError("not a JSON object")
        except (ValueError, OSError) as e:
            col.add(cfg_path, "DiT config", f"corrupt ({e})")
        else:
            col.file(component, cfg_path, "DiT config")
            wrong = [f"{k}={native.get(k, '<absent>')!r} but the model needs {spec.dit[k]!r}"
                     for k in DIT_KEY_FIELDS if native.get(k) != spec.dit[k]]
            if wrong:
                col.add(cfg_path, "DiT config", "; ".join(wrong))
            # the file's own structure decides which tensors its weights must hold (text_dim etc. from the spec)
            native_cfg.update(native)
    found = collect_safetensors(col, folder, DIT_WEIGHTS, "DiT weights", component, "DiT shard", "DiT index")
    if found is None:
        return
    index = folder / f"{DIT_WEIGHTS}.safetensors.index.json"
    where = index if index.is_file() else folder / f"{DIT_WEIGHTS}.safetensors"
    try:
        expected = convert.native_spec("dit", native_cfg)
    except Exception as e:  # a config.json so wrong that no module can be built from it
        col.add(cfg_path, "DiT config", f"cannot derive the expected tensors ({type(e).__name__}: {e})")
        return
    compare_tensors(col, where, "DiT weights", found, expected)


def _check_pth(col: Collector, path: Path, what: str, component: str, conv: str, native_cfg: dict, convert) -> None:
    if not path.is_file():
        col.add(path, what, "missing")
        return
    import torch
    try:
        sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ValueError("not a flat state dict of tensors")
    except Exception as e:  # torch raises RuntimeError/pickle errors/ValueError for damaged zips
        col.add(path, what, f"corrupt or truncated (torch.load failed: {type(e).__name__}: "
                f"{str(e).split('. ')[0][:200]})")
        return
    rel = col.rel(path)
    found = {k: (tuple(v.shape), code_of(v.dtype), rel) for k, v in sd.items()}
    col.file(component, path, what, "+".join(sorted({v[1] for v in found.values()})) or "-")
    compare_tensors(col, path, what, found, convert.native_spec(conv, native_cfg))
    del sd


def _check_tokenizer(col: Collector, spec: ModelSpec) -> None:
    d = col.root / TOKENIZER_DIR
    if not d.is_dir():
        col.add(d, "tokenizer", f"missing directory {TOKENIZER_DIR}/ (tokenizer.json or spiece.model)")
        return
    tok_json, spiece, tok_cfg = d / "tokenizer.json", d / "spiece.model", d / "tokenizer_config.json"
    if tok_json.is_file():
        try:
            vocab = json.loads(tok_json.read_text(encoding="utf-8")).get("model", {}).get("vocab")
        except (ValueError, OSError, AttributeError) as e:
            col.add(tok_json, "tokenizer", f"corrupt ({type(e).__name__}: {e})")
            return
        if isinstance(vocab, list) and len(vocab) > spec.t5["vocab_size"]:
            col.add(tok_json, "tokenizer", f"vocabulary of {len(vocab)} pieces exceeds the T5 embedding's "
                    f"vocab_size {spec.t5['vocab_size']}")
        if not tok_cfg.is_file() and not spiece.is_file():
            col.add(tok_cfg, "tokenizer", "missing (tokenizer.json alone does not say the tokenizer class)")
            return
        col.file("tokenizer", tok_json, "tokenizer")
    elif spiece.is_file():
        col.file("tokenizer", spiece, "tokenizer")
    else:
        col.add(d, "tokenizer", "holds neither tokenizer.json nor spiece.model")


# -- "looks like" hint -----------------------------------------------------------------------------------------
def looks_like(ckpt_dir) -> list[str]:
    """Registry models whose DiT config(s) and VAE file match what is in `ckpt_dir` (native layout only)."""
    root = Path(ckpt_dir)
    names = []
    for name, spec in MODELS.items():
        if not (root / spec.vae_file).is_file():
            continue
        ok = True
        for sub in spec.dit_dirs():
            try:
                native = json.loads(((root / sub) / "config.json").read_text())
                ok = ok and all(native.get(k) == spec.dit[k] for k in DIT_KEY_FIELDS)
            except (OSError, ValueError, AttributeError):
                ok = False
        if ok:
            names.append(name)
    return names

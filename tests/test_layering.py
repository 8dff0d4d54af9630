"""The package's layers import downward only (README "Layout of the code", docs/ARCHITECTURE.md).

Walks every import (top-level and inside functions) with the AST. A layer may import its own layer and the layers
listed below it; models / pipeline / observability / distributed never import the batch layer, the orchestrator, the
entry points or launch/.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "wan_dist"

# layer -> the wan_dist modules/packages it may import (besides itself)
ALLOWED = {
    "__init__": set(),
    "exit_codes": set(),
    "files": set(),
    "outcome": {"process"},
    "process": set(),
    "models": {"files"},
    "config": {"models"},
    "config_docs": {"config"},
    "observability": {"files", "models"},
    "pipeline": {"models", "observability", "config"},
    "distributed": {"models", "pipeline", "observability"},
    "batch": {"files", "models", "config", "observability", "pipeline", "distributed"},
    "analysis": {"files", "models", "config", "observability", "pipeline", "batch"},
    "worker": {"files", "models", "config", "observability", "pipeline", "distributed", "batch", "exit_codes"},
    "entry": {"config", "outcome", "exit_codes", "worker", "batch", "process"},
    "gangs": {"files", "models", "config", "observability", "pipeline", "distributed", "batch", "worker",
              "exit_codes", "process"},
    "supervise": {"outcome", "exit_codes"},
    "slurm": {"supervise", "outcome", "exit_codes", "config", "batch"},
    "download": {"models", "observability", "files", "exit_codes"},
    "cli": {"models", "observability", "supervise", "config", "batch", "exit_codes", "download", "analysis", "slurm",
            "process"},
    # the Gradio app (launch/app.py): a launcher over the worker core
    "ui": {"config", "models", "observability", "pipeline", "distributed", "batch", "worker", "files", "outcome",
           "exit_codes", "process"},
}
NEVER_BELOW_BATCH = ("wan_dist.batch", "wan_dist.worker", "wan_dist.entry", "wan_dist.cli", "wan_dist.supervise",
                     "launch")


def layer_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path: Path) -> list[tuple[int, str]]:
    mod = ".".join(path.relative_to(REPO).with_suffix("").parts)
    pkg = mod.split(".")[:-1] if path.name != "__init__.py" else mod.split(".")
    out = []
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            out += [(n.lineno, a.name) for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = pkg[: len(pkg) - (n.level - 1)] if n.level > 1 else pkg
                name = ".".join(base + ([n.module] if n.module else []))
                if not n.module:   # from . import x, y
                    out += [(n.lineno, f"{name}.{a.name}") for a in n.names]
                    continue
            else:
                name = n.module or ""
            out.append((n.lineno, name))
    return out


def test_layers_import_downward_only():
    bad = []
    for f in sorted(PKG.rglob("*.py")):
        me = layer_of(f)
        assert me in ALLOWED, f"{f}: a new top-level module or package; give it a layer in ALLOWED"
        for line, name in imports(f):
            if name == "launch" or name.startswith("launch."):
                bad.append(f"{f.relative_to(REPO)}:{line} imports {name}")
            if not name.startswith("wan_dist"):
                continue
            parts = name.split(".")
            target = parts[1] if len(parts) > 1 else ""
            if target and target != me and target not in ALLOWED[me]:
                bad.append(f"{f.relative_to(REPO)}:{line} ({me}) imports {name}")
    assert not bad, "imports that run upward:\n" + "\n".join(bad)


def test_lower_layers_never_reach_the_batch_layer_or_launchers():
    bad = [f"{f.relative_to(REPO)}:{line} -> {name}"
           for d in ("models", "pipeline", "observability", "distributed") for f in (PKG / d).rglob("*.py")
           for line, name in imports(f) if name.startswith(NEVER_BELOW_BATCH)]
    assert not bad, bad


def test_the_walker_sees_function_level_and_relative_imports(tmp_path):
    """The test itself can fail: a planted upward import inside a function is found."""
    f = PKG / "distributed" / "_probe_tmp.py"
    f.write_text("def x():\n    from ..batch import runner\n    return runner\n")
    try:
        assert (2, "wan_dist.batch") in imports(f) or (2, "wan_dist.batch.runner") in [(a, b) for a, b in imports(f)]
        names = [n for _, n in imports(f)]
        assert any(n.startswith("wan_dist.batch") for n in names), names
    finally:
        f.unlink()


def test_only_mesh_creates_process_groups():
    creators = ("new_group", "init_device_mesh", "init_process_group(")
    for f in PKG.rglob("*.py"):
        text = f.read_text()
        for c in creators:
            if f"dist.{c}" in text or f" {c}" in text.replace("def init_process_group(", ""):
                assert f.name in ("mesh.py",), f"{f.relative_to(REPO)} calls {c}"

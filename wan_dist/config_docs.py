"""docs/CONFIG.md, generated from the schema (wan_dist/config.py) and the defaults in conf/: every key, its default
and its meaning. `python -m wan_dist.config_docs > docs/CONFIG.md` regenerates it; tests/test_docs.py fails when the
committed file differs from what the schema says now (a key added without documentation, a changed default).
"""
from __future__ import annotations

import dataclasses
import typing

from . import config as config_mod

HEADER = """# Configuration keys

Generated from the schema (`wan_dist/config.py`) and the defaults in `conf/` by
`python -m wan_dist.config_docs > docs/CONFIG.md`; a test fails when this file and the schema disagree. Set any key
on the command line (`sample.steps=20`), in a manifest column where one exists (README "Running"), or in your own
YAML under `conf/`. `model.*` defaults are per model (`conf/model/<name>.yaml`); the column shows the default model's.
"""


def _fmt(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def rows(cls=None, values=None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, meaning) for every leaf key of the schema, in schema order."""
    cls = cls or config_mod.RunConfig
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        value = getattr(values, f.name) if values is not None else None
        if dataclasses.is_dataclass(hints[f.name]):
            out.append((key, "(group)", f.metadata.get("doc", "")))
            out += rows(hints[f.name], value, key + ".")
        else:
            out.append((key, _fmt(value), f.metadata.get("doc", "")))
    return out


def markdown() -> str:
    defaults = config_mod.compose(["ckpt_dir=CKPT", "prompt=PROMPT"])
    lines = [HEADER, "| key | default | meaning |", "|---|---|---|"]
    for key, default, doc in rows(values=defaults):
        if default == "(group)":
            lines.append(f"| **`{key}`** | | {doc} |")
            continue
        if key in ("ckpt_dir", "prompt"):
            default = "null"
        lines.append(f"| `{key}` | `{default}` | {doc.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")

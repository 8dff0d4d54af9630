"""Helpers for the batch-integrity tests (issue 12): run the real entry in process, snapshot a directory tree."""
from __future__ import annotations

import json
import os
from pathlib import Path

from wan_dist.batch.ledger import Ledger
from wan_dist.config import compose
from wan_dist.worker import main as run_entry

BASE = ["sample.steps=2", "sample.frame_num=5", "sample.size=32*32", "batch.progress=false", "device=cpu"]


def overrides(ckpt, out, manifest=None, *extra, model="tiny-t2v") -> list[str]:
    o = [f"model={model}", f"ckpt_dir={ckpt}", f"out_dir={out}", *BASE]
    if manifest is not None:
        o.append(f"manifest={manifest}")
    return o + list(extra)


def run(over: list[str], capsys, monkeypatch=None) -> tuple[int | None, str, bool]:
    """(exit code or None when the config layer refused it, stderr / message, whether a model was loaded)."""
    import wan_dist.worker as worker
    try:
        cfg = compose(over)
    except ValueError as e:
        return None, str(e), False
    loaded = []
    orig = worker.load_models
    worker.load_models = lambda *a, **k: loaded.append(1) or orig(*a, **k)
    capsys.readouterr()
    try:
        rc = run_entry(cfg)
    finally:
        worker.load_models = orig
    return int(rc), capsys.readouterr().err, bool(loaded)


def snapshot(root: Path) -> dict:
    """path -> (kind, size, mtime_ns, link target) for everything under root, links not followed."""
    out = {}
    if not os.path.lexists(root):
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            link = os.readlink(p) if os.path.islink(p) else None
            out[str(p.relative_to(root))] = (st.st_mode >> 12, st.st_size, st.st_mtime_ns, link)
    return out


def ok_records(out: Path) -> list[dict]:
    return [r for r in Ledger(out, "reader").records() if r["status"] == "ok"]


def sidecar(out: Path, item_id: str) -> dict:
    return json.loads((out / "videos" / f"{item_id}.json").read_text())

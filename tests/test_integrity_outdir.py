"""Batch integrity (issue 12), out_dir classes: out_dir problems (class 4) end as exit 2 (not a directory) or 74
(cannot write) with one line and nothing left behind; nothing is ever written through a symlink inside out_dir
(class 5). Read-only and full filesystems are real: a private mount namespace (unshare) with a read-only or full
tmpfs, so nothing outside the test's own directory changes."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from integrity_util import overrides, run, snapshot

from wan_dist.batch.outputs import OutputDir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def manifest(tmp_path) -> Path:
    m = tmp_path / "m.csv"
    m.write_text("id,prompt\na,a cat\nb,a dog\n")
    return m


def _outside(tmp_path: Path) -> tuple[Path, Path]:
    d = tmp_path / "outside"
    d.mkdir()
    f = d / "precious.txt"
    f.write_text("do not touch")
    return d, f


def _used_out_dir(out: Path) -> None:
    """What a finished run leaves (enough for the checks: the entries, not real videos)."""
    for d in ("videos", "ledger", "claims", ".partial"):
        (out / d).mkdir(parents=True)
    (out / "results.jsonl").write_text("")
    (out / "config.yaml").write_text("config: {}\n")


# -- 5. symlinks inside out_dir: refused before anything is written -------------------------------------------------
LINKS = [
    ("results.jsonl", "file", r"results\.jsonl is a symlink"),
    ("config.yaml", "file", r"config\.yaml is a symlink"),
    ("videos", "dir", r"videos is a symlink"),
    ("ledger", "dir", r"ledger is a symlink"),
    (".partial", "dir", r"\.partial is a symlink"),
    ("claims", "dir", r"claims is a symlink"),
    ("videos/a.json", "file", r"videos/a\.json is a symlink"),
    ("ledger/host-1-abcdef.jsonl", "file", r"ledger/host-1-abcdef\.jsonl is a symlink"),
    ("config.history", "dir", r"config\.history is a symlink"),
]


@pytest.mark.parametrize("name,kind,expected", LINKS, ids=[x[0] for x in LINKS])
def test_a_symlink_inside_out_dir_is_refused_and_never_followed(name, kind, expected, tmp_path, tiny_ckpt, manifest,
                                                                capsys):
    out = tmp_path / "out"
    _used_out_dir(out)
    outside_dir, outside_file = _outside(tmp_path)
    target = outside_file if kind == "file" else outside_dir
    link = out / name
    if link.is_dir():
        shutil.rmtree(link)
    else:
        link.unlink(missing_ok=True)
    link.symlink_to(target)
    before, before_outside = snapshot(out), snapshot(outside_dir)
    rc, err, loaded = run(overrides(tiny_ckpt("tiny-t2v"), out, manifest), capsys)
    assert rc == 2, err
    assert re.search(expected, err) and "never through a link" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not loaded
    assert snapshot(out) == before and snapshot(outside_dir) == before_outside
    assert outside_file.read_text() == "do not touch"


def test_out_dir_itself_may_be_a_symlink(tmp_path, tiny_ckpt, manifest, capsys):
    real = tmp_path / "real-out"
    real.mkdir()
    (tmp_path / "out").symlink_to(real)
    rc, err, _ = run(overrides(tiny_ckpt("tiny-t2v"), tmp_path / "out", manifest, "sample.steps=1"), capsys)
    assert rc == 0, err
    assert (real / "videos" / "a.mp4").is_file() and (real / "videos" / "b.json").is_file()


def test_writes_replace_a_link_planted_after_the_check(tmp_path):
    """Defence in depth: a link planted while the run goes is replaced by the atomic rename, never written through,
    and never taken for a finished output."""
    out = OutputDir(tmp_path / "out")
    out.prepare({"config": {}})
    _, outside_file = _outside(tmp_path)
    for name in ("videos/x.mp4", "videos/x.json", "config.yaml"):
        (out.root / name).unlink(missing_ok=True)
        (out.root / name).symlink_to(outside_file)
    assert not out.is_complete("x", {"status": "ok"}) and out.read_sidecar("x") is None
    out.write_video("x", np.zeros((5, 32, 32, 3), np.uint8), 16, lossless=False, crf=18)
    out.write_sidecar("x", {"id": "x"})
    out.write_config({"config": {"again": True}})
    for name in ("videos/x.mp4", "videos/x.json", "config.yaml"):
        assert not (out.root / name).is_symlink()
    assert outside_file.read_text() == "do not touch"


# -- 4. out_dir is not a directory ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,expected", [
    ("file", r"out_dir='[^']*out': exists and is not a directory"),
    ("below-a-file", r"out_dir='[^']*out/sub': a component of the path is a file, not a directory"),
    ("videos-is-a-file", r"out_dir='[^']*out': videos is not a directory"),
    ("results-is-a-directory", r"out_dir='[^']*out': results\.jsonl is not a regular file"),
])
def test_out_dir_not_a_directory_exit_2(shape, expected, tmp_path, tiny_ckpt, manifest, capsys):
    out = tmp_path / "out"
    target = out
    if shape in ("file", "below-a-file"):
        out.write_text("a file, not a directory")
        target = out / "sub" if shape == "below-a-file" else out
    else:
        out.mkdir()
        (out / "videos").write_text("x") if shape == "videos-is-a-file" else (out / "results.jsonl").mkdir()
    before = snapshot(tmp_path)
    rc, err, loaded = run(overrides(tiny_ckpt("tiny-t2v"), target, manifest), capsys)
    assert rc == 2 and re.search(expected, err) and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and not loaded
    assert snapshot(tmp_path) == before


# -- 4. out_dir cannot be written: a real read-only and a real full filesystem ----------------------------------------
DRIVER = textwrap.dedent("""
    import json, os, sys
    from wan_dist.config import compose
    from wan_dist.worker import main
    ckpt, manifest = sys.argv[1], sys.argv[2]
    cases = json.loads(sys.argv[3])
    base = ["sample.steps=2", "sample.frame_num=5", "sample.size=32*32", "batch.progress=false", "device=cpu"]
    for name, out in cases:
        cfg = compose([f"ckpt_dir={ckpt}", f"manifest={manifest}", f"out_dir={out}", *base])
        r, w = os.pipe()
        saved = os.dup(2)
        os.dup2(w, 2)
        try:
            rc = int(main(cfg))
        finally:
            os.dup2(saved, 2)
            os.close(w)
        err = os.read(r, 1 << 20).decode()
        root = os.path.dirname(out) if name != "full-root" else out
        print(json.dumps({"name": name, "rc": rc, "err": err, "left": sorted(os.listdir(root))}), flush=True)
""")


def _private_mounts_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a private mount namespace (CI runs as root)"
    if shutil.which("unshare") is None:
        return "util-linux unshare is not installed"
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True)
    return None if p.returncode == 0 else f"unshare --mount failed: {p.stderr.strip()}"


@pytest.mark.slow
def test_read_only_or_full_out_dir_exit_74_and_nothing_left(tmp_path, tiny_ckpt, manifest):
    why = _private_mounts_available()
    if why:
        pytest.skip(why)
    for d in ("ro", "roparent", "full", "fullroot"):
        (tmp_path / d).mkdir()
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    cases = [("read-only", str(tmp_path / "ro" / "out")),            # exists, on a read-only filesystem
             ("read-only-parent", str(tmp_path / "roparent" / "new")),  # missing, its parent read-only
             ("full", str(tmp_path / "full" / "out")),              # missing, the filesystem is full
             ("full-root", str(tmp_path / "fullroot"))]             # out_dir is the full filesystem itself
    t = tmp_path
    shell = (f"set -e; mount -t tmpfs -o size=1m tmpfs {t}/ro; mkdir {t}/ro/out; mount -o remount,ro {t}/ro; "
             f"mount -t tmpfs -o size=1m,ro tmpfs {t}/roparent; "
             f"for d in full fullroot; do mount -t tmpfs -o size=64k tmpfs {t}/$d; "
             f"dd if=/dev/zero of={t}/$d/filler bs=4k 2>/dev/null || true; done; "
             f"exec {sys.executable} {script} {tiny_ckpt('tiny-t2v')} {manifest} '{json.dumps(cases)}'")
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell], cwd=REPO,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    results = {r["name"]: r for r in map(json.loads, p.stdout.splitlines())}
    assert set(results) == {c[0] for c in cases}, p.stdout
    expect = {"read-only": ("Read-only file system (EROFS)", ["out"]),
              "read-only-parent": ("Read-only file system (EROFS)", []),
              "full": ("No space left on device (ENOSPC)", ["filler"]),
              "full-root": ("No space left on device (ENOSPC)", ["filler"])}
    for name, (reason, left) in expect.items():
        r = results[name]
        assert r["rc"] == 74, r
        lines = [x for x in r["err"].splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and reason in lines[0] and "nothing was written" in lines[0], r["err"]
        assert "Traceback" not in r["err"]
        assert r["left"] == left, r                                  # nothing left behind

"""Batch integrity (issue 12), class 7: runs on one out_dir share the work through the claims and never make an id
twice: a second run started while the first holds claims, a run after a SIGKILLed predecessor (its claim left on
this host), two runs with different manifests, and two runs with different settings (never a duplicate, never a
silent skip). One run is a real `launch/run.py` process, the other runs in this process at the same time."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from integrity_util import BASE, overrides, run

from wan_dist.batch.ledger import Ledger
from wan_dist.batch.outputs import OutputDir

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
FAST = ["sample.steps=1"]


def manifest(path: Path, ids) -> Path:
    path.write_text("id,prompt\n" + "".join(f"{i},prompt number {i}\n" for i in ids))
    return path


def start(ckpt, m, out, *extra, env=None) -> subprocess.Popen:
    args = [sys.executable, "launch/run.py", "model=tiny-t2v", f"ckpt_dir={ckpt}", f"manifest={m}", f"out_dir={out}",
            *BASE, *FAST, *extra]
    return subprocess.Popen(args, cwd=REPO, env={**ENV, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for_claim(out: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (out / "claims").is_dir() and any((out / "claims").glob("*.claim")):
            return
        time.sleep(0.05)
    raise AssertionError(f"the first run never claimed an id (exit {proc.poll()}): {proc.stdout.read()[-3000:]}")


def ok_counts(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in Ledger(out, "reader").records():
        if r["status"] == "ok":
            counts[r["id"]] = counts.get(r["id"], 0) + 1
    return counts


def assert_each_once(out: Path, ids) -> None:
    assert ok_counts(out) == {i: 1 for i in ids}
    o = OutputDir(out)
    latest = o.ledger.latest()
    assert all(o.is_complete(i, latest[i]) for i in ids)
    assert not list((out / "claims").glob("*.claim"))
    assert not [p for p in (out / ".partial").rglob("*") if p.is_file()]


@pytest.mark.slow
def test_a_second_run_started_while_the_first_holds_claims_shares_the_work(tmp_path, tiny_ckpt, capsys):
    ids = [f"s{i}" for i in range(4)]
    m, out = manifest(tmp_path / "m.csv", ids), tmp_path / "out"
    first = start(tiny_ckpt("tiny-t2v"), m, out)
    wait_for_claim(out, first)
    rc, err, _ = run(overrides(tiny_ckpt("tiny-t2v"), out, m, *FAST), capsys)
    log = first.communicate(timeout=400)[0]
    assert (first.returncode, rc) == (0, 0), log[-3000:] + err[-3000:]
    assert_each_once(out, ids)
    writers = {r["writer"] for r in Ledger(out, "r").records()}
    assert 1 <= len(writers) <= 2


@pytest.mark.slow
def test_a_run_after_a_sigkilled_predecessor_takes_its_claim_over(tmp_path, tiny_ckpt, capsys):
    ids = ["k0", "k1", "k2"]
    m, out = manifest(tmp_path / "m.csv", ids), tmp_path / "out"
    dead = start(tiny_ckpt("tiny-t2v"), m, out, env={"WAN_DIST_TEST_SIGKILL_AT": "k1:after_mp4"})
    dead.communicate(timeout=400)
    assert dead.returncode == -9
    assert (out / "claims" / "k1.claim").exists() and (out / "videos" / "k1.mp4").exists()   # what it left
    assert not (out / "videos" / "k1.json").exists()
    rc, err, _ = run(overrides(tiny_ckpt("tiny-t2v"), out, m, *FAST), capsys)
    assert rc == 0, err
    assert "2 done, 1 skipped (already complete), 0 failed (1 redone" in err, err
    assert "claim of k1 taken over" in err
    assert_each_once(out, ids)


@pytest.mark.slow
def test_two_runs_with_different_manifests_share_the_common_ids(tmp_path, tiny_ckpt, capsys):
    m1 = manifest(tmp_path / "m1.csv", ["a", "b", "c", "d"])
    m2 = manifest(tmp_path / "m2.csv", ["c", "d", "e", "f"])
    out = tmp_path / "out"
    first = start(tiny_ckpt("tiny-t2v"), m1, out)
    wait_for_claim(out, first)
    rc, err, _ = run(overrides(tiny_ckpt("tiny-t2v"), out, m2, *FAST), capsys)
    log = first.communicate(timeout=400)[0]
    assert (first.returncode, rc) == (0, 0), log[-3000:] + err[-3000:]
    assert_each_once(out, "abcdef")


@pytest.mark.slow
def test_two_runs_with_different_settings_never_duplicate_nor_skip_silently(tmp_path, tiny_ckpt, capsys):
    ids = [f"d{i}" for i in range(5)]
    m, out = manifest(tmp_path / "m.csv", ids), tmp_path / "out"
    first = start(tiny_ckpt("tiny-t2v"), m, out)                              # steps=1
    wait_for_claim(out, first)
    rc, err, _ = run(overrides(tiny_ckpt("tiny-t2v"), out, m, "sample.steps=2"), capsys)
    log = first.communicate(timeout=400)[0]
    codes = (first.returncode, rc)
    assert set(codes) <= {0, 2} and codes != (0, 0), (codes, log[-3000:], err[-3000:])
    for code, text in zip(codes, (log, err)):
        if code == 2:     # refused up front, or some ids were made by the other run meanwhile: said, not skipped
            assert "made before with other settings" in text or "NOT MADE: another run made them" in text, text
        assert "Traceback" not in text
    counts = ok_counts(out)
    assert set(counts.values()) == {1}, counts                               # never made twice
    recs = {r["id"]: r for r in Ledger(out, "r").records() if r["status"] == "ok"}
    if 0 in codes:    # the run that exited 0 made every id itself, with its own settings
        writer = {r["writer"] for r in recs.values()}
        assert sorted(recs) == ids and len(writer) == 1

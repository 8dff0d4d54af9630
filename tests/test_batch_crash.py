"""Process-level robustness through the real launcher: SIGTERM to a running `launch/run.py` (exit 75, resume
completes), and SIGKILL of one rank under `torchrun --max-restarts 1` (the group restarts, the run completes, every
id ends exactly once as ok, no mp4 is corrupt)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wan_dist.batch.outputs import OutputDir
from stop_util import sigterm_after

REPO = Path(__file__).resolve().parents[1]
BASE = ["sample.steps=2", "sample.frame_num=5", "sample.size=32*32", "batch.progress=false", "device=cpu"]


def _ledger(out: Path) -> list[dict]:
    """Every ledger record so far: the writers' own files while a run is going (results.jsonl, the merged view, is
    rewritten at the end of each run)."""
    from wan_dist.batch.ledger import Ledger
    return Ledger(out, "reader").records()


def _check_exactly_once(out: Path, ids: list[str]) -> None:
    oks = [r["id"] for r in _ledger(out) if r["status"] == "ok"]
    assert sorted(oks) == sorted(ids), oks
    o = OutputDir(out)
    recs = o.ledger.latest()
    for i in ids:
        assert o.is_complete(i, recs[i]), f"{i}: mp4/sidecar incomplete or corrupt"
    assert not [p for p in (out / ".partial").rglob("*") if p.is_file()]


@pytest.mark.slow
def test_sigterm_to_the_launcher_exits_75_and_resume_completes(tmp_path, tiny_ckpt):
    ids = [f"s{i}" for i in range(5)]
    m = tmp_path / "m.csv"
    m.write_text("id,prompt\n" + "".join(f"{i},prompt {i}\n" for i in ids))
    out = tmp_path / "out"
    args = [sys.executable, str(REPO / "launch/run.py"), "model=tiny-t2v", f"ckpt_dir={tiny_ckpt('tiny-t2v')}",
            f"manifest={m}", f"out_dir={out}", *BASE]
    log = sigterm_after(args, lambda: _ledger(out), cwd=REPO, timeout=240)
    assert "stopped by SIGTERM" in log
    first = [r["id"] for r in _ledger(out)]
    assert 1 <= len(first) < len(ids) and all(r["status"] == "ok" for r in _ledger(out))
    for i in ids:
        if i not in first:
            assert not (out / "videos" / f"{i}.mp4").exists() and not (out / "videos" / f"{i}.json").exists()
    # resume (in process: the same code path without paying another interpreter start)
    from wan_dist.config import compose
    from wan_dist.worker import main as run_distributed_or_local
    cfg = compose(["model=tiny-t2v", f"ckpt_dir={tiny_ckpt('tiny-t2v')}", f"manifest={m}", f"out_dir={out}", *BASE])
    assert run_distributed_or_local(cfg) == 0
    _check_exactly_once(out, ids)


@pytest.mark.slow
def test_sigkill_of_one_rank_under_torchrun_restarts_and_completes(tmp_path, tiny_ckpt):
    """Rank 0 (writer of replica 0) is SIGKILLed right after writing item k2's mp4 - before its sidecar and ledger
    line (the worst moment). torchrun restarts the group once; k2 is redone, everything else is skipped or run."""
    ids = [f"k{i}" for i in range(6)]
    m = tmp_path / "m.csv"
    m.write_text("id,prompt\n" + "".join(f"{i},prompt {i}\n" for i in ids))
    out = tmp_path / "out"
    env = {**os.environ, "WAN_DIST_TEST_SIGKILL_AT": "k2:after_mp4", "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    args = [str(torchrun), "--standalone", "--nproc_per_node", "2", "--max-restarts", "1",   # --standalone: free port
            str(REPO / "launch/run.py"), "model=tiny-t2v", f"ckpt_dir={tiny_ckpt('tiny-t2v')}", f"manifest={m}",
            f"out_dir={out}", "parallel.dp=2", *BASE]
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
    log = proc.stdout + proc.stderr
    assert "TEST HOOK WAN_DIST_TEST_SIGKILL_AT=k2:after_mp4: SIGKILL now" in log, log[-4000:]
    assert proc.returncode == 0, log[-4000:]
    assert "(torchrun attempt 1)" in log, log[-4000:]                 # the group really restarted
    assert "item k2: leftovers are incomplete or corrupt; redoing it" in log, log[-4000:]
    _check_exactly_once(out, ids)

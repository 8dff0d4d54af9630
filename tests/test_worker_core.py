"""The worker core through the real entry points: `wan-dist torchrun` delivers the run's exit code (75 after
SIGTERM, 2 for a bad manifest or an unknown config key) with one clear line and no traceback, and independent
processes sharing one out_dir never make an id twice."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wan_dist.batch.ledger import Ledger
from wan_dist.batch.outputs import OutputDir
from stop_util import sigterm_after

REPO = Path(__file__).resolve().parents[1]
WAN_DIST = Path(sys.executable).with_name("wan-dist")
BASE = ["sample.steps=2", "sample.frame_num=5", "sample.size=32*32", "batch.progress=false", "device=cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def manifest(path: Path, ids) -> Path:
    path.write_text("id,prompt\n" + "".join(f"{i},prompt number {i}\n" for i in ids))
    return path


def torchrun_args(ckpt, m, out, *extra):
    return [str(WAN_DIST), "torchrun", "--standalone", "--nproc_per_node", "2", "launch/run.py", "model=tiny-t2v",
            f"ckpt_dir={ckpt}", f"manifest={m}", f"out_dir={out}", *BASE, *extra]


def oks(out: Path) -> list[str]:
    return sorted(r["id"] for r in Ledger(out, "reader").records() if r["status"] == "ok")


def assert_each_once(out: Path, ids) -> None:
    assert oks(out) == sorted(ids)
    o = OutputDir(out)
    latest = o.ledger.latest()
    assert all(o.is_complete(i, latest[i]) for i in ids)
    assert not [p for p in (out / ".partial").rglob("*") if p.is_file()]
    assert not list((out / "claims").glob("*.claim"))


@pytest.mark.slow
def test_bad_manifest_and_unknown_key_exit_2_without_traceback(tmp_path, tiny_ckpt):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,prompt,steps\na,a cat,zero\n")
    out = tmp_path / "out"
    p = subprocess.run(torchrun_args(tiny_ckpt("tiny-t2v"), bad, out), cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=300)
    log = p.stdout + p.stderr
    assert p.returncode == 2, log[-3000:]
    assert "steps='zero': must be an integer" in log and "Traceback" not in log, log[-3000:]
    assert log.count("steps='zero'") == 1                          # one message, not one per rank
    assert "wan-dist torchrun: exit 2 (user error" in log
    assert not out.exists()
    p = subprocess.run(torchrun_args(tiny_ckpt("tiny-t2v"), bad, out, "sample.stepz=3"), cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=300)
    log = p.stdout + p.stderr
    assert p.returncode == 2, log[-3000:]
    assert "sample.stepz: unknown config key; did you mean sample.steps" in log and "Traceback" not in log
    assert "+sample.stepz" not in log                               # not Hydra's "use +key" hint
    p = subprocess.run([sys.executable, "launch/run.py", "model=tiny-t9v", f"ckpt_dir={tiny_ckpt('tiny-t2v')}",
                        "prompt=x"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "model='tiny-t9v': unknown model; did you mean tiny-t2v" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_sigterm_to_wan_dist_torchrun_exits_75_then_a_queue_run_completes(tmp_path, tiny_ckpt):
    ids = [f"q{i}" for i in range(6)]
    m = manifest(tmp_path / "m.csv", ids)
    out = tmp_path / "out"
    log = sigterm_after(torchrun_args(tiny_ckpt("tiny-t2v"), m, out, "parallel.dp=2"), lambda: oks(out), cwd=REPO,
                        env=ENV)
    assert "wan-dist torchrun: exit 75 (stopped by a signal" in log and "Traceback" not in log, log[-4000:]
    assert "stopped by SIGTERM" in log
    first = oks(out)
    assert 1 <= len(first) < len(ids)
    # the rerun pulls rows from the dynamic queue (two replicas) and does only what is missing
    p = subprocess.run(torchrun_args(tiny_ckpt("tiny-t2v"), m, out, "parallel.dp=2", "work.source=queue"),
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert_each_once(out, ids)
    # nothing left to make: another layout (one replica of 2 ranks) decides so on rank 0, the other rank waits for it
    # through the store, and neither loads the models
    records = len(Ledger(out, "reader").records())
    p = subprocess.run(torchrun_args(tiny_ckpt("tiny-t2v"), m, out, "parallel.ulysses=2"), cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=300)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-4000:]
    assert "models not loaded" in log and "0 done, 6 skipped" in log and "loaded in" not in log, log[-4000:]
    assert len(Ledger(out, "reader").records()) == records
    assert_each_once(out, ids)


@pytest.mark.slow
def test_two_processes_on_one_out_dir_make_each_id_once(tmp_path, tiny_ckpt):
    ids = [f"c{i}" for i in range(6)]
    m = manifest(tmp_path / "m.csv", ids)
    out = tmp_path / "out"
    args = [sys.executable, "launch/run.py", "model=tiny-t2v", f"ckpt_dir={tiny_ckpt('tiny-t2v')}", f"manifest={m}",
            f"out_dir={out}", *BASE]
    procs = [subprocess.Popen(args, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    logs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(x[-2000:] for x in logs)
    assert_each_once(out, ids)
    done = [int(x.split(" done,")[0].rsplit(" ", 1)[-1]) for log in logs for x in log.splitlines()
            if "summary:" in x]
    assert sum(done) == len(ids), logs                             # together, each id made once
    writers = {r["writer"] for r in Ledger(out, "r").records()}
    assert len(writers) == 2 or min(done) == 0                     # shared (or one finished before the other began)

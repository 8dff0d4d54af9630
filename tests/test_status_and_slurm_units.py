"""`wan-dist status` on hand-made out_dirs (the documented ledger / claims format), and the pieces of the Slurm
launchers that need no cluster: ranks per node from the allocation's variables, the exit-code decisions, the array
task of a row, the writer tags, a stop flag crossing to another process, the hydra/launcher=slurm config.
The same paths on a real cluster: tests/test_slurm_runs.py."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from wan_dist.batch.claims import Claims
from wan_dist.batch.manifest import read_ids
from wan_dist.batch.preempt import StopFlag
from wan_dist.batch.status import collect, format_status
from wan_dist.batch.work import ArrayShare, array_task_of, writer_tags
from wan_dist.exit_codes import ExitCode
from wan_dist.slurm import alloc
from wan_dist.slurm.job import settle

REPO = Path(__file__).resolve().parents[1]
WAN_DIST = Path(sys.executable).with_name("wan-dist")
T0 = 1_800_000_000.0        # a fixed wall clock for the records (seconds)


def record(item_id, status, t, task=None, job=None, writer="w1"):
    rec = {"id": item_id, "status": status, "writer": writer, "t_ns": int(t * 1e9)}
    if task is not None:
        rec["array"] = {"task": task, "tasks": 2, "replicas": 1}
    if job:
        rec["slurm_job"] = job
    return rec


def make_out(tmp_path: Path, n: int = 8) -> tuple[Path, Path]:
    m = tmp_path / "m.csv"
    m.write_text("id,prompt\n" + "".join(f"a{i},prompt {i}\n" for i in range(n)))
    out = tmp_path / "out"
    (out / "videos").mkdir(parents=True)
    (out / "ledger").mkdir()
    (out / "config.yaml").write_text(f"config:\n  manifest: {m}\n  batch:\n    claim_timeout_s: 300\n")
    return out, m


def outputs(out: Path, *ids) -> None:
    for i in ids:
        (out / "videos" / f"{i}.mp4").write_bytes(b"x")
        (out / "videos" / f"{i}.json").write_text("{}")


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_status_counts_each_id_once_per_array_task_with_throughput_and_eta(tmp_path):
    out, m = make_out(tmp_path)
    # 2 tasks x 1 replica: task 0 has a0 a2 a4 a6, task 1 a1 a3 a5 a7
    recs = [record("a0", "ok", T0, 0, "9_0"), record("a2", "ok", T0 + 60, 0, "9_0"),
            record("a1", "ok", T0 + 120, 1, "9_1", "w2"),
            record("a3", "failed", T0 + 130, 1, "9_1", "w2"),
            record("a5", "failed", T0 + 140, 1, "9_1", "w2"),      # failed, but a live writer is redoing it now
            record("a6", "ok", T0 + 150, 0, "9_0")]                # ok in the ledger, its mp4 is gone: pending
    (out / "ledger" / "w1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs if r["writer"] == "w1"))
    (out / "ledger" / "w2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs if r["writer"] == "w2")
                                             + '{"id": "a7", "status": "ok", "wri')      # a torn last line
    outputs(out, "a0", "a2", "a1")
    live = Claims(out, "w3", tags={"array": {"task": 1, "tasks": 2, "replicas": 1}, "slurm_job": "9_1"})
    assert live.acquire("a5") is None                              # this process: alive on this host
    (out / "claims" / "a4.claim").write_text(json.dumps({"owner": "gone", "host": live.host, "pid": dead_pid(),
                                                         "since": T0}))   # a dead writer's claim: pending
    st = collect(out, now=T0 + 180)
    assert (st["total"], st["done"], st["running"], st["failed"], st["pending"]) == (8, 3, 1, 1, 3), st
    assert not st["complete"] and st["failed_ids"] == ["a3"] and st["manifest"] == str(m)
    t0, t1 = st["tasks"]
    assert (t0["total"], t0["done"], t0["running"], t0["failed"], t0["pending"]) == (4, 2, 0, 0, 2), t0
    assert (t1["total"], t1["done"], t1["running"], t1["failed"], t1["pending"]) == (4, 1, 1, 1, 1), t1
    assert t0["jobs"] == ["9_0"] and t1["jobs"] == ["9_1"] and t1["last_activity_s"] == 40.0
    # the ok records a0, a2, a1, a6 over 150 s: 3 intervals -> 1.2 items/min; 4 left (3 pending + 1 running)
    assert st["throughput_per_min"] == 1.2 and st["recent_items"] == 4 and st["eta_s"] == 200.0, st
    text = format_status(st)
    assert "done 3   running 1   failed 1   pending 3" in text and "ETA 3:20 for 4 left" in text, text
    assert "9_1" in text and text.endswith("not complete"), text
    live.release("a5")


def test_status_exit_codes_and_a_complete_run(tmp_path):
    out, m = make_out(tmp_path, 3)
    (out / "ledger" / "w.jsonl").write_text("".join(json.dumps(record(f"a{i}", "ok", T0 + i)) + "\n"
                                                    for i in range(3)))
    outputs(out, "a0", "a1")
    run = [str(WAN_DIST), "status", str(out)]
    p = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "pending 1" in p.stdout and "array tasks" not in p.stdout, p.stdout + p.stderr
    outputs(out, "a2")
    p = subprocess.run(run + ["--json"], capture_output=True, text=True, timeout=60)
    st = json.loads(p.stdout)
    assert p.returncode == 0 and st["complete"] and st["done"] == 3 and st["tasks"] is None, p.stdout
    p = subprocess.run([str(WAN_DIST), "status", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no such directory" in p.stderr
    (out / "config.yaml").write_text("config: {}\n")
    p = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--manifest" in p.stderr, p.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("id,prompt\nx y,a cat\n")
    p = subprocess.run(run + ["--manifest", str(bad)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "id='x y'" in p.stderr, p.stderr


# what `wan-dist status` imports (no torch, no numpy): tests/test_startup.py


def test_read_ids_names_rows_exactly_like_load_items(tmp_path):
    from wan_dist.batch.manifest import load_items
    from wan_dist.config import compose
    from wan_dist.models.registry import get_model
    m = tmp_path / "m.csv"
    m.write_text("id,prompt,seed,steps\n,a cat,,\n,a cat,,\nx1,a dog,3,\n,a cat,5,2\n")   # derived, -2, given, typed
    cfg = compose(["model=tiny-t2v", "ckpt_dir=x", f"manifest={m}"])
    items = load_items(m, cfg, get_model("tiny-t2v"))
    assert read_ids(m) == [(it.index, it.request.id) for it in items]
    assert read_ids(m)[1][1] == read_ids(m)[0][1] + "-2" and read_ids(m)[2] == (2, "x1")


@pytest.mark.parametrize("env,expect", [
    ({"SLURM_GPUS_ON_NODE": "8", "SLURM_NTASKS_PER_NODE": "2"}, 8),
    ({"SLURM_JOB_GPUS": "0,1,2,3"}, 4),
    ({"SLURM_NTASKS_PER_NODE": "2", "SLURM_NTASKS": "4", "SLURM_CPUS_PER_TASK": "3"}, 2),
    ({"SLURM_NTASKS": "5", "SLURM_TASKS_PER_NODE": "3,2"}, 2),
    ({"SLURM_NTASKS": "2", "SLURM_TASKS_PER_NODE": "2"}, 2),
    ({"SLURM_CPUS_PER_TASK": "3", "SLURM_TASKS_PER_NODE": "1"}, 3),
    ({"SLURM_TASKS_PER_NODE": "1", "CUDA_VISIBLE_DEVICES": "0,1"}, 1),     # an inherited CUDA_VISIBLE_DEVICES: no
    ({"WAN_DIST_NPROC_PER_NODE": "4", "SLURM_GPUS_ON_NODE": "8"}, 4),
])
def test_ranks_per_node_come_from_the_allocation(env, expect):
    assert alloc.ranks_per_node(env)[0] == expect


def test_allocation_helpers():
    assert alloc.parse_counts("2(x3),1") == [2, 2, 2, 1] and alloc.parse_counts("") == []
    with pytest.raises(ValueError, match="WAN_DIST_NPROC_PER_NODE='0': must be a whole number >= 1"):
        alloc.ranks_per_node({"WAN_DIST_NPROC_PER_NODE": "0"})


def test_job_exit_decisions_without_requeue(capsys):
    env = {"SLURM_JOB_ID": "12", "SLURM_ARRAY_JOB_ID": "10", "SLURM_ARRAY_TASK_ID": "2"}
    assert settle(ExitCode.USAGE, env) == 2
    assert settle(ExitCode.ITEMS_FAILED, env) == 3
    assert settle(ExitCode.OK, env) == 0
    # 75 after as many requeues as allowed: not requeued again (scontrol is not called)
    assert settle(ExitCode.TEMPFAIL, {**env, "SLURM_RESTART_COUNT": "3", "WAN_DIST_MAX_REQUEUES": "3"}) == 75
    err = capsys.readouterr().err
    assert "exit 2 (user error: nothing was run): fix the input named above; nothing is retried" in err
    assert "exit 3 (some items failed (see results.jsonl)): not retried" in err
    assert "exit 75 after 3 requeue(s) (WAN_DIST_MAX_REQUEUES=3): not requeued again" in err
    assert "requeueing" not in err


def test_slurm_job_outside_slurm_is_a_usage_error():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    p = subprocess.run([str(WAN_DIST), "slurm-job", "model=tiny-t2v"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and "not inside a Slurm job" in p.stderr, p.stderr


@pytest.mark.parametrize("tasks,dp", [(3, 2), (4, 1), (2, 3)])
def test_array_task_of_matches_the_array_share(tasks, dp):
    for k in range(tasks):
        for r in range(dp):
            s = ArrayShare(k, tasks)
            s.start([SimpleNamespace(index=i) for i in range(20)], SimpleNamespace(dp_rank=r, dp_size=dp))
            assert all(array_task_of(it.index, tasks, dp) == k for it in s._todo)


def test_writer_tags_name_the_array_task_and_the_slurm_job():
    ctx = SimpleNamespace(dp_size=2)
    env = {"SLURM_JOB_ID": "31", "SLURM_ARRAY_JOB_ID": "30", "SLURM_ARRAY_TASK_ID": "1"}
    assert writer_tags(ArrayShare(1, 3), ctx, env) == {"array": {"task": 1, "tasks": 3, "replicas": 2},
                                                       "slurm_job": "30_1"}
    assert writer_tags(SimpleNamespace(), ctx, {"SLURM_JOB_ID": "7"}) == {"slurm_job": "7"}
    assert writer_tags(SimpleNamespace(), ctx, {}) == {}


def test_a_stop_flag_sent_to_another_process_arrives_uninstalled():
    flag = StopFlag().install()
    try:
        flag.signum = signal.SIGUSR1
        copy = pickle.loads(pickle.dumps(flag))
        assert (copy.signum, copy._depth, copy._previous) == (None, 0, {})
    finally:
        flag.restore()
    copy.install()                      # in the new process its own handlers go in (not a nested no-op)
    try:
        assert signal.getsignal(signal.SIGUSR1) == copy._handler
    finally:
        copy.restore()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_the_slurm_launcher_config_composes(tmp_path):
    from hydra import compose, initialize_config_dir
    from wan_dist.config import CONF_DIR
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.tasks_per_node=2",
                                           f"out_dir={tmp_path}"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.wan_dist_slurm.launcher.SlurmLauncher"
    assert launcher.tasks_per_node == 2 and launcher.nodes == 1 and launcher.partition is None
    assert cfg.hydra.sweep.dir == str(tmp_path)         # submitit's folder ${hydra.sweep.dir}/.submitit: in out_dir
    from hydra_plugins.wan_dist_slurm.launcher import SlurmLauncher
    assert [b.__name__ for b in SlurmLauncher.__mro__[1:3]] == ["SlurmLauncher", "BaseSubmititLauncher"]


def test_precheck_fails_fast_on_bad_config_or_manifest_and_writes_nothing(tmp_path):
    from wan_dist.slurm.precheck import precheck
    m = tmp_path / "m.csv"
    m.write_text("id,prompt\n" + "".join(f"p{i},prompt {i}\n" for i in range(6)))
    out = tmp_path / "out"
    base = ["model=tiny-t2v", "ckpt_dir=/nowhere", f"manifest={m}", f"out_dir={out}", "hydra.job.chdir=false"]
    array = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"}
    assert precheck(base, {}) is None                                      # good input: the run starts
    assert precheck([*base, "work.source=array"], array) is None
    assert precheck(base + ["sample.stepz=3"], {}) == ExitCode.USAGE      # unknown key
    assert precheck(base + ["sample.steps=0"], {}) == ExitCode.USAGE      # a value rule
    assert precheck([*base, "work.source=array"], {}) == ExitCode.USAGE   # an array share outside an array
    bad = tmp_path / "bad.csv"
    bad.write_text("id,prompt,steps\na,a cat,zero\nb,a dog,2\nb,a cow,\n")
    assert precheck([*base, f"manifest={bad}"], {}) == ExitCode.USAGE
    assert not out.exists()                                                # nothing written


def test_torchrun_is_started_with_usr1_ignored_and_its_workers_can_handle_it():
    from wan_dist.supervise import _ignore_usr1
    code = ("import signal; print(signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN); "
            "signal.signal(signal.SIGUSR1, lambda *a: print('handled')); signal.raise_signal(signal.SIGUSR1)")
    p = subprocess.run([sys.executable, "-c", code], preexec_fn=_ignore_usr1, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and p.stdout.split() == ["True", "handled"], p.stdout + p.stderr

"""Smoke tests of the real two-node Slurm test cluster (tests/cluster/). Each test runs one of the job recipes in
tests/cluster/jobs/ that the wan-dist Slurm scripts will use: arrays, two-node jobs, multi-node torchrun, self-requeue
on exit 75, USR1 to the batch script, submitit with the sacct shim. Timings are printed (run with -s to see them)."""
from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from unittest import mock

import pytest

from cluster.slurm import JOBS

pytestmark = pytest.mark.slurm


def _report(what: str, seconds: float) -> None:
    print(f"\n[slurm timing] {what}: {seconds:.1f} s")


def test_cluster_has_two_nodes_on_their_addresses(slurm_cluster):
    c = slurm_cluster
    assert sorted(c.nodes) == ["n1", "n2"]
    assert set(c.nodes.values()) == {"127.0.0.1"}
    assert len(set(c.ports.values())) == 2
    assert c.cpus_per_node >= 4                      # 3 array tasks x 2 ranks, or 2 ranks per node, fit at once
    out = c.run("sinfo", "-h", "-N", "-p", c.partition, "-o", "%N %T %c").stdout.split("\n")
    assert sorted(line.split()[0] for line in out if line) == ["n1", "n2"]


def test_array_job_writes_one_file_per_task(slurm_cluster, tmp_path):
    job = slurm_cluster.submit_and_wait("--array=0-2", "--ntasks=2", "-o", tmp_path / "slurm-%A_%a.out",
                                        JOBS / "array.sbatch", tmp_path, cwd=tmp_path, timeout=90)
    _report("array 0-2 x 2 ranks (sbatch -> all tasks finished)", job.seconds)
    assert job.ok, (job, [p.read_text() for p in tmp_path.glob("slurm-*.out")])
    assert sorted(job.by_task()) == ["0", "1", "2"]
    tasks = [json.loads((tmp_path / f"task_{i}.json").read_text()) for i in range(3)]
    assert [t["task_id"] for t in tasks] == [0, 1, 2]
    assert {t["task_count"] for t in tasks} == {3}
    assert {t["array_job_id"] for t in tasks} == {job.job_id}
    assert len({t["job_id"] for t in tasks}) == 3     # each task is its own job (own allocation)
    for t in tasks:                                   # 2 ranks per task, on the task's node
        assert t["ranks"] == [f"0@{t['node']}", f"1@{t['node']}"], t
        assert t["python_prefix"] == sys.prefix       # the submitter's environment: this venv's python
    # the three 2-rank tasks ran at the same time (oversubscribed CPUs per node)
    assert max(t["start"] for t in tasks) < min(t["end"] for t in tasks), tasks


def test_two_node_job_runs_two_tasks_on_each_node(slurm_cluster, tmp_path):
    job = slurm_cluster.submit_and_wait("-N2", "--ntasks-per-node=2", "-o", tmp_path / "slurm-%j.out",
                                        JOBS / "two_node.sbatch", tmp_path, cwd=tmp_path, timeout=60)
    _report("2 nodes x 2 tasks srun", job.seconds)
    assert job.ok, (job, [p.read_text() for p in tmp_path.glob("slurm-*.out")])
    rows = [line.split() for line in (tmp_path / "ranks.txt").read_text().splitlines()]
    per_node = defaultdict(list)
    for procid, nodeid, node, localid, ntasks in rows:
        assert ntasks == "4"
        per_node[(int(nodeid), node)].append((int(procid), int(localid)))
    assert {k: sorted(v) for k, v in per_node.items()} == {(0, "n1"): [(0, 0), (1, 1)], (1, "n2"): [(2, 0), (3, 1)]}
    nodelist, num_nodes, *hosts = (tmp_path / "job.txt").read_text().split()
    assert (nodelist, num_nodes, hosts) == ("n[1-2]", "2", ["n1", "n2"])


def test_multinode_torchrun_c10d_allreduce(slurm_cluster, tmp_path):
    result = tmp_path / "allreduce.json"
    job = slurm_cluster.submit_and_wait("-N2", "--ntasks-per-node=1", "--cpus-per-task=2",
                                        "-o", tmp_path / "slurm-%j.out", JOBS / "torchrun_multinode.sbatch",
                                        "2", JOBS / "allreduce_check.py", result, cwd=tmp_path, timeout=180)
    _report("2 nodes x torchrun --nproc_per_node 2, gloo all_reduce", job.seconds)
    log = "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert job.ok, (job, log)
    r = json.loads(result.read_text())
    assert r["world"] == 4 and r["sum"] == 1 + 2 + 3 + 4, r
    by_node = defaultdict(list)
    for rk in r["ranks"]:
        by_node[rk["node"]].append((rk["rank"], rk["local_rank"], rk["group_rank"], rk["node_id"]))
    assert sorted(by_node) == ["n1", "n2"]
    for ranks in by_node.values():              # 2 local ranks per node, one torchrun agent (group) per node
        assert sorted(lr for _, lr, _, _ in ranks) == [0, 1], r
        assert len({g for _, _, g, _ in ranks}) == 1, r
    assert "head n1 127.0.0.1:" in log, log         # the rendezvous used the head node's NodeAddr
    head_addr = slurm_cluster.nodes["n1"]
    assert {rk["master"].rsplit(":", 1)[0] for rk in r["ranks"]} == {head_addr}, r   # MASTER_ADDR too (--local-addr)


def test_self_requeue_on_exit_75_and_external_requeue_of_a_running_task(slurm_cluster, tmp_path):
    c = slurm_cluster
    runs = tmp_path / "runs.txt"
    # exits 75 on the first run, 0 on the restart
    work = (f'echo "run $SLURM_JOB_ID restart=${{SLURM_RESTART_COUNT:-0}}" >> {runs}; '
            '[ "${SLURM_RESTART_COUNT:-0}" -ge 1 ] || exit 75')
    t0 = time.monotonic()
    self_id = c.sbatch("--requeue", "--open-mode=append", "-o", tmp_path / "self-%j.out",
                       JOBS / "self_requeue.sbatch", "bash", "-c", work, cwd=tmp_path)
    # an array task that runs until requeued from outside (what a babysitter does to a stuck task)
    marker = tmp_path / "ext"
    ext = (f'echo "task $SLURM_ARRAY_TASK_ID restart=${{SLURM_RESTART_COUNT:-0}}" >> {marker}-$SLURM_ARRAY_TASK_ID; '
           f'[ "$SLURM_ARRAY_TASK_ID" = 0 ] || [ "${{SLURM_RESTART_COUNT:-0}}" -ge 1 ] || sleep 300')
    ext_id = c.sbatch("--requeue", "--array=0-1", "-o", "/dev/null", "--wrap", ext, cwd=tmp_path)
    task1 = Path(f"{marker}-1")
    deadline = time.monotonic() + 60
    while not task1.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert task1.exists(), c.log_tail()
    c.run("scontrol", "requeue", f"{ext_id}_1")

    job = c.wait(self_id, timeout=120)
    _report("self-requeue on exit 75 (submit -> rerun finished; cred_expire=10)", time.monotonic() - t0)
    assert job.ok and job.restarts == 1, (job, [p.read_text() for p in tmp_path.glob("self-*.out")])
    assert runs.read_text().splitlines() == [f"run {self_id} restart=0", f"run {self_id} restart=1"]
    assert "requeueing job" in (tmp_path / f"self-{self_id}.out").read_text()

    ext_job = c.wait(ext_id, timeout=120)
    assert ext_job.ok, ext_job
    # task 0 finished at once and may already be purged from slurmctld (MinJobAge=5): its marker file speaks for it
    assert int(ext_job.by_task()["1"]["Restarts"]) == 1, ext_job
    assert task1.read_text().splitlines() == ["task 1 restart=0", "task 1 restart=1"]
    assert Path(f"{marker}-0").read_text().splitlines() == ["task 0 restart=0"]


def test_usr1_to_the_batch_script(slurm_cluster, tmp_path):
    c = slurm_cluster
    now_dir, timed_dir = tmp_path / "now", tmp_path / "timed"
    now_dir.mkdir()
    timed_dir.mkdir()
    t0 = time.monotonic()
    # --signal=B:USR1@119 with a 2-minute limit: slurmctld checks time limits about every 30 s, so the signal
    # comes between 1 and ~30 s after the start (the test waits for both jobs at once)
    timed_id = c.sbatch("--time=2", "--signal=B:USR1@119", "-o", timed_dir / "slurm-%j.out",
                        JOBS / "trap_usr1.sbatch", timed_dir, cwd=tmp_path)
    now_id = c.sbatch("-o", now_dir / "slurm-%j.out", JOBS / "trap_usr1.sbatch", now_dir, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (now_dir / "ready.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (now_dir / "ready.txt").exists(), c.log_tail()
    sent = time.monotonic()
    c.run("scancel", "--signal=USR1", "--batch", now_id)
    job = c.wait(now_id, timeout=60)
    _report("scancel --signal=USR1 --batch -> job finished", time.monotonic() - sent)
    assert job.ok, (job, (now_dir / "signals.txt").read_text())
    lines = (now_dir / "signals.txt").read_text().splitlines()
    assert [ln.split(" got")[0] for ln in lines[:2]] == ["batch", "worker"] and lines[2] == "worker exit 0", lines

    timed = c.wait(timed_id, timeout=90)
    _report("--signal=B:USR1@119 --time=2 (submit -> job finished)", time.monotonic() - t0)
    lines = (timed_dir / "signals.txt").read_text().splitlines()
    assert timed.ok and lines[-1] == "worker exit 0", (timed, lines)


def test_submitit_with_sacct_shim(slurm_cluster, tmp_path):
    submitit = pytest.importorskip("submitit", reason="submitit is in the [test] extra: pip install -e '.[test]'")
    c = slurm_cluster

    def where():                 # a local function: cloudpickle sends it by value (tests/ is not importable there)
        env = submitit.JobEnvironment()
        return env.global_rank, env.num_tasks, os.environ["SLURMD_NODENAME"]

    # submitit shells out to sbatch/squeue/sacct/scancel with os.environ: the cluster's env (SLURM_CONF, PATH with
    # the sacct shim first) must be the process environment while it runs
    with mock.patch.dict(os.environ, c.env, clear=True):
        ex = submitit.AutoExecutor(folder=tmp_path / "logs" / "%j")
        assert ex.cluster == "slurm"
        ex.update_parameters(timeout_min=5, slurm_partition=c.partition, cpus_per_task=1)
        t0 = time.monotonic()
        job = ex.submit(pow, 2, 10)
        assert job.result() == 1024
        _report("submitit submit -> result", time.monotonic() - t0)
        t0 = time.monotonic()
        jobs = ex.map_array(pow, [2, 3, 4], [2, 2, 2])
        assert [j.result() for j in jobs] == [4, 9, 16]
        _report("submitit map_array(3) -> results", time.monotonic() - t0)
        ex.update_parameters(nodes=2, tasks_per_node=2)
        t0 = time.monotonic()
        job = ex.submit(where)
        got = sorted(job.results())
        _report("submitit nodes=2 tasks_per_node=2 -> results", time.monotonic() - t0)
        assert got == [(0, 4, "n1"), (1, 4, "n1"), (2, 4, "n2"), (3, 4, "n2")], got
        # the shim answers sacct: the state is known (plain sacct would only say accounting is disabled).
        # `job.state` may still be the watcher's cached answer from before the job ran (PENDING under load): ask
        # again (a forced sacct call) until the finished job says so
        deadline, state = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            state = job.get_info(mode="force").get("State")
            if state in {"COMPLETED", "PURGED", "COMPLETING"}:
                break
            time.sleep(1)
        assert state in {"COMPLETED", "PURGED", "COMPLETING"}, state


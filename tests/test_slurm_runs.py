"""wan-dist on the real two-node Slurm test cluster (tests/cluster/): slurm/array.sbatch over a manifest with one task
stopped by USR1 mid-run (exit 75, self-requeue, resume), slurm/multinode.sbatch on n1 + n2 against one process,
a Hydra sweep through hydra/launcher=slurm (submitit), and a bad manifest as an array (exit 2, no requeue loop).
Every run uses the tiny random-weight model at 2 steps, 5 frames, 32x32."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from wan_dist.batch.claims import Claims
from wan_dist.batch.ledger import Ledger
from wan_dist.batch.outputs import OutputDir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "slurm"
WAN_DIST = Path(sys.executable).with_name("wan-dist")
BASE = ["model=tiny-t2v", "sample.steps=2", "sample.frame_num=5", "sample.size=32*32", "batch.progress=false",
        "device=cpu"]
JOB_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}     # 2 cores shared by every rank of every job


def _report(what: str, seconds: float) -> None:
    print(f"\n[slurm timing] {what}: {seconds:.1f} s")


def sbatch(c, *args, cwd, env=None) -> str:
    p = subprocess.run(["sbatch", "--parsable", *map(str, args)], env={**c.env, **JOB_ENV, **(env or {})}, cwd=cwd,
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().split(";")[0]


def status(out: Path, *extra) -> tuple[int, dict]:
    p = subprocess.run([str(WAN_DIST), "status", str(out), "--json", *map(str, extra)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode in (0, 1), p.stderr
    return p.returncode, json.loads(p.stdout)


def wait_until(pred, timeout: float, what: str, explain=lambda: ""):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"{what} not seen in {timeout:.0f} s\n{explain()}"
        time.sleep(0.1)


def logs(d: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(d.glob("*.out")))


def ok_records(out: Path) -> list[dict]:
    return [r for r in Ledger(out, "reader").records() if r["status"] == "ok"]


def assert_each_ok_once(out: Path, ids, failed_before=()) -> None:
    """every id ok exactly once (ids in failed_before: one failed record, then that ok), no partial file, no claim
    left, every output complete"""
    recs = Ledger(out, "reader").records()
    assert sorted(r["id"] for r in recs if r["status"] == "ok") == sorted(ids), recs
    assert sorted(r["id"] for r in recs if r["status"] != "ok") == sorted(failed_before), recs
    o = OutputDir(out)
    latest = o.ledger.latest()
    assert all(o.is_complete(i, latest[i]) for i in ids)
    assert not [p for p in (out / ".partial").rglob("*") if p.is_file()]
    assert not list((out / "claims").glob("*"))
    assert not [p for p in (out / "videos").iterdir() if p.name.startswith(".") or ".tmp" in p.name]


def test_array_usr1_requeue_resume_exit_3_then_a_rerun_makes_only_what_is_missing(slurm_cluster, tiny_ckpt,
                                                                                       tmp_path):
    c = slurm_cluster
    ids = [f"r{i}" for i in range(9)]
    # 3 tasks x 2 ranks (2 replicas per task): task k makes rows i with (i mod 6) div 2 == k: task 0 r0 r1 r6 r7,
    # task 1 r2 r3 r8, task 2 r4 r5. r2 and r3 take 40 steps (the others 2), so the USR1 sent while task 1 holds
    # one of them lands mid-item; r4's latents are made NaN (test hook): task 2 ends with exit 3
    m = tmp_path / "m.csv"
    m.write_text("id,prompt,steps\n" + "".join(f"{i},prompt number {i},{40 if i in ('r2', 'r3') else ''}\n"
                                               for i in ids))
    out, logdir = tmp_path / "out", tmp_path / "logs"
    logdir.mkdir()
    array = ["--array=0-2", "--ntasks-per-node=2", "-o", logdir / "slurm-%A_%a.out", SLURM / "array.sbatch",
             f"ckpt_dir={tiny_ckpt('tiny-t2v')}", f"manifest={m}", f"out_dir={out}", *BASE]
    # This test process holds r8's claim (alive, this host), so task 1 cannot finish before it is signalled: whether
    # the USR1 lands mid-item or while task 1 waits for r8, it is a stop with work left -> exit 75, deterministically
    hold = Claims(out, owner="pytest-holder")
    assert hold.acquire("r8") is None
    t0 = time.monotonic()
    jid = sbatch(c, *array, cwd=tmp_path, env={"WAN_DIST_TEST_INJECT_NAN": "r4"})
    task1_log = logdir / f"slurm-{jid}_1.out"
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(c.wait, jid, 420)          # polls from now on: finished tasks are purged within seconds
        try:
            def task1_in_item():
                return any(h is not None and h.owner != hold.owner for h in map(hold.holder, ("r2", "r3")))
            wait_until(task1_in_item, 240, "task 1 making r2 or r3", lambda: logs(logdir))
            c.run("scancel", "--signal=USR1", "--batch", f"{jid}_1")
            wait_until(lambda: task1_log.exists() and "requeueing job" in task1_log.read_text(), 240,
                       "task 1 requeueing itself", lambda: logs(logdir))
            rc, st = status(out, "--manifest", m)         # r8 is held by a live writer (this test): running
            assert rc == 1 and not st["complete"] and st["running"] >= 1 and st["total"] == 9, st
            assert [t["task"] for t in st["tasks"]] == [0, 1, 2] and st["tasks"][1]["running"] >= 1, st
        finally:
            hold.release("r8")
        job = waiting.result()
    _report("array 0-2 x 2 ranks, 9 rows, task 1 USR1 -> 75 -> requeued -> done, task 2 exit 3", time.monotonic() - t0)
    text = logs(logdir)
    tasks = job.by_task()
    assert sorted(tasks) == ["0", "1", "2"], (job, text)
    assert [(tasks[k]["JobState"], tasks[k]["ExitCode"], int(tasks[k]["Restarts"])) for k in "012"] == \
        [("COMPLETED", "0:0", 0), ("COMPLETED", "0:0", 1), ("FAILED", "3:0", 0)], (tasks, text)
    t1 = task1_log.read_text()
    assert "received SIGUSR1" in t1 and "wan-dist torchrun: exit 75" in t1, t1
    assert f"requeueing job {jid}_1 (restart 1)" in t1 and f"job {jid}_1 (restart 1)" in t1, t1
    print(f"\n[slurm] task 1 stopped {'mid-item' if 'nothing of it is written' in t1 else 'between items'}")
    t2 = (logdir / f"slurm-{jid}_2.out").read_text()
    assert "item r4 failed: FloatingPointError" in t2 and "wan-dist slurm-job: exit 3" in t2, t2
    assert "requeueing" not in t2 and "Traceback" not in text, text
    rc, st = status(out)                                  # the manifest named in config.yaml; r4 failed
    assert rc == 1 and (st["done"], st["failed"], st["pending"], st["running"]) == (8, 1, 0, 0), st
    assert st["failed_ids"] == ["r4"] and st["tasks"][2]["failed"] == 1, st
    assert sorted(r["id"] for r in ok_records(out)) == sorted(set(ids) - {"r4"})    # nothing made twice

    # the same array again (retrying failures): only r4 is made, every other id is skipped
    t0 = time.monotonic()
    again = c.wait(sbatch(c, *array, "batch.retry_failed=true", cwd=tmp_path), timeout=300)
    _report("the same array again: only the missing item", time.monotonic() - t0)
    rerun = {k: (logdir / f"slurm-{again.job_id}_{k}.out").read_text() for k in "012"}
    assert again.ok, (again, rerun)
    for k, n in (("0", 4), ("1", 3)):
        assert f"summary: 0 done, {n} skipped (already complete), 0 failed" in rerun[k], rerun[k]
    assert "summary: 1 done, 1 skipped (already complete), 0 failed" in rerun["2"], rerun["2"]
    assert_each_ok_once(out, ids, failed_before=["r4"])
    assert {r["slurm_job"] for r in ok_records(out)} == {f"{jid}_{k}" for k in range(3)} | {f"{again.job_id}_2"}
    rc, st = status(out)
    assert rc == 0 and st["complete"] and (st["done"], st["pending"], st["failed"]) == (9, 0, 0), st
    assert [(t["task"], t["total"], t["done"]) for t in st["tasks"]] == [(0, 4, 4), (1, 3, 3), (2, 2, 2)], st
    assert st["tasks"][1]["jobs"] == [f"{jid}_1"] and st["throughput_per_min"] > 0, st
    human = subprocess.run([str(WAN_DIST), "status", str(out)], capture_output=True, text=True, timeout=60)
    assert human.returncode == 0 and "complete: every manifest id is done" in human.stdout, human.stdout


def test_two_node_job_stopped_by_usr1_resumes_and_makes_the_same_latents_as_one_process(slurm_cluster, tiny_ckpt,
                                                                                          tmp_path):
    c = slurm_cluster
    m = tmp_path / "m.csv"            # n0 takes 30 steps, so the USR1 sent while it is being made lands mid-item
    m.write_text("id,prompt,steps\nn0,a red fox in the snow,30\nn1,a cat on a boat,\nn2,rain on a window,\n")
    args = [f"ckpt_dir={tiny_ckpt('tiny-t2v')}", f"manifest={m}", *BASE, "output.save_latents=true"]
    one = subprocess.Popen([sys.executable, "launch/run.py", *args, f"out_dir={tmp_path / 'one'}"], cwd=REPO,
                           env={**os.environ, **JOB_ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    two, logdir = tmp_path / "two", tmp_path / "logs"
    logdir.mkdir()
    hold = Claims(two, owner="pytest-holder")        # n2: the run cannot end before it is signalled (see above)
    assert hold.acquire("n2") is None
    t0 = time.monotonic()
    # one replica of 4 ranks across the nodes: CFG-parallel halves x Ulysses 2 (every step crosses n1 <-> n2)
    jid = sbatch(c, "-N2", "--ntasks-per-node=2", "-o", logdir / "slurm-%j.out", SLURM / "multinode.sbatch", *args,
                 "parallel.cfg=2", "parallel.ulysses=2", f"out_dir={two}", cwd=tmp_path)
    log_file = logdir / f"slurm-{jid}.out"
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(c.wait, jid, 420)
        try:
            wait_until(lambda: (h := hold.holder("n0")) is not None and h.owner != hold.owner, 240,
                       "the 2-node run making n0", lambda: logs(logdir))
            # to the batch process: it hands USR1 to srun, which signals every process of the step on both nodes
            c.run("scancel", "--signal=USR1", "--batch", jid)
            wait_until(lambda: "requeueing job" in log_file.read_text(), 240, "the job requeueing itself",
                       lambda: logs(logdir))
        finally:
            hold.release("n2")
        job = waiting.result()
    _report("multinode.sbatch -N2 x 2 ranks (cfg 2 x ulysses 2), 3 rows, USR1 -> 75 -> requeued", time.monotonic() - t0)
    log = log_file.read_text()
    assert job.ok and job.restarts == 1, (job, log)
    one_log = one.communicate(timeout=300)[0]
    assert one.returncode == 0, one_log[-3000:]
    assert "2 node(s) n1,n2 x 2 rank(s) per node (--ntasks-per-node=2)" in log, log
    assert f"c10d rendezvous at {c.nodes['n1']}:" in log and log.count("wan-dist torchrun: exit 75") == 2, log
    # every rank got the stop request (a rank may log a second USR1: srun forwards the batch script's signal to
    # every task, and a second delivery is harmless), no crash
    assert all(f"[rank{r}] WARNING wan_dist.batch.preempt: received SIGUSR1" in log for r in range(4)), log
    assert "Traceback" not in log, log
    assert f"requeueing job {jid} (restart 1)" in log and log.count("wan-dist torchrun: exit 0") == 2, log
    print(f"\n[slurm] the 2-node run stopped {'mid-item' if 'nothing of it is written' in log else 'between items'}")
    from wan_dist.batch.extras import load_latents
    for item in ("n0", "n1", "n2"):
        side = json.loads((two / "videos" / f"{item}.json").read_text())
        assert (side["layout"]["world_size"], side["layout"]["cfg"], side["layout"]["ulysses"]) == (4, 2, 2), side
        a, _ = load_latents(tmp_path / "one" / "videos" / f"{item}.latents.safetensors")
        b, _ = load_latents(two / "videos" / f"{item}.latents.safetensors")
        assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-5, (item, (a - b).abs().max().item())
    assert_each_ok_once(two, ["n0", "n1", "n2"])


def test_hydra_sweep_on_slurm_one_two_rank_job_per_setting(slurm_cluster, tiny_ckpt, tmp_path):
    c = slurm_cluster
    m = tmp_path / "m.csv"
    m.write_text("id,prompt\ns0,a lighthouse at dusk\ns1,a busy market\n")
    out = tmp_path / "sweep"
    t0 = time.monotonic()
    # s1's latents are made NaN (test hook) in every job: each job ends with 3, which must come back to the sweep
    p = subprocess.run([sys.executable, "launch/run.py", "-m", "hydra/launcher=slurm",
                        "hydra.launcher.tasks_per_node=2", f"hydra.launcher.partition={c.partition}",
                        "hydra.launcher.timeout_min=10", f"ckpt_dir={tiny_ckpt('tiny-t2v')}", f"manifest={m}",
                        f"out_dir={out}", *BASE, "sample.cfg_truncate_steps=0,1,2"], cwd=REPO,
                       env={**c.env, **JOB_ENV, "WAN_DIST_TEST_INJECT_NAN": "s1"}, capture_output=True, text=True,
                       timeout=420)
    _report("sweep of 3 settings, hydra/launcher=slurm, 2 ranks per job", time.monotonic() - t0)
    log = p.stdout + p.stderr
    assert p.returncode == 3, log[-4000:] + "\n" + "\n".join(
        f.read_text()[-2000:] for f in (out / ".submitit").rglob("*_log.err"))
    assert "sweep: 3 job(s) on Slurm, exit codes [3, 3, 3] -> 3" in log, log[-3000:]
    runs = sorted(out.rglob("config.yaml"))                # one sub-directory per setting (its name: entry.py)
    assert [r.parent.name for r in runs] == [f"{i}_sample.cfg_truncate_steps={i}" for i in range(3)], runs
    import yaml
    seen, jobs = set(), set()
    for conf in runs:
        doc = yaml.safe_load(conf.read_text())
        assert doc["layout"]["world_size"] == 2, doc["layout"]     # each job one 2-rank run
        recs = Ledger(conf.parent, "reader").records()
        assert sorted((r["id"], r["status"]) for r in recs) == [("s0", "ok"), ("s1", "failed")], recs
        seen.add(json.loads((conf.parent / "videos" / "s0.json").read_text())["cfg_truncate_steps"])
        jobs |= {r["slurm_job"] for r in recs}
    assert seen == {0, 1, 2}
    assert len(jobs) == 3, jobs                              # three Slurm jobs (tasks of one array)
    assert list((out / ".submitit").rglob("*_log.out"))      # submitit's files stay inside out_dir
    script = next((out / ".submitit").rglob("*_submission.sh")).read_text()
    assert "#SBATCH --signal=USR1@90" in script and "#SBATCH --ntasks-per-node=2" in script, script


def test_bad_manifest_as_an_array_fails_fast_with_exit_2_and_no_requeue(slurm_cluster, tiny_ckpt, tmp_path):
    c = slurm_cluster
    bad = tmp_path / "bad.csv"
    bad.write_text("id,prompt,steps\na,a cat,zero\nb,a dog,2\nc,a cow,\n")
    out, logdir = tmp_path / "out", tmp_path / "logs"
    logdir.mkdir()
    t0 = time.monotonic()
    job = c.wait(sbatch(c, "--array=0-2", "--ntasks-per-node=2", "-o", logdir / "slurm-%A_%a.out",
                        SLURM / "array.sbatch", f"ckpt_dir={tiny_ckpt('tiny-t2v')}", f"manifest={bad}",
                        f"out_dir={out}", *BASE, cwd=tmp_path), timeout=300)
    _report("bad manifest as an array of 3 (every task exit 2)", time.monotonic() - t0)
    text = logs(logdir)
    tasks = job.by_task()
    assert len(list(logdir.glob("*.out"))) == 3, text
    assert job.state == "FAILED" and job.exit_code == 2, (job, text)
    assert all(r["JobState"] == "FAILED" and r["ExitCode"] == "2:0" and int(r.get("Restarts", 0)) == 0
               for r in tasks.values()), tasks
    for f in logdir.glob("*.out"):
        t = f.read_text()
        assert f"{bad}:2 steps='zero': must be an integer" in t and "wan-dist slurm-job: exit 2" in t, t
        assert "requeueing" not in t and "Traceback" not in t, t
        assert "wan-dist torchrun" not in t, t               # failed before any rank was started
    assert not out.exists()

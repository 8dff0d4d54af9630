"""Ray gangs on a real local Ray (loopback only, a scratch session directory, 4 CPUs), started once for the module.

The driver runs in this process (wan_dist.gangs.driver.main, what launch/ray_run.py calls) or through
launch/ray_run.py itself. Checked: 2 gangs x 1 rank and 1 gang x 2 ranks (ulysses=2) make the same latents as one
process, with one W&B run for the whole job; a rank killed mid-item (SIGKILL after its mp4, before its sidecar)
makes the driver kill and rebuild the whole gang and the row is redone there, every id ok exactly once; a row whose
item fails, or whose gang dies, ray.max_item_attempts times is recorded failed (exit 3); a gang the cluster cannot
hold is an exit 2 within seconds naming the short resource, and nothing is written; SIGTERM to launch/ray_run.py
stops the gangs at a safe point (exit 75) and a rerun on a private `ray.address=local` Ray rebuilds the queue from
the ledger and finishes (exit 0).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from wan_dist import config as config_mod
from wan_dist.batch.extras import load_latents
from wan_dist.batch.ledger import Ledger
from wan_dist.batch.outputs import OutputDir
from stop_util import sigterm_after

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BASE = ["model=tiny-t2v", "sample.steps=2", "sample.frame_num=5", "sample.size=32*32", "device=cpu",
        "batch.progress=false", "ray.gpus_per_rank=0"]
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
CPUS = 4


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module: loopback only, 4 CPUs, its session files in a short scratch directory (Ray's
    socket paths must stay under 108 bytes), removed at the end."""
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    import ray
    tmp = tempfile.mkdtemp(prefix="wdray", dir="/tmp")
    ctx = ray.init(_node_ip_address="127.0.0.1", _temp_dir=tmp, num_cpus=CPUS, include_dashboard=False)
    try:
        yield SimpleNamespace(address=ctx.address_info["gcs_address"], ray=ray)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def manifest(path: Path, ids, extra: str = "") -> Path:
    path.write_text("id,prompt" + (",steps" if extra else "") + "\n"
                    + "".join(f"{i},prompt number {i}{',' + extra if extra else ''}\n" for i in ids))
    return path


def compose(ckpt, m, out, *over):
    return config_mod.compose([*BASE, f"ckpt_dir={ckpt}", f"manifest={m}", f"out_dir={out}", *over])


def ray_job(ckpt, m, out, *over) -> int:
    from wan_dist.gangs.driver import main
    return int(main(compose(ckpt, m, out, *over)))


def records(out: Path) -> list[dict]:
    return Ledger(out, "reader").records()


def assert_each_ok_once(out: Path, ids) -> None:
    oks = sorted(r["id"] for r in records(out) if r["status"] == "ok")
    assert oks == sorted(ids)
    o = OutputDir(out)
    latest = o.ledger.latest()
    assert all(o.is_complete(i, latest[i]) for i in ids)
    assert not [p for p in (out / ".partial").rglob("*") if p.is_file()]
    assert not list((out / "claims").glob("*.claim"))
    merged = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in merged if r["status"] == "ok") == sorted(ids)


def sidecar(out: Path, i: str) -> dict:
    return json.loads((out / "videos" / f"{i}.json").read_text())


def max_diff(a: Path, b: Path, i: str) -> float:
    la, _ = load_latents(a / "videos" / f"{i}.latents.safetensors")
    lb, _ = load_latents(b / "videos" / f"{i}.latents.safetensors")
    assert la.shape == lb.shape
    return float((la - lb).abs().max())


def test_gang_layouts_make_the_same_latents_as_one_process(ray_cluster, tiny_ckpt, tmp_path, capfd):
    from wan_dist import worker
    from wan_dist.observability.wandb_sink import offline_summary
    ck, ids = tiny_ckpt("tiny-t2v"), ["a", "b", "c"]
    m = manifest(tmp_path / "m.csv", ids)
    ref = tmp_path / "ref"
    assert int(worker.run(compose(ck, m, ref, "output.save_latents=true"))) == 0
    dp = tmp_path / "dp"                               # 2 gangs x 1 rank, one W&B run for the whole job
    assert ray_job(ck, m, dp, "ray.gangs=2", "output.save_latents=true", "logger=wandb") == 0
    sp = tmp_path / "sp"                               # 1 gang x 2 ranks, Ulysses inside the gang
    assert ray_job(ck, m, sp, "parallel.ulysses=2", "output.save_latents=true") == 0
    log = capfd.readouterr().err
    for out in (dp, sp):
        assert_each_ok_once(out, ids)
        for i in ids:
            assert max_diff(ref, out, i) <= 1e-5, (out.name, i)
    run_id = __import__("yaml").safe_load((dp / "config.yaml").read_text())["run_id"]
    scs = [sidecar(dp, i) for i in ids]
    assert {sc["run"]["run_id"] for sc in scs} == {run_id}             # one job, whichever gang made the row
    assert all(sc["layout"]["launcher"] == "ray" and sc["layout"]["gang"] in (0, 1) for sc in scs)
    assert run_id not in {r["writer"] for r in records(dp)}          # rows are made (and recorded) by the gangs
    lay = sidecar(sp, "a")["layout"]
    assert lay["ulysses"] == 2 and lay["world_size"] == 2 and lay["gangs"] == 1
    runs = list((dp / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs                                          # exactly one logger: the driver
    summ = offline_summary(next(runs[0].glob("run-*.wandb")))
    assert summ["done"] == 3 and summ["run/videos"] == 3 and summ["failed"] == 0
    assert "summary: 3 done, 0 skipped" in log and not (sp / "wandb").exists()
    # `wan-dist status` reads a Ray run's out_dir like any other (the manifest from its config.yaml)
    from wan_dist.cli import main as cli
    assert cli(["status", str(dp)]) == 0
    out = capfd.readouterr().out
    assert "(3 ids)" in out and "done 3" in out and "complete: every manifest id is done" in out, out


def test_a_killed_rank_is_redone_on_a_rebuilt_gang(ray_cluster, tiny_ckpt, tmp_path, monkeypatch, capfd):
    ids = ["k0", "k1", "k2"]
    m = manifest(tmp_path / "m.csv", ids)
    out = tmp_path / "out"
    # rank 0 of the 2-rank gang SIGKILLs itself after writing k1's mp4 (no sidecar, no ledger line): the first
    # attempt only (a redo finds the leftovers), so the rebuilt gang completes it
    monkeypatch.setenv("WAN_DIST_TEST_SIGKILL_AT", "k1:after_mp4")
    assert ray_job(tiny_ckpt("tiny-t2v"), m, out, "parallel.ulysses=2", "ray.max_gang_restarts=1") == 0
    log = capfd.readouterr().err
    assert "gang 0 lost: " in log and "gang 0 (rebuild 1): 2 rank(s) started" in log     # died, or its peer failed
    assert_each_ok_once(out, ids)
    oks = {r["id"]: r for r in records(out) if r["status"] == "ok"}
    assert oks["k0"]["writer"] != oks["k1"]["writer"]                   # k1 made by the rebuilt gang's writer
    assert sidecar(out, "k0")["layout"]["generation"] == 0
    assert sidecar(out, "k1")["layout"]["generation"] == 1
    assert not [r for r in records(out) if r["status"] == "failed"]


def test_rows_failing_max_item_attempts_times_are_recorded_failed(ray_cluster, tiny_ckpt, tmp_path, monkeypatch,
                                                                  capfd):
    m = manifest(tmp_path / "m.csv", ["n0", "n1", "n2"])
    out = tmp_path / "out"
    monkeypatch.setenv("WAN_DIST_TEST_INJECT_NAN", "n1")               # NaN latents on every attempt
    monkeypatch.setenv("WAN_DIST_TEST_SIGKILL_AT", "n2:every_start")    # a poison row: kills every gang taking it
    assert ray_job(tiny_ckpt("tiny-t2v"), m, out, "ray.max_item_attempts=2", "ray.max_gang_restarts=2") == 3
    log = capfd.readouterr().err
    recs = records(out)
    run_id = __import__("yaml").safe_load((out / "config.yaml").read_text())["run_id"]
    assert [r["status"] for r in recs if r["id"] == "n0"] == ["ok"]
    n1 = [r for r in recs if r["id"] == "n1"]                         # the gang's runner recorded each attempt
    assert [r["status"] for r in n1] == ["failed", "failed"] and run_id not in {r["writer"] for r in n1}
    n2 = [r for r in recs if r["id"] == "n2"]                         # no one in the dead gangs could: the driver
    assert [(r["status"], r["writer"]) for r in n2] == [("failed", run_id)]
    assert "its gang died while making it, 2 time(s)" in n2[0]["error"]
    assert "row n1 failed on gang 0 (attempt 1 of 2): queued again" in log
    assert "row n2 lost with its gang on gang 0 (attempt 1 of 2): queued again" in log
    assert "(attempt 2 of 2): recorded failed" in log and "1 done, 0 skipped (already complete), 2 failed" in log
    assert "gang deaths per slot: [2]" in log and not list((out / "claims").glob("*.claim"))
    latest = {r["id"]: r["status"] for r in (json.loads(x) for x in (out / "results.jsonl").read_text().splitlines())}
    assert latest == {"n0": "ok", "n1": "failed", "n2": "failed"}


def test_an_unplaceable_gang_is_a_clear_error_within_seconds(ray_cluster, tiny_ckpt, tmp_path, capfd):
    m = manifest(tmp_path / "m.csv", ["u0"])
    ck = tiny_ckpt("tiny-t2v")
    t0 = time.monotonic()
    assert ray_job(ck, m, tmp_path / "o1", "ray.cpus_per_rank=8") == 2       # no node has 8 CPUs
    assert ray_job(ck, m, tmp_path / "o2", "ray.gpus_per_rank=1") == 2       # no GPU at all
    # each gang fits a node, but 3 gangs of 2 CPUs do not fit 4 CPUs: the third is never placed
    assert ray_job(ck, m, tmp_path / "o3", "ray.gangs=3", "ray.cpus_per_rank=2", "ray.placement_timeout_s=2") == 2
    elapsed = time.monotonic() - t0
    err = capfd.readouterr().err
    assert "error: ray.gang_size=1 rank(s) x (ray.cpus_per_rank=8, ray.gpus_per_rank=0) = 8 CPU on one node: no " \
           "node of the Ray cluster can hold a gang; CPU short: the largest node has 4 CPU" in err
    assert "GPU short: the largest node has 4 CPU, 0 GPU" in err and "ray.gpus_per_rank=0 runs on CPUs" in err
    assert "only 2 of ray.gangs=3 gang(s) placed within ray.placement_timeout_s=2 s" in err
    assert elapsed < 60, elapsed                     # not a hang (Ray keeps an unplaceable group pending forever)
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))     # nothing written
    deadline = time.monotonic() + 30                 # the placed groups were removed again
    while ray_cluster.ray.available_resources().get("CPU", 0) < CPUS and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray_cluster.ray.available_resources().get("CPU", 0) == CPUS


def test_ray_run_py_sigterm_exits_75_then_a_local_ray_rerun_resumes(ray_cluster, tiny_ckpt, tmp_path):
    ids = [f"s{i}" for i in range(8)]
    m = manifest(tmp_path / "m.csv", ids, extra="20")       # 20 steps a row: a stop lands between steps
    out = tmp_path / "out"
    env = {**os.environ, **RAY_ENV, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "launch/ray_run.py", *BASE, f"ckpt_dir={tiny_ckpt('tiny-t2v')}", f"manifest={m}",
            f"out_dir={out}"]
    bad = manifest(tmp_path / "bad.csv", ["x"], extra="zero")
    p = subprocess.run(args[:-2] + [f"manifest={bad}", f"out_dir={tmp_path / 'bad'}",
                                    f"ray.address={ray_cluster.address}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "steps='zero': must be an integer" in p.stderr, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and "Ray cluster" not in p.stderr and not (tmp_path / "bad").exists()
    log = sigterm_after(args + [f"ray.address={ray_cluster.address}"],
                        lambda: any(r["status"] == "ok" for r in records(out)), cwd=REPO, env=env)
    assert "stopping every gang at its next safe point (SIGTERM)" in log and "Traceback" not in log, log[-4000:]
    first = sorted(r["id"] for r in records(out) if r["status"] == "ok")
    assert 1 <= len(first) < len(ids), first
    # the rerun starts its own private Ray (the default address=local), rebuilds the queue from the ledger and
    # makes only what is missing
    tmp = tempfile.mkdtemp(prefix="wdloc", dir="/tmp")
    try:
        p = subprocess.run(args + ["ray.address=local", f"ray.temp_dir={tmp}", "ray.gangs=2"], cwd=REPO,
                           env={k: v for k, v in env.items() if k != "RAY_ADDRESS"}, capture_output=True,
                           text=True, timeout=400)
        log = p.stdout + p.stderr
        assert p.returncode == 0, log[-4000:]
        assert f"{len(ids) - len(first)} to make, {len(first)} already complete" in log, log[-4000:]
        assert "Started a local Ray instance" in log
        deadline = time.time() + 30                # its processes are gone once the driver has exited
        while (left := subprocess.run(["pgrep", "-f", tmp], capture_output=True, text=True).stdout.split()) \
                and time.time() < deadline:
            time.sleep(0.5)
        assert not left, f"Ray processes of the private cluster still running: {left}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert_each_ok_once(out, ids)
    assert len([r for r in records(out) if r["status"] == "ok"]) == len(ids)   # nothing made twice

"""A run with nothing to make loads no models (worker.idle_run): a finished batch rerun, a requeued Slurm array task
whose share is done, an array task with an empty share. Whether a row counts as made follows the runner's own rule
(batch/runner.py ledger_rule), so every case where the runner would make a row must still load."""
from __future__ import annotations

import json

import pytest

import wan_dist.worker as worker
from wan_dist.config import compose
from wan_dist.exit_codes import ExitCode


@pytest.fixture
def loads(monkeypatch):
    """Every load_models call of the worker, counted (the real load still happens)."""
    calls = []
    real = worker.load_models
    monkeypatch.setattr(worker, "load_models", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def base(tiny_ckpt, tmp_path, rows: int = 3) -> list[str]:
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,prompt\n" + "".join(f"r{i},prompt {i}\n" for i in range(rows)))
    return ["model=tiny-t2v", f"ckpt_dir={tiny_ckpt('tiny-t2v')}", f"manifest={manifest}",
            f"out_dir={tmp_path / 'out'}", "sample.steps=2", "sample.frame_num=5", "sample.size=32*32",
            "batch.progress=false", "logger=none"]


def ledger(tmp_path) -> list[dict]:
    """results.jsonl: every record of every run, in order."""
    return [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]


def run(args) -> ExitCode:
    return worker.run(compose(args))


def test_finished_batch_rerun_loads_nothing_and_skips_every_row(tiny_ckpt, tmp_path, loads, caplog):
    args = base(tiny_ckpt, tmp_path)
    assert run(args) == ExitCode.OK and len(loads) == 1
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "videos").iterdir()}
    caplog.set_level("INFO", logger="wan_dist")
    assert run(args) == ExitCode.OK
    assert len(loads) == 1                                   # no second load
    assert "nothing to make: the 3 row(s) of this run are already made" in caplog.text
    assert "0 done, 3 skipped (already complete), 0 failed" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "videos").iterdir()} == before
    assert [r["id"] for r in ledger(tmp_path)] == ["r0", "r1", "r2"]


def test_a_missing_row_or_a_broken_video_loads(tiny_ckpt, tmp_path, loads):
    args = base(tiny_ckpt, tmp_path)
    assert run(args + ["work.source=array", "work.array_task=0", "work.array_tasks=2"]) == ExitCode.OK
    assert len(loads) == 1                                   # rows r0, r2
    assert run(args) == ExitCode.OK                          # r1 is missing: loads, makes only r1
    assert len(loads) == 2
    (tmp_path / "out" / "videos" / "r2.mp4").write_bytes(b"truncated")
    assert run(args) == ExitCode.OK                          # a broken mp4 is not made: redone
    assert len(loads) == 3
    assert [r["id"] for r in ledger(tmp_path)] == ["r0", "r2", "r1", "r2"]     # every record, in order


def test_array_tasks_load_only_when_their_own_share_has_work(tiny_ckpt, tmp_path, loads):
    args = base(tiny_ckpt, tmp_path, rows=2) + ["work.source=array", "work.array_tasks=3"]
    assert run(args + ["work.array_task=0"]) == ExitCode.OK and len(loads) == 1       # r0
    assert run(args + ["work.array_task=0"]) == ExitCode.OK and len(loads) == 1       # requeued: its share is done
    assert run(args + ["work.array_task=2"]) == ExitCode.OK and len(loads) == 1       # an empty share
    assert run(args + ["work.array_task=1"]) == ExitCode.OK and len(loads) == 2       # r1: not made yet


def test_failed_rows_load_only_when_retried(tiny_ckpt, tmp_path, loads, monkeypatch):
    args = base(tiny_ckpt, tmp_path, rows=2)
    monkeypatch.setenv("WAN_DIST_TEST_INJECT_NAN", "r1")
    assert run(args) == ExitCode.ITEMS_FAILED and len(loads) == 1
    monkeypatch.delenv("WAN_DIST_TEST_INJECT_NAN")
    assert run(args) == ExitCode.OK and len(loads) == 1     # r1 failed before, not retried: nothing to make
    assert run(args + ["batch.retry_failed=true"]) == ExitCode.OK and len(loads) == 2
    assert {r["id"]: r["status"] for r in ledger(tmp_path)} == {"r0": "ok", "r1": "ok"}


def test_changed_settings_load_only_when_they_are_made_again(tiny_ckpt, tmp_path, loads):
    args = base(tiny_ckpt, tmp_path, rows=2)
    assert run(args) == ExitCode.OK and len(loads) == 1
    first = {r["id"]: r["settings"] for r in ledger(tmp_path)}
    assert run(args + ["sample.seed=7", "batch.on_change=keep"]) == ExitCode.OK and len(loads) == 1
    assert run(args + ["sample.seed=7", "batch.on_change=stop"]) == ExitCode.USAGE and len(loads) == 1
    assert run(args + ["sample.seed=7", "batch.on_change=redo"]) == ExitCode.OK and len(loads) == 2
    again = {r["id"]: r["settings"] for r in ledger(tmp_path)}
    assert again.keys() == first.keys() and all(again[k] != first[k] for k in first)


def test_a_row_that_changes_after_the_check_stops_the_run_for_a_rerun(tiny_ckpt, tmp_path, loads, monkeypatch,
                                                                      caplog):
    """The check is made once, when the run begins; if out_dir changes before the runner reaches a row (another
    writer removed a video), the run cannot load then (the load is collective), so it stops with exit 75 (Slurm
    requeues it) and a rerun makes the row."""
    args = base(tiny_ckpt, tmp_path, rows=2)
    assert run(args) == ExitCode.OK and len(loads) == 1
    real = worker.nothing_to_make

    def check_then_lose_r1(out, items, **kw):
        found = real(out, items, **kw)
        (tmp_path / "out" / "videos" / "r1.mp4").unlink()      # gone between the check and the runner
        return found

    monkeypatch.setattr(worker, "nothing_to_make", check_then_lose_r1)
    caplog.set_level("INFO", logger="wan_dist")
    assert run(args) == ExitCode.TEMPFAIL and len(loads) == 1
    assert "item r1 is to be made now, but this run found nothing to make" in caplog.text
    assert not list((tmp_path / "out" / "claims").glob("r1*"))     # its claim released
    monkeypatch.setattr(worker, "nothing_to_make", real)
    assert run(args) == ExitCode.OK and len(loads) == 2
    assert (tmp_path / "out" / "videos" / "r1.mp4").exists()

"""The work-distribution layer (batch/work.py), id claims (batch/claims.py) and the per-writer ledger
(batch/ledger.py): pure file-system and Python behaviour, no model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from wan_dist.batch.claims import Claims
from wan_dist.batch.ledger import Ledger
from wan_dist.batch.manifest import Item
from wan_dist.batch.work import ArrayShare, ClaimQueue, StaticShare, array_position_from_env, make_source


def items(n):
    return [Item(i, i + 2, SimpleNamespace(id=f"r{i}")) for i in range(n)]


def ctx(dp_rank, dp_size):
    return SimpleNamespace(dp_rank=dp_rank, dp_size=dp_size)


def drain(src):
    out = []
    while (it := src.next()) is not None:
        out.append(it.index)
    return out


def test_static_share_is_index_mod_dp():
    shares = []
    for r in range(3):
        s = StaticShare()
        s.start(items(10), ctx(r, 3))
        shares.append(drain(s))
    assert shares == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


@pytest.mark.parametrize("tasks,dp", [(1, 1), (3, 2), (4, 1), (2, 3)])
def test_array_share_is_one_global_deterministic_split(tasks, dp):
    n = 23
    seen = []
    for k in range(tasks):
        for r in range(dp):
            s = ArrayShare(k, tasks)
            s.start(items(n), ctx(r, dp))
            got = drain(s)
            s2 = ArrayShare(k, tasks)              # the same task computes the same share every time
            s2.start(items(n), ctx(r, dp))
            assert drain(s2) == got
            assert all(i % (tasks * dp) == k * dp + r for i in got)
            seen += got
    assert sorted(seen) == list(range(n))          # every row exactly once over all tasks x replicas


def test_array_position_from_slurm_env():
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_STEP": "2",
           "SLURM_ARRAY_TASK_MAX": "11"}
    assert array_position_from_env(env) == (1, 4)  # ids 5, 7, 9, 11
    assert array_position_from_env({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"}) == (2, 3)
    with pytest.raises(ValueError, match="not a Slurm array task"):
        array_position_from_env({})
    src = make_source(SimpleNamespace(source="array", array_task=None, array_tasks=None),
                      {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3"})
    assert (src.task, src.tasks) == (1, 3)
    with pytest.raises(ValueError, match="work.array_task=3, work.array_tasks=3"):
        make_source(SimpleNamespace(source="array", array_task=3, array_tasks=3))


def test_queue_offers_every_row_each_replica_from_its_own_offset():
    a, b = ClaimQueue(), ClaimQueue()
    a.start(items(6), ctx(0, 2))
    b.start(items(6), ctx(1, 2))
    assert drain(a) == [0, 1, 2, 3, 4, 5] and drain(b) == [3, 4, 5, 0, 1, 2]


# -- claims --------------------------------------------------------------------------------------------------------
def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def test_claim_is_exclusive_and_released(tmp_path):
    a, b = Claims(tmp_path, "a"), Claims(tmp_path, "b")
    assert a.acquire("x") is None and a.still_mine("x")
    held = b.acquire("x")
    assert held is not None and held.owner == "a" and held.pid == os.getpid()
    a.release("x")
    assert not (tmp_path / "claims" / "x.claim").exists()
    assert b.acquire("x") is None and b.still_mine("x") and not a.still_mine("x")


def test_claim_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    (tmp_path / "claims").mkdir()
    import socket
    (tmp_path / "claims" / "x.claim").write_text(json.dumps({"owner": "ghost", "host": socket.gethostname(),
                                                              "pid": dead_pid(), "since": time.time()}))
    c = Claims(tmp_path, "me", timeout_s=3600)
    assert c.acquire("x") is None and c.still_mine("x")


def test_claim_of_another_host_is_taken_over_only_after_the_timeout(tmp_path):
    (tmp_path / "claims").mkdir()
    p = tmp_path / "claims" / "x.claim"
    p.write_text(json.dumps({"owner": "far", "host": "elsewhere", "pid": 1, "since": time.time()}))
    c = Claims(tmp_path, "me", timeout_s=60)
    assert c.acquire("x").owner == "far"                  # fresh heartbeat: held
    old = time.time() - 120
    os.utime(p, (old, old))
    assert c.acquire("x") is None and c.still_mine("x")    # stale: taken over


def test_heartbeat_keeps_a_claim_fresh_and_notices_a_takeover(tmp_path):
    c = Claims(tmp_path, "me", timeout_s=1.0)
    with c:
        assert c.acquire("x") is None
        p = tmp_path / "claims" / "x.claim"
        old = time.time() - 100
        os.utime(p, (old, old))
        time.sleep(0.8)                                     # the heartbeat (every timeout/5, at least 0.5 s) ran
        assert time.time() - p.stat().st_mtime < 5
        p.write_text(json.dumps({"owner": "thief", "host": "h", "pid": 1, "since": time.time()}))
        time.sleep(0.8)
        assert not c.still_mine("x")
    assert p.exists()                                       # release never removes someone else's claim


def test_ids_never_collide_with_claim_bookkeeping(tmp_path):
    c = Claims(tmp_path, "me")
    for i in ("a", "a.claim", "a.takeover", ".a.claim.me", "a.claim.claim"):
        assert c.acquire(i) is None, i
    assert all(c.still_mine(i) for i in ("a", "a.claim", "a.takeover", ".a.claim.me", "a.claim.claim"))


# -- ledger --------------------------------------------------------------------------------------------------------
def test_ledger_merges_writers_skips_torn_lines_and_keeps_old_results(tmp_path):
    (tmp_path / "results.jsonl").write_text('{"id": "old", "status": "ok"}\n{"id": "x", "status": "failed"}\n')
    a, b = Ledger(tmp_path, "wa"), Ledger(tmp_path, "wb")
    a.append({"id": "x", "status": "ok"})
    b.append({"id": "y", "status": "ok"})
    with open(tmp_path / "ledger" / "wb.jsonl", "a") as fh:
        fh.write('{"id": "z", "stat')                       # a writer killed mid-append
    latest = Ledger(tmp_path, "reader").latest()
    assert {k: v["status"] for k, v in latest.items()} == {"old": "ok", "x": "ok", "y": "ok"}
    a.write_merged_view()
    lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == ["old", "x", "x", "y"] and lines[-1]["writer"] == "wb"
    again = Ledger(tmp_path, "reader").records()           # the view read back with the per-writer files: no doubles
    assert len(again) == 4


def test_ledger_never_redacts_an_id_that_looks_like_a_token(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_API_TOKEN", "tok-12345678")
    tokenish = "sk-" + "A" * 24
    Ledger(tmp_path, "w").append({"id": tokenish, "status": "ok", "error": "tok-12345678 leaked"})
    rec = Ledger(tmp_path, "r").latest()[tokenish]
    assert rec["id"] == tokenish and "tok-12345678" not in rec["error"]

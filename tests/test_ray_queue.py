"""The Ray job's row queue (wan_dist/gangs/queue.py) and the driver's pure helpers, without Ray: lease / ack /
requeue, attempts, a lost gang's rows, the static split, the queue rebuilt from the ledger, a dead gang's claims
released, and the gang checks (gang size, placement) as ValueErrors naming field, value and rule."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from wan_dist import config as config_mod
from wan_dist.batch.claims import Claims
from wan_dist.batch.manifest import Item
from wan_dist.batch.outputs import OutputDir
from wan_dist.gangs.driver import check_address, gang_device, resolve
from wan_dist.gangs.rows import queue_rows, release_writer
from wan_dist.gangs.placement import check_fits
from wan_dist.gangs.queue import RowQueue

ROWS = [(0, "a"), (1, "b"), (2, "c")]


def test_fast_gangs_take_more_rows_and_each_row_is_leased_once():
    q = RowQueue(ROWS, max_attempts=3)
    assert q.lease(0) == (0, 1) and q.lease(1) == (1, 1)
    q.ack(0, "a", "ok")
    assert q.lease(0) == (2, 1)                  # gang 0 was faster: it takes the next row
    q.ack(0, "c", "skipped")
    assert q.lease(0) is None and q.lease(1) is None
    q.ack(1, "b", "ok")
    assert q.finals() == {"a": "ok", "b": "ok", "c": "skipped"}
    p = q.poll()
    assert [(e["id"], e["outcome"], e["gang"]) for e in p["events"]] == [("a", "ok", 0), ("c", "skipped", 0),
                                                                          ("b", "ok", 1)]
    assert p["pending"] == 0 and p["leased"] == 0 and q.poll()["events"] == []


def test_failed_rows_are_retried_until_max_attempts_then_final_failed():
    q = RowQueue(ROWS[:2], max_attempts=2)
    assert q.lease(0) == (0, 1)
    q.ack(0, "a", "failed")                      # back of the queue: the other rows go first
    assert q.lease(0) == (1, 1)
    assert q.lease(1) == (0, 2)                  # attempt 2, on whichever gang asks
    q.ack(1, "a", "failed")
    assert q.finals() == {"a": "failed"} and q.lease(1) is None
    ev = [e for e in q.poll()["events"] if e["id"] == "a"]
    assert [(e["attempt"], e["final"]) for e in ev] == [(1, None), (2, "failed")]


def test_a_lost_gang_returns_its_rows_to_the_front_and_late_acks_are_ignored():
    q = RowQueue(ROWS, max_attempts=2)
    q.lease(0)
    q.lease(1)
    assert q.gang_lost(1) == []                  # b goes back, first in line, attempt 2 next time
    q.ack(1, "b", "ok")                          # a word from the dead gang: not its row any more
    assert "b" not in q.finals()
    assert q.lease(0) == (1, 2)
    assert q.gang_lost(0) == [{"id": "b", "index": 1, "attempts": 2}]   # gang 0 held a and b
    assert q.finals() == {"b": "failed"}         # b lost twice = out of attempts: the driver records it
    assert q.lease(2) == (0, 2)                  # a (also lost with gang 0) comes back before c


def test_held_keeps_the_lease_stopped_is_not_an_attempt_and_stop_ends_leasing():
    q = RowQueue(ROWS, max_attempts=1)
    q.lease(0)
    q.ack(0, "a", "held")                        # another writer makes it; the runner revisits it
    assert q.poll()["leased"] == 1
    q.ack(0, "a", "stopped")
    assert q.lease(0) == (0, 1)                  # the stop used no attempt (max_attempts=1 still allows it)
    q.stop()
    assert q.lease(1) is None


def test_static_split_gives_each_gang_only_its_own_rows():
    q = RowQueue(ROWS, max_attempts=1, assign={"a": 0, "b": 1, "c": 0})
    assert q.lease(1) == (1, 1) and q.lease(1) is None
    assert q.pending_for(0) == 2 and q.pending_for(1) == 0
    assert q.lease(0) == (0, 1) and q.lease(0) == (2, 1)


def _items(ids, settings="h1"):
    return [Item(i, i + 2, SimpleNamespace(id=x), settings=settings) for i, x in enumerate(ids)]


def test_queue_rebuilt_from_the_ledger(tmp_path):
    out = OutputDir(tmp_path / "out", writer="w1")
    out.prepare()
    out.append_ledger({"id": "b", "status": "failed", "error": "x", "settings": "h1"})
    out.append_ledger({"id": "c", "status": "ok", "settings": "h1"})   # no files behind it: not complete, made again
    reader = OutputDir(out.root, writer="w2")
    rows, complete, failed = queue_rows(_items("abc"), reader, retry_failed=False, on_change="stop")
    assert rows == [(0, "a"), (2, "c")] and (complete, failed) == (0, 1)
    rows, _, failed = queue_rows(_items("abc"), reader, retry_failed=True, on_change="stop")
    assert rows == [(0, "a"), (1, "b"), (2, "c")] and failed == 0
    # b failed with other settings: queued for the gang's runner to apply batch.on_change (redo / stop), not for keep
    rows, _, failed = queue_rows(_items("abc", settings="h2"), reader, retry_failed=False, on_change="redo")
    assert rows == [(0, "a"), (1, "b"), (2, "c")] and failed == 0
    rows, _, failed = queue_rows(_items("abc", settings="h2"), reader, retry_failed=False, on_change="keep")
    assert rows == [(0, "a"), (2, "c")] and failed == 1


def test_a_dead_gangs_claims_and_temp_files_are_released(tmp_path):
    out = OutputDir(tmp_path / "out", writer="driver")
    dead, alive = Claims(out.root, "dead-1"), Claims(out.root, "alive-2")
    assert dead.acquire("x.1") is None and alive.acquire("y") is None
    (out.root / ".partial" / "dead-1").mkdir(parents=True)
    (out.root / ".partial" / "dead-1" / "tmp").write_bytes(b"half")
    release_writer(out, "dead-1")
    assert sorted(p.name for p in (out.root / "claims").iterdir()) == ["y.claim"]
    assert not (out.root / ".partial" / "dead-1").exists()


def _cfg(*over):
    return config_mod.compose(["ckpt_dir=/x", "prompt=p", "device=cpu", *over])


def test_gang_checks_name_field_value_and_rule():
    with pytest.raises(ValueError, match=r"parallel.dp=2: under Ray the gangs are the data-parallel replicas; "
                                         r"set ray.gangs=2"):
        resolve(_cfg("parallel.dp=2"))
    with pytest.raises(ValueError, match=r"ray.gang_size=3: a gang is one model replica .* = 2 rank\(s\)"):
        resolve(_cfg("parallel.ulysses=2", "ray.gang_size=3"))
    cfg, lay, size = resolve(_cfg("parallel.ulysses=2", "out_dir=rel"))
    assert size == 2 and lay.dp == 1 and lay.ulysses == 2 and cfg.out_dir.startswith("/")
    with pytest.raises(ValueError, match=r"ray.cpus_per_rank=0.0: must be > 0"):
        _cfg("ray.cpus_per_rank=0")
    with pytest.raises(ValueError, match=r"ray.address='nowhere': must be local, auto, ray://HOST:PORT"):
        _cfg("ray.address=nowhere")


def test_placement_check_names_the_short_resource():
    nodes = [{"Alive": True, "Resources": {"CPU": 4.0}}, {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]
    r = _cfg("ray.gpus_per_rank=1", "ray.cpus_per_rank=2").ray
    check_fits(nodes, r, 1)
    with pytest.raises(ValueError, match=r"= 4 CPU, 2 GPU on one node: no node .* GPU short: the largest node has "
                                         r"8 CPU, 1 GPU \(2 node\(s\) alive\).*ray.gpus_per_rank=0 runs on CPUs"):
        check_fits(nodes, r, 2)
    with pytest.raises(ValueError, match=r"CPU short: the largest node has 8 CPU"):
        check_fits(nodes, _cfg("ray.gpus_per_rank=0", "ray.cpus_per_rank=3").ray, 3)


def test_an_address_where_nothing_listens_is_a_usage_error_not_a_long_wait():
    import socket
    with socket.socket() as sock:                 # a port that was free a moment ago: nothing listens there now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ValueError, match=rf"ray.address='127.0.0.1:{port}': no Ray cluster answers there"):
        check_address(f"127.0.0.1:{port}")
    check_address("auto")                          # resolved by Ray itself


def test_the_driver_checks_settings_for_the_gangs_device_not_its_own():
    from wan_dist.models.device import dtype_names
    assert gang_device(_cfg("device=auto", "ray.gpus_per_rank=1")) == "cuda"   # dtype=auto: bf16 there
    assert gang_device(_cfg("ray.gpus_per_rank=1")) == "cpu"          # device=cpu given: as given
    assert gang_device(_cfg("device=auto", "ray.gpus_per_rank=0")) == "cpu"
    assert dtype_names("auto", "auto", "fp32", "cuda") == {"dtype": "bfloat16", "t5_dtype": "bfloat16",
                                                           "vae_dtype": "float32"}
    assert dtype_names("auto", "fp32", "fp32", "cpu")["dtype"] == "float32"

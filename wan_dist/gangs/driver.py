"""The driver of a Ray job (launch/ray_run.py): gangs of ranks pulling manifest rows from one queue.

    main(cfg)   validate (exit 2 before Ray starts), connect, check and place every gang (exit 2 when the cluster
                cannot hold them), write config.yaml, start the dispenser (queue.py, rebuilt from the ledger) and the
                gangs, watch them, rebuild dead ones, log, write results.jsonl, return the exit code

Watching: `ray.wait` on every rank's `run`. A rank that died or raised makes its whole gang lost: every rank killed,
the placement group removed, the gang's rows back to the queue (or recorded failed after ray.max_item_attempts),
its claims and temp files released (the writer is known dead, so no one waits for the claim timeout), and the gang
rebuilt in its slot (at most ray.max_gang_restarts times). SIGINT / SIGTERM / SIGUSR1: no more leases, every rank's
stop flag set; the gangs stop at their next safe point and the job exits 75. A second Ctrl-C kills the gangs.

One logger for the whole job: the driver. Gangs log no metrics; the driver reads each finished row's sidecar (the
dispenser tells it which) and sends it to the sink (W&B when logger=wandb), and shows the job's progress.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import time

from .. import config as config_mod
from ..batch.claims import Claims
from ..batch.outputs import OutputDir
from ..batch.preempt import StopFlag
from ..batch.runner import Summary
from ..distributed.context import RunContext
from ..distributed.layout import check_layout
from ..exit_codes import ExitCode, worst
from ..observability.logs import setup_logging
from ..observability.run_info import versions
from ..observability.sinks import make_sink
from ..worker import user_error, validate_inputs
from .gang import Gang, short
from .placement import check_fits, not_placed
from .progress import JobProgress
from .queue import RowQueue

log = logging.getLogger("wan_dist.ray")
POLL_S = 0.5


def resolve(cfg):
    """(cfg with absolute paths, the gang's layout, ranks per gang); ValueError naming the field on a bad gang."""
    p, r = cfg.parallel, cfg.ray
    replica = p.cfg * p.ulysses * p.ring
    if p.dp not in (-1, 1):
        raise ValueError(f"parallel.dp={p.dp}: under Ray the gangs are the data-parallel replicas; set "
                         f"ray.gangs={p.dp} and leave parallel.dp=-1")
    size = r.gang_size or replica
    if size != replica:
        raise ValueError(f"ray.gang_size={r.gang_size}: a gang is one model replica of parallel.cfg x ulysses x "
                         f"ring = {p.cfg} x {p.ulysses} x {p.ring} = {replica} rank(s); set ray.gang_size={replica} "
                         "or leave it null")
    absolute = {k: os.path.abspath(getattr(cfg, k)) for k in ("out_dir", "ckpt_dir", "manifest", "image")
                if getattr(cfg, k) is not None}             # the rank actors' working directory is not ours
    cfg = dataclasses.replace(cfg, **absolute)
    return cfg, check_layout(cfg, size), size


def check_address(address: str) -> None:
    """A HOST:PORT address must answer: ray.init waits minutes for a GCS that is not there."""
    if address in ("local", "auto") or address.startswith("ray://"):
        return
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as e:
        raise ValueError(f"ray.address={address!r}: no Ray cluster answers there ({e}); give the head's GCS "
                         "address (`ray status` on the head shows it), or auto on a cluster node") from None


def connect(r) -> bool:
    """Connect to (or, address=local, start) Ray unless this process already did; True when it started here."""
    import ray
    if ray.is_initialized():
        return False
    check_address(r.address)
    try:
        if r.address == "local":     # a private one-machine Ray: loopback only, no dashboard
            ray.init(address="local", _node_ip_address="127.0.0.1", _temp_dir=r.temp_dir, include_dashboard=False)
        else:
            ray.init(address=r.address)
    except (ConnectionError, RuntimeError, ValueError) as e:     # no cluster there, version mismatch, ...
        lines = str(e).strip().splitlines()
        raise ValueError(f"ray.address={r.address!r}: cannot start or join Ray ({type(e).__name__}: "
                         f"{lines[0] if lines else ''}); use local, auto (with a running cluster or RAY_ADDRESS), "
                         "ray://HOST:PORT or a cluster's HOST:PORT") from None
    return True


def main(cfg, stop: StopFlag | None = None, *, static_split: bool = False) -> ExitCode:
    """One Ray job. `static_split` (bench/queue_balance.py's baseline): gang k gets rows i % gangs == k only."""
    setup_logging(0, tag="driver")
    own_stop = stop is None
    stop = (stop or StopFlag()).install()
    try:
        try:
            cfg, lay, size = resolve(cfg)
            items = validate_inputs(cfg, RunContext(), lay)
        except ValueError as e:
            return user_error(RunContext(), e)
        try:
            started = connect(cfg.ray)
        except ValueError as e:
            return user_error(RunContext(), e)
        stop.reclaim()                         # ray.init replaced the SIGTERM handler with one that exits at once
        try:
            return Job(cfg, size, items, stop, static_split).run()
        except ValueError as e:
            return user_error(RunContext(), e)
        finally:
            if started:
                import ray
                ray.shutdown()
    finally:
        if own_stop:
            stop.restore()


def queue_rows(items, out: OutputDir, retry_failed: bool) -> tuple[list[tuple[int, str]], int, int]:
    """The queue rebuilt from the ledger: (rows to make, already complete, recorded failed and not retried)."""
    latest = out.ledger.latest(refresh=True)
    rows, complete, failed = [], 0, 0
    for it in items:
        rec = latest.get(it.request.id)
        if out.is_complete(it.request.id, rec):
            complete += 1
        elif rec is not None and rec.get("status") == "failed" and not retry_failed:
            failed += 1
        else:
            rows.append((it.index, it.request.id))
    return rows, complete, failed


def release_writer(out: OutputDir, writer: str | None) -> None:
    """A dead gang's claims and temp files: its processes are gone, so nobody needs to wait for the claim timeout."""
    if writer is None:
        return
    dead = Claims(out.root, writer)
    for p in sorted((out.root / "claims").glob("*.claim")):
        dead.release(p.name[: -len(".claim")])
    shutil.rmtree(out.root / ".partial" / writer, ignore_errors=True)


class Job:
    def __init__(self, cfg, size: int, items, stop: StopFlag, static_split: bool):
        self.cfg, self.r, self.size, self.items, self.stop = cfg, cfg.ray, size, items, stop
        self.by_id = {it.request.id: it for it in items}
        self.static_split = static_split
        self.stopping: str | None = None       # why the gangs were asked to stop
        self.codes: list[int] = []             # exit codes of the gangs that finished
        self.deaths = [0] * self.r.gangs
        self.live: dict[int, Gang] = {}
        self.exhausted = False

    # -- start ------------------------------------------------------------------------------------------------------
    def _place(self, gangs: list[Gang]) -> bool:
        """Wait until every gang's placement group is ready: True; False when a stop was asked meanwhile;
        ValueError after ray.placement_timeout_s. The groups are removed unless all were placed."""
        import ray
        refs = [g.pg.ready() for g in gangs]
        deadline = time.monotonic() + self.r.placement_timeout_s
        ready: list = []
        while len(ready) < len(refs) and time.monotonic() < deadline and not self.stop.requested:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=min(POLL_S, self.r.placement_timeout_s))
        if len(ready) == len(refs):
            return True
        for g in gangs:
            g.release()
        if self.stop.requested:
            return False
        raise ValueError(not_placed(self.r, self.size, len(ready), ray.cluster_resources(),
                                    ray.available_resources()))

    def _start(self, g: Gang) -> None:
        env = {k: v for k, v in os.environ.items() if k.startswith("WAN_DIST_TEST_")}   # test hooks reach the ranks
        g.spawn(env)
        self.live[g.slot] = g

    def _launch(self, g: Gang) -> None:
        try:
            g.launch(self.cfg, {"run_id": self.run_id, "gangs": self.r.gangs}, self.dispenser)
        except Exception as e:  # noqa: BLE001 - rank 0 died while starting: the gang is lost like any other
            self._lost(g, e)

    def run(self) -> ExitCode:
        import ray
        check_fits(ray.nodes(), self.r, self.size)
        first = [Gang(k, 0, self.size, self.r) for k in range(self.r.gangs)]
        if not self._place(first):
            log.warning("stopped by %s while placing the gangs; nothing was run", signal.Signals(self.stop.signum).name)
            return ExitCode.TEMPFAIL
        out = self.out = OutputDir(self.cfg.out_dir, claim_timeout_s=self.cfg.batch.claim_timeout_s)
        out.prepare()
        self.run_id = out.writer
        rows, complete, failed_before = queue_rows(self.items, out, self.cfg.batch.retry_failed)
        out.write_config({"config": config_mod.to_dict(self.cfg), "versions": versions(),
                          "layout": {"launcher": "ray", "gangs": self.r.gangs, "gang_size": self.size,
                                     **config_mod.to_dict(self.cfg)["parallel"], "dp": self.r.gangs},
                          "work": {"source": "ray-queue", "rows": len(rows), "complete": complete,
                                   "failed_before": failed_before, "static_split": self.static_split},
                          "argv": sys.argv[1:], "run_id": self.run_id})
        assign = {i: idx % self.r.gangs for idx, i in rows} if self.static_split else None
        self.dispenser = ray.remote(RowQueue).options(num_cpus=0, max_restarts=0).remote(
            rows, self.r.max_item_attempts, assign)
        self.sink = make_sink(self.cfg, out.root, is_logger=True, run_id=self.run_id)
        self.sink.log_config(config_mod.to_dict(self.cfg))
        self.progress = JobProgress(len(rows), self.cfg.batch.progress)
        log.info("%d row(s): %d to make, %d already complete, %d failed before (not retried); %d gang(s) of %d "
                 "rank(s)", len(self.items), len(rows), complete, failed_before, self.r.gangs, self.size)
        try:
            if rows:
                for g in first:
                    self._start(g)
                for g in first:
                    self._launch(g)
            else:
                for g in first:
                    g.release()
            self._watch()
        except KeyboardInterrupt:              # a second Ctrl-C: no safe point, kill now (nothing half-written stays)
            log.warning("second interrupt: killing every gang")
            self.stopping = self.stopping or "SIGINT"
        finally:
            for g in list(self.live.values()):
                g.kill()
                release_writer(out, g.writer)
            self.live.clear()
        return self._finish(rows, complete, failed_before)

    # -- watch ------------------------------------------------------------------------------------------------------
    def _watch(self) -> None:
        import ray
        while True:
            info = ray.get(self.dispenser.poll.remote())
            self._on_events(info["events"])
            if self.stop.requested and not self.stopping:
                self._stop_all(signal.Signals(self.stop.signum).name, self.stop.signum)   # "SIG...": exit 75
            if not self.live:
                if self.stopping or info["pending"] == 0:
                    return
                if not self._restart_idle():
                    self.exhausted = True
                    return
                continue
            refs = {ref: g for g in self.live.values() for ref in g.running()}
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=POLL_S)
            for ref in ready:
                g = refs[ref]
                if self.live.get(g.slot) is not g:
                    continue                   # a second rank of a gang already declared lost
                err = g.collect(ref)
                if err is not None:
                    self._lost(g, err)
                elif g.finished:
                    self._finished(g)

    def _finished(self, g: Gang) -> None:
        del self.live[g.slot]
        self.codes.append(g.code)
        g.release()
        if g.code in (ExitCode.USAGE, ExitCode.IOERR) and not self.stopping:
            log.error("%s ended with exit %d (%s): stopping every gang", g.name, g.code, ExitCode(g.code).meaning)
            self._stop_all(f"{g.name} ended with exit {g.code}: {ExitCode(g.code).meaning}", signal.SIGTERM)

    def _lost(self, g: Gang, err: BaseException) -> None:
        import ray
        log.error("%s lost: %s; killing its %d rank(s), its row goes back to the queue", g.name, short(err), g.size)
        g.kill()
        self.live.pop(g.slot, None)
        self.deaths[g.slot] += 1
        for f in ray.get(self.dispenser.gang_lost.remote(g.slot)):
            it = self.by_id[f["id"]]
            msg = f"its gang died while making it, {f['attempts']} time(s) (ray.max_item_attempts); last: {short(err)}"
            log.error("row %s recorded failed: %s", f["id"], msg)
            self.out.append_ledger({"id": f["id"], "status": "failed", "error": msg, "row": it.line})
        release_writer(self.out, g.writer)
        if self.stopping:
            return
        if self.deaths[g.slot] > self.r.max_gang_restarts:
            log.error("gang %d died %d time(s): not rebuilt again (ray.max_gang_restarts=%d)", g.slot,
                      self.deaths[g.slot], self.r.max_gang_restarts)
        elif ray.get(self.dispenser.pending_for.remote(g.slot)):
            self._rebuild(g.slot, g.generation + 1)

    def _rebuild(self, slot: int, generation: int) -> bool:
        g = Gang(slot, generation, self.size, self.r)
        try:
            if not self._place([g]):
                return False                   # a stop arrived meanwhile
        except ValueError as e:
            log.error("gang %d cannot be placed again: %s", slot, e)
            self.deaths[slot] = self.r.max_gang_restarts + 1
            return False
        self._start(g)
        self._launch(g)
        return True

    def _restart_idle(self) -> bool:
        """No gang is alive and rows are pending (their gangs finished or died meanwhile): start one that may."""
        import ray
        for slot in range(self.r.gangs):
            if self.deaths[slot] <= self.r.max_gang_restarts and ray.get(self.dispenser.pending_for.remote(slot)):
                if self._rebuild(slot, self.deaths[slot]):
                    return True
        log.error("rows are left and no gang can run them (every gang died more than ray.max_gang_restarts=%d "
                  "times); a rerun resumes them", self.r.max_gang_restarts)
        return False

    def _stop_all(self, why: str, signum: int) -> None:
        import ray
        self.stopping = why
        log.warning("stopping every gang at its next safe point (%s)", why)
        ray.get(self.dispenser.stop.remote())
        for g in self.live.values():
            g.request_stop(signum, f"the Ray job's driver: {why}")

    def _on_events(self, events: list[dict]) -> None:
        for e in events:
            self.progress.row(e, self.r.max_item_attempts)
            if e["outcome"] == "ok":
                try:
                    import json
                    sc = json.loads(self.out.path_for(e["id"], ".json").read_text(encoding="utf-8"))
                except (OSError, ValueError) as err:
                    log.warning("sidecar of %s unreadable (%s); not logged", e["id"], err)
                    continue
                self.sink.log_video(sc, self.out.root / sc.get("outputs", {}).get("mp4", f"videos/{e['id']}.mp4"))

    # -- end --------------------------------------------------------------------------------------------------------
    def _finish(self, rows, complete: int, failed_before: int) -> ExitCode:
        import ray
        try:
            self._on_events(ray.get(self.dispenser.poll.remote())["events"])
            finals = ray.get(self.dispenser.finals.remote())
        finally:
            self.progress.close()
        n = {k: sum(1 for v in finals.values() if v == k) for k in ("ok", "skipped", "failed")}
        left = len(rows) - len(finals)
        by_signal = self.stopping if self.stopping and self.stopping.startswith("SIG") else None
        s = Summary(done=n["ok"], skipped=n["skipped"] + complete, failed=n["failed"], skipped_failed=failed_before,
                    left=left, preempted=by_signal if left else None)
        codes = [c for c in self.codes if c in (ExitCode.USAGE, ExitCode.IOERR)]
        if s.preempted:
            codes.append(ExitCode.TEMPFAIL)
        if s.failed:
            codes.append(ExitCode.ITEMS_FAILED)
        if left and not s.preempted and not codes:
            codes.append(ExitCode.CRASH)       # rows left with no stop asked: every gang died too often
        code = worst(codes)
        self.out.ledger.write_merged_view()
        self.sink.log_summary({"done": s.done, "skipped": s.skipped, "failed": s.failed})
        self.sink.close()
        self.out.drop_partial()
        log.info("summary: %s%s", s.line(), f"; {left} row(s) left (no gang could run them)"
                 if code == ExitCode.CRASH else "")
        log.info("outputs: %s (videos/, results.jsonl); gang deaths per slot: %s", self.out.root, self.deaths)
        return code

"""One Ray job from placement to exit code (the driver's state machine; driver.py starts it).

    run        check_fits + place every gang (exit 2 if the cluster cannot hold them; nothing written), config.yaml,
               the dispenser (RowQueue actor, rebuilt from the ledger), the sink, start the gangs, watch, finish
    _watch     ray.wait on every rank's `run`; queue events -> progress + the one metrics sink; a stop request ->
               RowQueue.stop + every rank's stop flag; a finished gang -> its code; a lost gang -> _lost
    _lost      kill the whole gang, return its rows (or record them failed after ray.max_item_attempts), release its
               claims and temp files, rebuild it in its slot (at most ray.max_gang_restarts times)
    _finish    the exit code from the queue's final states and the gangs' codes; results.jsonl; summary
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

from .. import config as config_mod
from ..batch.outputs import OutputDir, OutputsUnwritable
from ..batch.settings import fields_record
from ..batch.preempt import StopFlag
from ..batch.runner import Summary
from ..exit_codes import ExitCode, worst
from ..observability.run_info import versions
from ..observability.sinks import make_sink
from .gang import Gang, short
from .placement import check_fits, not_placed
from .progress import JobProgress
from .queue import RowQueue
from .rows import queue_rows, release_writer

log = logging.getLogger("wan_dist.ray")
POLL_S = 0.5


class Job:
    def __init__(self, cfg, size: int, items, run_settings: dict, stop: StopFlag, static_split: bool):
        self.cfg, self.r, self.size, self.items, self.stop = cfg, cfg.ray, size, items, stop
        self.run_settings = run_settings
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
        self.run_id = out.writer
        rows, complete, failed_before = queue_rows(self.items, out, self.cfg.batch.retry_failed,
                                                   self.cfg.batch.on_change)
        try:
            out.prepare({"config": config_mod.to_dict(self.cfg), "versions": versions(),
                         "layout": {"launcher": "ray", "gangs": self.r.gangs, "gang_size": self.size,
                                    **config_mod.to_dict(self.cfg)["parallel"], "dp": self.r.gangs},
                         "work": {"source": "ray-queue", "rows": len(rows), "complete": complete,
                                  "failed_before": failed_before, "static_split": self.static_split},
                         "argv": sys.argv[1:], "run_id": self.run_id,
                         "manifest_path": self.cfg.manifest and os.path.abspath(self.cfg.manifest)})
        except OutputsUnwritable as e:
            for g in first:
                g.release()
            print(f"error: {e}", file=sys.stderr, flush=True)
            return ExitCode.IOERR
        except ValueError:
            for g in first:
                g.release()
            raise
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
            self.out.append_ledger({"id": f["id"], "status": "failed", "error": msg, "row": it.line,
                                    "settings": it.settings,   # as the runner records a failure: not a "change"
                                    "settings_fields": fields_record(self.run_settings, it.request,
                                                                     it.image_digest)})
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

"""Run validated items through the generator: skip finished ones, isolate failures, write outputs and the ledger,
stop cleanly on a preemption signal.

Agreement between ranks (so nothing hangs): every decision that changes what the ranks do next goes through a
collective of the RunContext: skip/redo per item and item success through `ctx.replica_all_ok` (the ranks of one
replica make one video together), "stop now" and "more work anywhere" through `ctx.world_any` once per loop turn
(replicas can hold different numbers of items; one that has run out keeps answering until all have).

TEST HOOKS (environment variables, read per item; never set them in production):
  WAN_DIST_TEST_INJECT_NAN=<id>[,<id>...]   the generator makes that item's latents NaN after denoising
                                            (read in wan_dist.pipeline.generator) -> FloatingPointError -> failed.
  WAN_DIST_TEST_SIGKILL_AT=<id>:<stage>     SIGKILL this process at <stage> of item <id>: `after_mp4` (mp4 written,
                                            no sidecar / ledger line yet) or `after_sidecar`; only in the first
                                            attempt (TORCHELASTIC_RESTART_COUNT unset or 0), so a restart completes.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass

from ..observability.figures import item_total, reduce_item_times
from ..observability.timer import StageTimer
from .manifest import Item
from .outputs import OutputDir
from .preempt import Preempted, StopFlag
from .redact import redact
from .sidecar import build_sidecar, peak_memory

log = logging.getLogger(__name__)

# errors of the output filesystem that no retry of the next item can fix: stop the batch with a clear message
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _find_malloc_trim():
    """glibc's malloc_trim, or None (macOS, musl, ...: nothing to do there)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_MALLOC_TRIM = _find_malloc_trim()


def release_freed_memory() -> None:
    """Between items: hand the heap memory the finished item freed back to the OS (glibc `malloc_trim(0)`).

    Why: glibc raises its mmap/trim thresholds dynamically once large blocks (CPU tensors, frames, encoder buffers)
    are freed, so later large blocks come from the heap arenas, and what an item frees there stays in the process's
    RSS, fragmented, instead of going back to the OS. Without this a 200-item CPU batch's RSS drifts up by tens of
    MiB (Python objects flat, glibc free-but-held memory 16-36 MiB); with it RSS stays flat. Only free memory is
    released (no live allocation moves); about 2 ms per item on the tiny CPU bench."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class OutputsUnwritable(RuntimeError):
    """The output directory cannot take more data (disk full, quota, read-only). The batch stops."""


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    skipped_failed: int = 0
    redone: int = 0                  # items with partial / corrupt leftovers that were run again
    preempted: str | None = None     # name of the stop signal, when the run stopped early
    aborted: str | None = None       # why the run stopped early (outputs unwritable)
    left: int = 0                    # items of this replica not reached because of a stop

    def line(self) -> str:
        s = f"{self.done} done, {self.skipped} skipped (already complete), {self.failed} failed"
        if self.redone:
            s += f" ({self.redone} redone: partial or corrupt leftovers)"
        if self.skipped_failed:
            s += f", {self.skipped_failed} earlier failures not retried (batch.retry_failed=true retries them)"
        if self.preempted:
            s += f"; stopped by {self.preempted}, {self.left} left for the next run"
        if self.aborted:
            s += f"; ABORTED ({self.aborted}), {self.left} left for the next run"
        return s

    def as_dict(self) -> dict:
        return {"done": self.done, "skipped": self.skipped, "failed": self.failed, "redone": self.redone,
                "skipped_failed": self.skipped_failed, "preempted": self.preempted, "aborted": self.aborted,
                "left": self.left}


def load_image(path: str | None):
    if path is None:
        return None
    from PIL import Image
    with Image.open(path) as im:
        return im.convert("RGB")


def _test_hook_kill(item_id: str, stage: str) -> None:
    spec = os.environ.get("WAN_DIST_TEST_SIGKILL_AT")
    if not spec or spec != f"{item_id}:{stage}":
        return
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0"):
        return
    log.warning("TEST HOOK WAN_DIST_TEST_SIGKILL_AT=%s: SIGKILL now", spec)
    os.kill(os.getpid(), signal.SIGKILL)


class BatchRunner:
    stop_between_steps = True   # False: a stop signal is only honoured between items

    def __init__(self, *, cfg, spec, generator, out: OutputDir, ctx, model_load_s: float, run_info: dict,
                 sink=None, progress=None):
        self.cfg, self.spec, self.gen, self.out, self.ctx = cfg, spec, generator, out, ctx
        self.model_load_s = model_load_s
        self.run_info = run_info
        self.sink = sink
        self.progress = progress
        self._load_charged = False
        self.stop = StopFlag()

    def my_items(self, items: list[Item]) -> list[Item]:
        """Data parallel: rows dealt to replicas by row index."""
        return [it for it in items if it.index % self.ctx.dp_size == self.ctx.dp_rank]

    def _agree(self, flag: bool) -> bool:
        """Replica-wide AND (no collective when the replica is one rank)."""
        return self.ctx.replica_all_ok(flag) if self.ctx.replica_size > 1 else flag

    def plan(self, items: list[Item], summary: Summary) -> list[Item]:
        ledger = self.out.read_ledger()
        todo = []
        for it in self.my_items(items):
            item_id = it.request.id
            if self.ctx.is_writer:  # a crash mid-write leaves .<id>.mp4.tmp-<pid>; only this replica writes <id>
                for suffix in (".mp4", ".json"):
                    for p in self.out.remove_stale_temps(item_id, suffix):
                        log.warning("removed a partial file from an interrupted run: %s", p)
            rec = ledger.get(item_id)
            complete = self._agree(self.out.is_complete(item_id, rec))
            if complete:
                summary.skipped += 1
                continue
            failed_before = rec is not None and rec.get("status") == "failed"
            if failed_before and not self.cfg.batch.retry_failed:
                summary.skipped_failed += 1
                continue
            if not failed_before and (rec is not None or self.out.has_leftovers(item_id)):
                log.warning("item %s: leftovers are incomplete or corrupt; redoing it", item_id)
                summary.redone += 1
            todo.append(it)
        return todo

    def run(self, items: list[Item]) -> Summary:
        summary = Summary()
        todo = self.plan(items, summary)
        inner_on_step = self.gen.on_step

        def on_step(i: int, total: int) -> None:
            if inner_on_step is not None:
                inner_on_step(i, total)
            # between two denoise steps (not after the last: that item is as good as done)
            if self.stop_between_steps and i + 1 < total and not self._agree(not self.stop.requested):
                raise Preempted(f"stop requested at denoise step {i + 1}/{total}")

        self.gen.on_step = on_step
        stopped_mid_item = False
        n = 0
        try:
            with self.stop:
                while True:
                    # one turn = at most one item per replica; every rank of the world takes part in both calls
                    stop = self.ctx.world_any(self.stop.requested or stopped_mid_item or summary.aborted is not None)
                    more = self.ctx.world_any(n < len(todo))
                    if stop:
                        if summary.aborted is None:
                            summary.preempted = (signal.Signals(self.stop.signum).name if self.stop.requested
                                                 else "a stop signal on another rank")
                        break
                    if not more:
                        break
                    if n < len(todo):
                        it = todo[n]
                        if self.progress:
                            self.progress.item_start(n, len(todo), it.request.id)
                        ok = self.run_one(it, summary)
                        release_freed_memory()   # the item's buffers are gone: RSS stays flat over a long batch
                        if self.progress:
                            self.progress.item_end(bool(ok))
                        if ok is None:  # preempted or aborted mid-item: nothing written, the next run redoes it
                            stopped_mid_item = True
                        else:
                            n += 1
        finally:
            self.gen.on_step = inner_on_step
        summary.left = len(todo) - n
        return summary

    # -- one item -------------------------------------------------------------------------------------------------
    def _fail(self, it: Item, summary: Summary, err: str) -> bool:
        log.error("item %s failed: %s", it.request.id, err)
        summary.failed += 1
        if self.ctx.is_writer:
            self.out.append_ledger(redact({"id": it.request.id, "status": "failed", "error": err, "row": it.line}))
        return False

    def run_one(self, it: Item, summary: Summary) -> bool | None:
        """True ok, False failed (recorded), None preempted mid-item (nothing written)."""
        req = it.request
        timer = StageTimer(self.gen.device)
        t0 = time.perf_counter()
        err = None
        # 1. the image (may have changed or vanished since validation)
        try:
            image = load_image(req.image)
        except Exception as e:
            image, err = None, f"cannot read image {req.image!r}: {type(e).__name__}: {e}"
        if not self._agree(err is None):
            return self._fail(it, summary, err or "another rank of this replica could not read the image")
        # 2. generate (NaN/Inf latents raise FloatingPointError inside the generator)
        result = None
        try:
            result = self.gen.generate(req, image, timer)
        except Preempted as e:
            log.warning("item %s: %s; nothing of it is written, the next run redoes it", req.id, e)
            return None
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # one bad item never stops the batch
            err = f"{type(e).__name__}: {e}"
            log.debug("item %s traceback:\n%s", req.id, traceback.format_exc())
        if not self._agree(err is None):
            return self._fail(it, summary, err or "another rank of this replica failed this item")
        # every rank of the replica succeeded: stage/step times become the replica's (max over ranks; collective)
        t0 = reduce_item_times(self.ctx, timer, result.denoise, t0)
        # 3. save (writer only)
        disk_full = False
        if self.ctx.is_writer:
            try:
                self._save(it, result, timer, t0)
            except OutputsUnwritable as e:
                err, disk_full = str(e), True
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:
                err = f"{type(e).__name__}: {e}"
                log.debug("item %s traceback:\n%s", req.id, traceback.format_exc())
        if not self._agree(err is None):
            if not self._agree(not disk_full):
                # nothing is recorded for the item (the next run redoes it); the batch stops everywhere
                summary.aborted = err or "the writer of this replica cannot write to out_dir"
                log.error("item %s: %s", req.id, summary.aborted)
                return None
            return self._fail(it, summary, err or "saving failed on the writer of this replica")
        summary.done += 1
        return True

    def _save(self, it: Item, result, timer: StageTimer, t0: float) -> None:
        req, cfg = result.request, self.cfg
        outputs = {"mp4": f"videos/{req.id}.mp4", "sidecar": f"videos/{req.id}.json"}
        try:
            with timer.stage("save"):  # the sidecar itself (small) is written after its own numbers are known
                outputs.update(self.write_extras(req.id, result))
                video = self.out.write_video(req.id, result.frames.numpy(), cfg.model.fps,
                                             lossless=cfg.output.lossless, crf=cfg.output.crf)
            _test_hook_kill(req.id, "after_mp4")
            timings = timer.as_dict()
            if not self._load_charged:  # the first video this process makes carries the one-time model load
                timings["model_load"] = self.model_load_s
                self._load_charged = True
            timings["total"] = item_total(timings, time.perf_counter() - t0)
            sidecar = build_sidecar(result, model=self.spec.name, fps=cfg.model.fps, is_moe=self.spec.is_moe,
                                    timings=timings, layout=self.ctx.describe(), run=self.run_info,
                                    outputs=outputs, video=video, memory=peak_memory(self.gen.device))
            self.out.write_sidecar(req.id, sidecar)
            _test_hook_kill(req.id, "after_sidecar")
            self.out.append_ledger({"id": req.id, "status": "ok", "row": it.line, "mp4": outputs["mp4"],
                                    "sidecar": outputs["sidecar"], "seed": req.seed,
                                    "timings": sidecar["timings"], "frames_per_second": sidecar["frames_per_second"]})
        except OSError as e:
            if e.errno in DISK_ERRNOS:
                # the atomic writers removed their temp files; an mp4 without its ledger line is redone later
                raise OutputsUnwritable(f"cannot write outputs of item {req.id} to {self.out.root}: "
                                        f"{os.strerror(e.errno)} ({errno.errorcode[e.errno]}); finished items "
                                        "are kept; free space and rerun to continue") from e
            raise
        if self.sink is not None:
            self.sink.log_video(sidecar, self.out.root / outputs["mp4"])

    def write_extras(self, item_id: str, result) -> dict:
        """Optional outputs (latents, PNG frames); filled in by wan_dist.batch.extras."""
        from .extras import write_extras
        return write_extras(self.out, self.cfg.output, item_id, result, model=self.spec.name)

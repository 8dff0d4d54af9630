"""Run validated items through the generator: claim each one, skip finished ones, isolate failures, write outputs
and the ledger, stop cleanly on a preemption signal.

The candidates come from a work source (batch/work.py). For each, the replica's writer claims the id
(batch/claims.py) and decides -- run it, it is complete, it failed before, another live writer holds it -- and shares
the decision over the replica (`ctx.replica_share`); item success goes through `ctx.replica_all_ok` (the ranks of
one replica make one video together). Replicas are not in lock-step with each other: a stop request travels through
`ctx.announce_stop` / `ctx.stop_announced` (non-blocking) and is agreed inside the replica at each safe point.
Ids another writer holds are revisited after the replica's own candidates until they are done (by whoever holds
them) or claimable: a run that ends with exit 0 leaves its whole share complete. An id the runner would skip (done,
or failed before) whose recorded settings hash is not this run's is never skipped silently: batch.on_change redo runs
it again, keep skips it and counts it, stop (the worker already refused ids known before the run) leaves it and counts
it as a conflict (exit 2). With no generator (worker: the run found `nothing_to_make` when it began, so it loaded no
models) every row is decided as usual; one that has to be made after all (out_dir changed meanwhile) stops the run
with exit 75, and a rerun makes it.

TEST HOOKS (environment variables, read per item; never set them in production):
  WAN_DIST_TEST_INJECT_NAN=<id>[,<id>...]   the generator makes that item's latents NaN after denoising
                                            (read in wan_dist.pipeline.generator) -> FloatingPointError -> failed.
  WAN_DIST_TEST_SIGKILL_AT=<id>:<stage>     SIGKILL this process at <stage> of item <id>: `after_mp4` (mp4 written,
                                            no sidecar / ledger line yet) or `after_sidecar`; only in the first
                                            attempt (TORCHELASTIC_RESTART_COUNT unset or 0, and no leftovers of an
                                            earlier attempt at the item), so a restart or a rebuilt Ray gang completes.
                                            `every_start`: at the start of EVERY attempt under a Ray gang (a poison
                                            row that kills each gang that takes it; no leftovers to tell attempts by).
  WAN_DIST_TEST_ITEM_SLEEP=<id>:<s>[,...]   item <id> sleeps <s> seconds inside its timed work: a replica whose work
                                            does not load this host's CPUs (a GPU), for bench/queue_balance.py.
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

from ..observability.figures import item_total, reduce_cache_counts, reduce_item_times
from ..observability.timer import StageTimer
from . import settings as settings_mod
from .changes import describe_change, differs
from .manifest import Item
from .outputs import UNWRITABLE_ERRNOS, OutputDir, OutputsUnwritable, unwritable_message
from .preempt import Preempted, StopFlag
from .sidecar import build_sidecar, peak_memory

log = logging.getLogger(__name__)

# errors of the output filesystem that no retry of the next item can fix: stop the batch with a clear message
DISK_ERRNOS = UNWRITABLE_ERRNOS


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


class ClaimLost(RuntimeError):
    """Another writer took this item's claim over (this writer looked dead); nothing of it is committed here."""


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    skipped_failed: int = 0
    redone: int = 0                  # items with partial / corrupt leftovers that were run again
    changed: int = 0                 # items made before with other settings, made again (batch.on_change=redo)
    kept: int = 0                    # items made before with other settings, kept (batch.on_change=keep)
    conflicts: int = 0               # items another run made meanwhile with other settings (on_change=stop)
    held: int = 0                    # items left to another live writer when this run stopped
    lost: int = 0                    # items whose claim another writer took over mid-item (not committed here)
    preempted: str | None = None     # why the run stopped early (a stop signal, here or on another rank)
    aborted: str | None = None       # why the run stopped early (outputs unwritable)
    left: int = 0                    # candidates of this replica not reached because of a stop

    def line(self) -> str:
        s = f"{self.done} done, {self.skipped} skipped (already complete), {self.failed} failed"
        if self.redone:
            s += f" ({self.redone} redone: partial or corrupt leftovers)"
        if self.changed:
            s += f", {self.changed} made again with changed settings (batch.on_change=redo)"
        if self.kept:
            s += f", {self.kept} made before with other settings and KEPT as they are (batch.on_change=keep)"
        if self.conflicts:
            s += (f", {self.conflicts} NOT MADE: another run made them meanwhile with other settings "
                  "(batch.on_change=stop; rerun with redo or keep)")
        if self.skipped_failed:
            s += f", {self.skipped_failed} earlier failures not retried (batch.retry_failed=true retries them)"
        if self.lost:
            s += f", {self.lost} taken over by another writer"
        if self.preempted:
            s += f"; stopped by {self.preempted}, {self.left + self.held} left for the next run"
        if self.aborted:
            s += f"; ABORTED ({self.aborted}), {self.left + self.held} left for the next run"
        return s

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def total(cls, parts: list["Summary"]) -> "Summary":
        out = cls()
        for p in parts:
            for k in ("done", "skipped", "failed", "skipped_failed", "redone", "changed", "kept", "conflicts", "held",
                      "lost", "left"):
                setattr(out, k, getattr(out, k) + getattr(p, k))
            out.preempted = out.preempted or p.preempted
            out.aborted = out.aborted or p.aborted
        return out


def load_image(path: str | None):
    if path is None:
        return None
    from PIL import Image
    with Image.open(path) as im:
        return im.convert("RGB")


def _test_hook_sleep(item_id: str) -> None:
    for part in filter(None, os.environ.get("WAN_DIST_TEST_ITEM_SLEEP", "").split(",")):
        key, _, seconds = part.rpartition(":")
        if key == item_id:
            time.sleep(float(seconds))


def _test_hook_kill(item_id: str, stage: str, redo: bool = False) -> None:
    spec = os.environ.get("WAN_DIST_TEST_SIGKILL_AT")
    if not spec or spec != f"{item_id}:{stage}" or redo:
        return
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0"):
        return
    log.warning("TEST HOOK WAN_DIST_TEST_SIGKILL_AT=%s: SIGKILL now", spec)
    os.kill(os.getpid(), signal.SIGKILL)


RUN, COMPLETE, FAILED_BEFORE, HELD = "run", "complete", "failed-before", "held"
KEPT, CONFLICT, ABORT, CHANGED = "kept", "conflict", "abort", "changed"
SKIPPED = (COMPLETE, FAILED_BEFORE, KEPT, CONFLICT)     # what the ledger rule never runs


def ledger_rule(complete: bool, rec: dict | None, it: Item, *, retry_failed: bool, on_change: str) -> str:
    """What out_dir's record of one row means for this run (claims aside): COMPLETE, FAILED_BEFORE (and
    batch.retry_failed is off), KEPT / CONFLICT (made or failed before with other settings, batch.on_change keep /
    stop), CHANGED (likewise, on_change=redo: made again) or RUN. `complete`: out.is_complete(id, rec)."""
    skip = complete or (rec is not None and rec.get("status") == "failed" and not retry_failed)
    if skip and differs(rec, it):   # made (or failed) with other settings: never skipped silently
        return {"redo": CHANGED, "keep": KEPT}.get(on_change, CONFLICT)
    if complete:
        return COMPLETE
    return FAILED_BEFORE if skip else RUN


def nothing_to_make(out: OutputDir, items: list[Item], *, retry_failed: bool, on_change: str) -> bool:
    """Every one of `items` would be skipped by the ledger rule (none of them is made): the models need not be
    loaded. First a pass over the ledger and the mp4s' presence only (what is_complete needs before it reads
    anything), which finds a row to make at once in a batch with work; only when every row passes it are the videos
    checked as the runner will check them (is_complete: the sidecar, the size, the packets). An empty list is
    nothing to make."""
    latest = out.ledger.latest()

    def all_skipped(complete) -> bool:
        for it in items:
            rec = latest.get(it.request.id)
            if ledger_rule(complete(it.request.id, rec), rec, it, retry_failed=retry_failed,
                           on_change=on_change) not in SKIPPED:
                return False
        return True

    def may_be_complete(item_id: str, rec: dict | None) -> bool:    # is_complete's preconditions
        return bool(rec) and rec.get("status") == "ok" and os.path.isfile(out.path_for(item_id, ".mp4"))

    return all_skipped(may_be_complete) and all_skipped(out.is_complete)


class BatchRunner:
    stop_between_steps = True   # False: a stop signal is only honoured between items

    def __init__(self, *, cfg, spec, generator, out: OutputDir, ctx, work, model_load_s: float, run_info: dict,
                 layout: dict, sink=None, progress=None, stop: StopFlag | None = None,
                 run_settings: dict | None = None, compile_s: float = 0.0):
        self.cfg, self.spec, self.gen, self.out, self.ctx, self.work = cfg, spec, generator, out, ctx, work
        self.run_settings = run_settings or {}   # the run part of every item's settings (batch/settings.py)
        self.model_load_s = model_load_s
        self.compile_s = compile_s
        self.run_info = run_info
        self.layout = layout
        self.sink = sink
        self.progress = progress
        self._load_charged = False
        self._redo = False
        self.stop = stop or StopFlag()
        self.poll_s = min(5.0, max(0.2, cfg.batch.claim_timeout_s / 10))

    def _agree(self, flag: bool) -> bool:
        """Replica-wide AND (no collective when the replica is one rank)."""
        return self.ctx.replica_all_ok(flag)

    def stop_reason(self) -> str | None:
        """A stop signal here, or announced by any rank of the run (non-blocking)."""
        if self.stop.requested:
            self.ctx.announce_stop(signal.Signals(self.stop.signum).name)
        return self.ctx.stop_announced()

    def _stopping(self) -> bool:
        """Agreed inside the replica at a safe point: every rank of it stops at the same place."""
        return not self._agree(self.stop_reason() is None)

    # -- what to do with a candidate (the writer decides, the replica follows) ---------------------------------------
    def decide(self, it: Item) -> tuple[str, str]:
        decision = ("", "")
        if self.ctx.is_writer:
            try:
                decision = self._decide_as_writer(it)
            except OSError as e:          # claims/ or the ledger cannot be written: every rank of the replica stops
                if e.errno not in DISK_ERRNOS:
                    raise
                decision = (ABORT, unwritable_message(self.out.root, e, f"the claim of {it.request.id}"))
        return tuple(self.ctx.replica_share(decision))

    def _decide_as_writer(self, it: Item) -> tuple[str, str]:
        item_id = it.request.id
        retry_failed = self.cfg.batch.retry_failed or self.work.retry(it)   # the work source may retry a failure
        holder = self.out.claims.acquire(item_id)
        if holder is not None:
            return HELD, str(holder)
        latest = self.out.ledger.latest()
        rec = latest.get(item_id)
        if (rec is None or rec.get("status") != "ok") and os.path.lexists(self.out.path_for(item_id, ".json")):
            rec = self.out.ledger.latest(refresh=True).get(item_id)   # finished by another writer since we looked
        what = ledger_rule(self.out.is_complete(item_id, rec), rec, it, retry_failed=retry_failed,
                           on_change=self.cfg.batch.on_change)
        if what in (CHANGED, KEPT, CONFLICT):
            change = describe_change(self.out, it, rec, self.run_settings)
            if what == CHANGED:
                return RUN, "changed:" + ",".join(change.fields)
            self.out.claims.release(item_id)
            return what, f"{', '.join(change.fields)} (made by {change.writer})"
        if what in (COMPLETE, FAILED_BEFORE):
            self.out.claims.release(item_id)
            return what, ""
        if rec is None or rec.get("status") != "failed":
            if rec is not None or self.out.has_leftovers(item_id):
                return RUN, "redo"
        return RUN, ""

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self, items: list[Item]) -> Summary:
        summary = Summary()
        self.work.start(items, self.ctx)
        inner_on_step = self.gen.on_step if self.gen is not None else None

        def on_step(i: int, total: int) -> None:
            if inner_on_step is not None:
                inner_on_step(i, total)
            # between two denoise steps (not after the last: that item is as good as done)
            if self.stop_between_steps and i + 1 < total and self._stopping():
                raise Preempted(f"stop requested at denoise step {i + 1}/{total}")

        if self.gen is not None:
            self.gen.on_step = on_step
        n_cand = (self.work.describe() or {}).get("candidates")
        held: list[Item] = []
        try:
            with self.stop, (self.out.claims if self.ctx.is_writer else _nothing()):
                n = 0
                while True:
                    if self._stopping() or summary.aborted:
                        break
                    it = self.work.next()
                    if it is None:
                        break
                    if self.progress:
                        self.progress.item_start(n, n_cand or n + 1, it.request.id)
                    outcome = self.attempt(it, summary)
                    if self.progress:
                        self.progress.item_end(outcome == "ok")
                    if outcome == HELD:
                        held.append(it)
                    elif outcome == "stopped":
                        summary.left += 1
                        break
                    n += 1
                held = self._revisit(held, summary)
        finally:
            if self.gen is not None:
                self.gen.on_step = inner_on_step
        summary.held = len(held)
        while self.work.next() is not None:          # candidates never reached because of a stop
            summary.left += 1
        if summary.preempted is None and summary.aborted is None and (summary.left or summary.held):
            summary.preempted = self.ctx.stop_announced() or "a stop request"
        return summary

    def _revisit(self, held: list[Item], summary: Summary) -> list[Item]:
        """Ids another live writer held: wait until each is done by it, or free (then run it here)."""
        waited = False
        while held:
            if self._stopping() or summary.aborted:
                return held
            still = []
            for k, it in enumerate(held):
                outcome = self.attempt(it, summary, quiet=True)
                if outcome == HELD:
                    still.append(it)
                elif outcome == "stopped":
                    return still + held[k:]
            if still and not waited:
                log.info("%d item(s) are being made by another writer; waiting for them", len(still))
                waited = True
            held = still
            if held:
                time.sleep(self.poll_s)
        return held

    def attempt(self, it: Item, summary: Summary, quiet: bool = False) -> str:
        """One candidate: decide, then run it if needed. Returns ok | failed | skipped | held | stopped."""
        what, note = self.decide(it)
        item_id = it.request.id
        if what == HELD:
            if not quiet:
                log.info("item %s is being made by another writer: %s; left to it", item_id, note)
            self.work.done(it, HELD)
            return HELD
        if what == COMPLETE:
            summary.skipped += 1
            self.work.done(it, "skipped")
            return "skipped"
        if what == FAILED_BEFORE:
            summary.skipped_failed += 1
            self.work.done(it, "skipped")
            return "skipped"
        if what == KEPT:
            log.warning("item %s was made with other settings (changed: %s); batch.on_change=keep keeps it",
                        item_id, note)
            summary.kept += 1
            self.work.done(it, "skipped")
            return "skipped"
        if what == CONFLICT:
            log.error("item %s was made meanwhile by another run with other settings (changed: %s); not made here "
                      "(batch.on_change=stop)", item_id, note)
            summary.conflicts += 1
            self.work.done(it, "skipped")
            return "skipped"
        if what == ABORT:
            summary.aborted = summary.aborted or note
            self.ctx.announce_stop(f"outputs unwritable on replica {self.ctx.dp_rank}")
            log.error("%s", note)
            self.work.done(it, "stopped")
            return "stopped"
        if self.gen is None:   # the run found nothing to make when it began (no models loaded); out_dir changed since
            log.warning("item %s is to be made now, but this run found nothing to make when it began and loaded no "
                        "models; it stops here (exit 75) and a rerun makes it", item_id)
            if self.ctx.is_writer:
                self.out.claims.release(item_id)
            summary.preempted = summary.preempted or f"{item_id} changed in out_dir during a run that loaded no models"
            self.work.done(it, "stopped")
            return "stopped"
        self._redo = note == "redo"
        if self._redo:
            log.warning("item %s: leftovers are incomplete or corrupt; redoing it", item_id)
            summary.redone += 1
        changed = note[len("changed:"):].split(",") if note.startswith("changed:") else None
        if changed is not None:
            log.warning("item %s: made before with other settings (changed: %s); making it again (batch.on_change="
                        "redo)", item_id, ", ".join(changed))
            summary.changed += 1
        try:
            ok = self.run_one(it, summary, changed)
        finally:
            if self.ctx.is_writer:
                self.out.claims.release(item_id)
            release_freed_memory()   # the item's buffers are gone: RSS stays flat over a long batch
        outcome = "stopped" if ok is None else ("ok" if ok else "failed")
        self.work.done(it, outcome)
        return outcome

    # -- one item -------------------------------------------------------------------------------------------------
    def _settings_record(self, it: Item, changed: list[str] | None, with_fields: bool) -> dict:
        rec = {"settings": it.settings}
        if with_fields:
            rec["settings_fields"] = settings_mod.fields_record(self.run_settings, it.request, it.image_digest)
        if changed:
            rec["changed"] = changed
        return rec

    def _fail(self, it: Item, summary: Summary, err: str, changed: list[str] | None = None) -> bool:
        log.error("item %s failed: %s", it.request.id, err)
        summary.failed += 1
        if self.ctx.is_writer:
            try:
                self.out.append_ledger({"id": it.request.id, "status": "failed", "error": err, "row": it.line,
                                        **self._settings_record(it, changed, True)})
            except OSError as e:      # not even the failure can be recorded: the batch stops (exit 74)
                if e.errno not in DISK_ERRNOS:
                    raise
                summary.aborted = summary.aborted or unwritable_message(self.out.root, e, "the ledger")
                self.ctx.announce_stop(f"outputs unwritable on replica {self.ctx.dp_rank}")
        return False

    def run_one(self, it: Item, summary: Summary, changed: list[str] | None = None) -> bool | None:
        """True ok, False failed (recorded), None preempted mid-item (nothing written)."""
        req = it.request
        _test_hook_kill(req.id, "every_start")
        timer = StageTimer(self.gen.device)
        t0 = time.perf_counter()
        _test_hook_sleep(req.id)
        err = None
        # 1. the image (may have changed or vanished since validation)
        try:
            image = load_image(req.image)
        except Exception as e:
            image, err = None, f"cannot read image {req.image!r}: {type(e).__name__}: {e}"
        if not self._agree(err is None):
            return self._fail(it, summary, err or "another rank of this replica could not read the image", changed)
        # 2. generate (NaN/Inf latents raise FloatingPointError inside the generator)
        result = None
        try:
            result = self.gen.generate(req, image, timer)
        except Preempted as e:
            log.warning("item %s: %s; nothing of it is written, the next run redoes it", req.id, e)
            summary.preempted = summary.preempted or self.ctx.stop_announced()
            return None
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # one bad item never stops the batch
            err = f"{type(e).__name__}: {e}"
            log.debug("item %s traceback:\n%s", req.id, traceback.format_exc())
        if not self._agree(err is None):
            return self._fail(it, summary, err or "another rank of this replica failed this item", changed)
        # every rank of the replica succeeded: stage/step times become the replica's (max over ranks; collective)
        t0 = reduce_item_times(self.ctx, timer, result.denoise, t0)
        result.denoise.cache = reduce_cache_counts(self.ctx, result.denoise.cache)
        # 3. save (writer only)
        disk_full = lost = False
        if self.ctx.is_writer:
            try:
                self._save(it, result, timer, t0, changed)
            except ClaimLost as e:
                err, lost = str(e), True
            except OutputsUnwritable as e:
                err, disk_full = str(e), True
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:
                err = f"{type(e).__name__}: {e}"
                log.debug("item %s traceback:\n%s", req.id, traceback.format_exc())
        if not self._agree(err is None):
            if not self._agree(not lost):
                log.error("item %s: %s", req.id, err or "its claim was taken over by another writer")
                summary.lost += 1
                return False
            if not self._agree(not disk_full):
                # nothing is recorded for the item (the next run redoes it); the batch stops everywhere
                summary.aborted = err or "the writer of this replica cannot write to out_dir"
                self.ctx.announce_stop(f"outputs unwritable on replica {self.ctx.dp_rank}")
                log.error("item %s: %s", req.id, summary.aborted)
                return None
            return self._fail(it, summary, err or "saving failed on the writer of this replica", changed)
        summary.done += 1
        return True

    def _save(self, it: Item, result, timer: StageTimer, t0: float, changed: list[str] | None = None) -> None:
        req, cfg = result.request, self.cfg
        outputs = {"mp4": f"videos/{req.id}.mp4", "sidecar": f"videos/{req.id}.json"}
        if not self.out.claims.still_mine(req.id):
            raise ClaimLost(f"the claim of {req.id} was taken over by another writer (this one looked dead); "
                            "nothing of it is written here")
        try:
            with timer.stage("save"):  # the sidecar itself (small) is written after its own numbers are known
                outputs.update(self.write_extras(req.id, result))
                video = self.out.write_video(req.id, result.frames.numpy(), cfg.model.fps,
                                             lossless=cfg.output.lossless, crf=cfg.output.crf)
            _test_hook_kill(req.id, "after_mp4", self._redo)
            timings = timer.as_dict()
            if not self._load_charged:  # the first video this process makes carries the one-time load + compile
                timings["model_load"] = self.model_load_s
                timings["compile"] = self.compile_s
                self._load_charged = True
            timings["total"] = item_total(timings, time.perf_counter() - t0)
            sidecar = build_sidecar(result, model=self.spec.name, fps=cfg.model.fps, is_moe=self.spec.is_moe,
                                    timings=timings, layout=self.layout, run=self.run_info,
                                    outputs=outputs, video=video, memory=peak_memory(self.gen.device))
            sidecar["settings"] = {"hash": it.settings, "fields": settings_mod.fields_record(
                self.run_settings, req, it.image_digest)}
            if changed:
                sidecar["settings"]["changed"] = changed
            self.out.write_sidecar(req.id, sidecar)
            _test_hook_kill(req.id, "after_sidecar", self._redo)
            self.out.drop_stale_extras(req.id, outputs)   # an earlier attempt's extras this run did not make
            self.out.append_ledger({"id": req.id, "status": "ok", "row": it.line, "mp4": outputs["mp4"],
                                    "sidecar": outputs["sidecar"], "seed": req.seed,
                                    "timings": sidecar["timings"], "frames_per_second": sidecar["frames_per_second"],
                                    **self._settings_record(it, changed, False)})
        except OSError as e:
            if e.errno in DISK_ERRNOS:
                # the atomic writers removed their temp files; an mp4 without its ledger line is redone later
                raise OutputsUnwritable(f"cannot write outputs of item {req.id} to {self.out.root}: "
                                        f"{os.strerror(e.errno)} ({errno.errorcode[e.errno]}); finished items "
                                        "are kept; free space (or make out_dir writable) and rerun to "
                                        "continue") from e
            raise
        if self.sink is not None:
            self.sink.log_video(sidecar, self.out.root / outputs["mp4"])

    def write_extras(self, item_id: str, result) -> dict:
        """Optional outputs (latents, PNG frames); filled in by wan_dist.batch.extras."""
        from .extras import write_extras
        return write_extras(self.out, self.cfg.output, item_id, result, model=self.spec.name)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

"""Run validated items through the generator: skip finished ones, isolate failures, write outputs and the ledger."""
from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field

from ..observability.timer import StageTimer
from .manifest import Item
from .outputs import OutputDir
from .sidecar import build_sidecar, peak_memory

log = logging.getLogger(__name__)


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    skipped_failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        s = f"{self.done} done, {self.skipped} skipped (already complete), {self.failed} failed"
        if self.skipped_failed:
            s += f", {self.skipped_failed} earlier failures not retried (batch.retry_failed=true retries them)"
        return s


def load_image(path: str | None):
    if path is None:
        return None
    from PIL import Image
    with Image.open(path) as im:
        return im.convert("RGB")


class BatchRunner:
    def __init__(self, *, cfg, spec, generator, out: OutputDir, ctx, model_load_s: float, run_info: dict,
                 sink=None, progress=None):
        self.cfg, self.spec, self.gen, self.out, self.ctx = cfg, spec, generator, out, ctx
        self.model_load_s = model_load_s
        self.run_info = run_info
        self.sink = sink
        self.progress = progress
        self._load_charged = False

    def my_items(self, items: list[Item]) -> list[Item]:
        """Data parallel: rows dealt to replicas by row index."""
        return [it for it in items if it.index % self.ctx.dp_size == self.ctx.dp_rank]

    def run(self, items: list[Item]) -> Summary:
        summary = Summary()
        ledger = self.out.read_ledger()
        todo = []
        for it in self.my_items(items):
            rec = ledger.get(it.request.id)
            if self.out.is_complete(it.request.id, rec):
                summary.skipped += 1
            elif rec and rec.get("status") == "failed" and not self.cfg.batch.retry_failed \
                    and not self._outputs_missing_only(rec):
                summary.skipped_failed += 1
            else:
                todo.append(it)
        for n, it in enumerate(todo):
            if self.progress:
                self.progress.item_start(n, len(todo), it.request.id)
            ok = self.run_one(it, summary)
            if self.progress:
                self.progress.item_end(ok)
        return summary

    @staticmethod
    def _outputs_missing_only(rec) -> bool:
        return False

    def run_one(self, it: Item, summary: Summary) -> bool:
        req = it.request
        timer = StageTimer(self.gen.device)
        t0 = time.perf_counter()
        try:
            image = load_image(req.image)
            result = self.gen.generate(req, image, timer)
            if self.ctx.is_writer:
                self._save(it, result, timer, t0)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # one bad item never stops the batch
            err = f"{type(e).__name__}: {e}"
            log.error("item %s failed: %s\n%s", req.id, err, traceback.format_exc())
            summary.failed += 1
            summary.failures.append((req.id, err))
            if self.ctx.is_writer:
                self.out.append_ledger({"id": req.id, "status": "failed", "error": err, "row": it.line})
            return False
        summary.done += 1
        return True

    def _save(self, it: Item, result, timer: StageTimer, t0: float) -> None:
        req, cfg = result.request, self.cfg
        outputs = {"mp4": f"videos/{req.id}.mp4", "sidecar": f"videos/{req.id}.json"}
        with timer.stage("save"):  # the sidecar itself (small) is written after its own numbers are known
            outputs.update(self.write_extras(req.id, result))
            video = self.out.write_video(req.id, result.frames.numpy(), cfg.model.fps,
                                         lossless=cfg.output.lossless, crf=cfg.output.crf)
        timings = timer.as_dict()
        if not self._load_charged:  # the first video this process makes carries the one-time model load
            timings["model_load"] = self.model_load_s
            self._load_charged = True
        timings["total"] = time.perf_counter() - t0 + timings.get("model_load", 0.0)
        sidecar = build_sidecar(result, model=self.spec.name, fps=cfg.model.fps, is_moe=self.spec.is_moe,
                                timings=timings, layout=self.ctx.describe(), run=self.run_info, outputs=outputs,
                                video=video, memory=peak_memory(self.gen.device))
        self.out.write_sidecar(req.id, sidecar)
        self.out.append_ledger({"id": req.id, "status": "ok", "row": it.line, "mp4": outputs["mp4"],
                                "sidecar": outputs["sidecar"], "seed": req.seed,
                                "timings": sidecar["timings"], "frames_per_second": sidecar["frames_per_second"]})
        if self.sink is not None:
            self.sink.log_video(sidecar, self.out.root / outputs["mp4"])

    def write_extras(self, item_id: str, result) -> dict:
        """Optional outputs (latents, PNG frames); filled in by wan_dist.batch.extras."""
        from .extras import write_extras
        return write_extras(self.out, self.cfg.output, item_id, result)

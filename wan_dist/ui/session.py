"""Models loaded once, then one generation at a time over the replica, each saved exactly like a batch item.

Every rank of the replica builds a Session (the same load and parallel plan as a batch run: worker.build_engine).
Rank 0's main thread runs `serve`: it takes a validated request from the page's queue, posts it to the other
ranks (`ctx.replica_post`, through the process group's store: the replica may idle for hours between requests,
longer than any collective's timeout), and all ranks generate it together through the batch runner (claim, mp4,
sidecar, ledger line). The other ranks run `follow`. A stop signal on any rank (Ctrl-C, SIGTERM from `wan-dist
torchrun`) ends the generation in flight at the next denoise step and then every rank: rank 0 posts the end.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import signal
import sys
from pathlib import Path

from .. import config as config_mod
from ..batch.outputs import OutputDir
from ..batch.runner import BatchRunner
from ..batch.work import StaticShare
from ..files import write_bytes_atomic
from ..models import checkpoint
from ..models.device import placement
from ..models.registry import get_model
from ..observability.progress import Progress
from ..observability.run_info import versions
from ..observability.sinks import make_sink
from ..worker import build_engine

log = logging.getLogger("wan_dist.ui")


class Job:
    """One request from the page: its message for the replica, and the events the page waits for."""

    def __init__(self, message: dict):
        self.message = message
        self.events: queue.Queue = queue.Queue()

    def step(self, i: int, total: int) -> None:
        self.events.put(("step", i, total))

    def finish(self, result: dict) -> None:
        self.events.put(("done", result))


class Session:
    def __init__(self, cfg, ctx, stop, layout, form):
        """Checkpoint checked (ValueError before any weight is read), out_dir prepared, models loaded once."""
        self.cfg, self.ctx, self.stop, self.layout, self.form = cfg, ctx, stop, layout, form
        self.spec = get_model(cfg.model.name)
        ctx.share_from_main(lambda: checkpoint.check(cfg.ckpt_dir, self.spec).ckpt_format)
        self.out = OutputDir(cfg.out_dir, claim_timeout_s=cfg.batch.claim_timeout_s)
        if ctx.is_main:
            self.out.prepare()
        self.run_id = ctx.share_from_main(lambda: self.out.writer)
        if ctx.is_main:
            self.out.write_config({"config": config_mod.to_dict(cfg), "versions": versions(),
                                   "layout": ctx.describe(), "work": {"source": "ui"}, "argv": sys.argv[1:],
                                   "run_id": self.run_id})
        self.engine = build_engine(cfg, ctx)
        self.sink = make_sink(cfg, self.out.root, is_logger=ctx.is_main, run_id=self.run_id)
        self.sink.log_config(config_mod.to_dict(cfg))
        self.progress = Progress(enabled=cfg.batch.progress and ctx.is_main)
        e = self.engine
        run_info = {"run_id": self.run_id, "model_load_s": round(e.model_load_s, 6), "load_seconds": e.load_seconds,
                    "checkpoint_dtype": e.checkpoint_dtype, **e.placement.describe(), "ckpt_dir": str(cfg.ckpt_dir),
                    "compile_s": round(e.compile_s, 6), **e.speed}
        self.runner = BatchRunner(cfg=cfg, spec=self.spec, generator=e.generator, out=self.out, ctx=ctx,
                                  work=StaticShare(), model_load_s=e.model_load_s, run_info=run_info,
                                  layout={**ctx.describe(), **e.parallel.describe(), "source": "ui"},
                                  sink=self.sink, progress=self.progress, stop=stop, compile_s=e.compile_s)
        if ctx.is_main:
            log.info("model %s loaded in %.2fs (%s on %s)", self.spec.name, e.model_load_s, run_info["dtype"],
                     run_info["device"])
        self.placed = {"offload_model": cfg.offload_model, "t5_cpu": cfg.t5_cpu}
        self.seq = 0
        self.aborted: str | None = None
        self.made = 0

    # -- rank 0, the page's thread ----------------------------------------------------------------------------------
    def prepare(self, values: dict) -> dict:
        """The submitted form -> the replica's message; ManifestError (a ValueError) with the manifest's messages."""
        item = self.form.item(values, layout=self.layout)
        req = item.request
        if req.image is not None:      # kept with the outputs: the upload's temp file is not a record
            src = Path(req.image)
            dest = self.out.root / "inputs" / f"{req.id}{src.suffix.lower() or '.png'}"
            write_bytes_atomic(dest, src.read_bytes(), self.out.partial)
            item = dataclasses.replace(item, request=dataclasses.replace(req, image=str(dest)))
        return {"item": item, **self.form.placement(values)}

    # -- every rank of the replica, in lock-step ----------------------------------------------------------------------
    def generate(self, message: dict, on_step=None) -> dict:
        place = {k: message[k] for k in self.placed}
        if place != self.placed:
            p = placement(device=self.cfg.device, dtype=self.cfg.dtype, t5_dtype=self.cfg.t5_dtype,
                          vae_dtype=self.cfg.vae_dtype, local_rank=self.ctx.local_rank, **place)
            self.engine.generator.set_placement(p)
            self.runner.run_info.update(p.describe())
            self.placed = place
        gen = self.engine.generator

        def step(i: int, total: int) -> None:
            self.progress.step(i, total)
            if on_step is not None:
                on_step(i, total)
        gen.on_step = step
        try:
            summary = self.runner.run([message["item"]])
        finally:
            gen.on_step = None
        self.aborted = self.aborted or summary.aborted
        if not self.ctx.is_main:
            return {}
        self.out.ledger.write_merged_view()
        return self._result(message["item"].request, summary)

    def _result(self, req, summary) -> dict:
        if summary.done:
            self.made += 1
            sidecar = _read_json(self.out.path_for(req.id, ".json"))
            return {"status": "ok", "id": req.id, "seed": req.seed, "mp4": str(self.out.path_for(req.id, ".mp4")),
                    "sidecar": sidecar, "paths": sidecar["outputs"]}
        if summary.failed:
            rec = self.out.ledger.latest(refresh=True).get(req.id) or {}
            return {"status": "failed", "id": req.id, "seed": req.seed, "error": rec.get("error", "unknown")}
        return {"status": "stopped", "id": req.id, "seed": req.seed, "error": summary.aborted}

    # -- the loops ----------------------------------------------------------------------------------------------------
    def stopping(self) -> bool:
        """A stop signal here, or announced by any rank (a follower's Ctrl-C reaches rank 0 this way)."""
        if self.stop.requested:
            self.ctx.announce_stop(signal.Signals(self.stop.signum).name)
        return self.ctx.stop_announced() is not None

    def serve(self, jobs: queue.Queue) -> None:
        """Rank 0's main thread: the page's requests, one at a time, until a stop; then the followers are ended."""
        try:
            while not self.stopping():
                try:
                    job = jobs.get(timeout=0.2)
                except queue.Empty:
                    continue
                self.ctx.replica_post(self.seq, job.message)
                self.seq += 1
                try:
                    result = self.generate(job.message, job.step)
                except BaseException:
                    job.finish({"status": "failed", "error": "the server failed (see its log)"})
                    raise
                job.finish(result)
        finally:
            self.ctx.replica_post(self.seq, None)
            while True:                                   # requests that arrived while stopping
                try:
                    jobs.get_nowait().finish({"status": "stopped"})
                except queue.Empty:
                    break

    def follow(self) -> None:
        """The other ranks of the replica: each posted request, until rank 0 posts the end."""
        while True:
            message = self.ctx.replica_take(self.seq, idle=self.stopping)
            self.seq += 1
            if message is None:
                return
            self.generate(message)

    def close(self) -> None:
        if self.ctx.is_main:
            self.out.ledger.write_merged_view()
            self.sink.log_summary({"done": self.made, "model_load_s": self.engine.model_load_s})
        self.sink.close()
        self.out.drop_partial()


def _read_json(path: Path) -> dict:
    import json
    return json.loads(path.read_text(encoding="utf-8"))

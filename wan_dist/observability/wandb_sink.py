"""Weights & Biases sink (`logger=wandb`). Only rank 0 of the world constructs one (see sinks.make_sink).

- `logger.mode=offline` (default): files under `<out_dir>/wandb/` (dir set explicitly), no network at all;
  `wandb sync <out_dir>/wandb/offline-run-*` uploads them later. `online` needs WANDB_API_KEY in the environment.
- project / group / name / tags from `cfg.logger`; name defaults to the out_dir's name.
- the resolved config (secrets redacted by observability.redact), per video a row of the `videos` Table (prompt, seed,
  settings, timings, the mp4 as `wandb.Video(path)`), the per-step times as a series (`step/seconds` against
  `step/global`, plus a `per_step` Table), per-video scalars (`video/*` against `video/index`) and a run summary.
- Memory: the two Tables are logged once, at the end, so their rows are held until then. They are capped
  (TABLE_MAX_ROWS videos, STEP_TABLE_MAX_ROWS steps) so a long batch stays bounded; past a cap rows are counted in the
  summary (`wandb/videos_rows_dropped`, `wandb/per_step_rows_dropped`), and the `video/*` and `step/*` series keep
  every video and step.
- Any W&B failure (import, init, log, finish) is logged as a warning and turns the sink off: never a failed batch.
- Start-up: the import and wandb.init run in a thread started by the constructor, so W&B's service start overlaps
  the model load; the first call that needs the run (a video, the summary, close) waits for it. The config is held
  until then (docs/BENCHMARKS.md "Start-up and teardown").
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from .redact import redact
from .stages import TIMING_KEYS

log = logging.getLogger("wan_dist.wandb")
_USER_DATA_DIR = os.environ.get("WANDB_DATA_DIR")  # a user's own choice wins over ours


# settings that go into the table rows (prompt and seed are columns of their own)
SETTINGS = ("model", "size", "frame_num", "fps", "steps", "shift", "solver", "guide_scale", "guide_scale_high",
            "cfg_truncate_steps", "cfg_truncate_high_noise_steps", "cfg_truncate_keep", "image")
VIDEO_COLUMNS = (["id", "prompt", "seed"] + list(SETTINGS) + [f"{k}_s" for k in TIMING_KEYS]
                 + ["inference_s", "frames_per_second", "expert_switches", "forwards", "peak_memory_mib", "mp4",
                    "video"])
STEP_COLUMNS = ["id", "step", "expert", "timestep", "cfg_on", "passes", "seconds"]
TABLE_MAX_ROWS = 200_000        # W&B truncates a Table to 200k rows anyway (wandb.Table.MAX_ARTIFACT_ROWS)
STEP_TABLE_MAX_ROWS = 100_000   # e.g. 2000 videos x 50 steps; about 15 MiB of rows held until the end of the run


def _cell(v):
    if isinstance(v, (list, tuple, dict)):
        return str(v)
    return v


class WandbSink:
    _starting: threading.Thread | None = None      # the start thread, until _ready has waited for it
    _config: dict | None = None                    # log_config's, held while starting
    _error: BaseException | None = None            # the start's failure

    def __init__(self, cfg, out_dir):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.run = None
        self.wandb = None
        self.rows: list[list] = []
        self.step_rows: list[list] = []
        self.dropped = {"videos": 0, "per_step": 0}
        self.n_videos = 0
        self.global_step = 0
        # W&B's import and wandb.init (which starts its service process and waits for it) run in a thread while this
        # process goes on to load the models; the first call that needs the run waits for it (_ready)
        # Table artifacts are staged here: keep the run self-contained. Set here, on the main thread: the environment
        # must not change while another thread (torch, the loaders) may read it
        if cfg.logger.mode == "offline" and not _USER_DATA_DIR:
            os.environ["WANDB_DATA_DIR"] = str((self.out_dir / "wandb" / "data").resolve())
        self._starting: threading.Thread | None = threading.Thread(target=self._start, name="wandb-init", daemon=True)
        self._starting.start()

    def _start(self) -> None:
        lc = self.cfg.logger
        try:
            import wandb
            self.wandb = wandb
            wdir = self.out_dir / "wandb"  # wandb.init(dir=out_dir) writes its runs under out_dir/wandb/
            wdir.mkdir(parents=True, exist_ok=True)
            settings = wandb.Settings(console="off", silent=True, disable_git=True, save_code=False,
                                      x_disable_stats=True)     # console="off": no SIGWINCH handler (a thread here)
            self.run = wandb.init(project=lc.project, group=lc.group, name=lc.name or self.out_dir.resolve().name,
                                  tags=list(lc.tags or ()), mode=lc.mode, dir=str(self.out_dir), job_type="inference",
                                  reinit="create_new", settings=settings)
            self.run.define_metric("step/global")
            self.run.define_metric("step/*", step_metric="step/global")
            self.run.define_metric("video/index")
            self.run.define_metric("video/*", step_metric="video/index")
            log.info("W&B run %s (%s) in %s", self.run.name, lc.mode, wdir)
        except BaseException as e:  # noqa: BLE001 - observability never fails a batch; reported by _ready
            self._error = e

    def _ready(self) -> bool:
        """Wait for the start (once); then the run, or its failure turned into a warning, and the held config."""
        if self._starting is not None:
            self._starting.join()
            self._starting = None
            if self._error is not None:
                self._fail("init", self._error)
            elif self._config is not None:
                self.log_config(self._config)
        return self.run is not None

    @property
    def active(self) -> bool:
        return self._ready()

    def _fail(self, what: str, e: BaseException) -> None:
        log.warning("W&B %s failed (%s: %s); continuing without W&B", what, type(e).__name__, e)
        run, self.run = self.run, None
        if run is not None and what != "finish":
            try:
                run.finish(exit_code=1)
            except Exception:  # noqa: BLE001
                pass

    def log_config(self, config: dict) -> None:
        if self._starting is not None:      # still starting: applied by _ready (this must not wait for W&B)
            self._config = config
            return
        if not self.active:
            return
        try:
            self.run.config.update(redact(config), allow_val_change=True)
        except Exception as e:  # noqa: BLE001
            self._fail("config", e)

    def log_video(self, sidecar: dict, mp4_path) -> None:
        if not self.active:
            return
        try:
            wandb, sc = self.wandb, sidecar
            t = sc.get("timings", {})
            mem = (sc.get("peak_memory") or {}).get("bytes")
            mp4 = Path(mp4_path)
            video = wandb.Video(str(mp4), format="mp4") if mp4.is_file() else None
            self._keep(self.rows, "videos", TABLE_MAX_ROWS,
                       [_cell(sc.get("id")), sc.get("prompt"), str(sc.get("seed"))]
                       + [_cell(sc.get(k)) for k in SETTINGS]
                       + [t.get(k) for k in TIMING_KEYS]
                       + [sc.get("inference_s"), sc.get("frames_per_second"), sc.get("expert_switches"),
                          _cell(sc.get("forwards")), round(mem / 2**20, 1) if mem else None,
                          (sc.get("outputs") or {}).get("mp4"), video])
            experts = sc.get("step_experts") or []
            timesteps = sc.get("timesteps") or []
            cfg_on = sc.get("cfg_on") or []
            passes = sc.get("step_passes") or []
            for i, s in enumerate(sc.get("per_step_s") or []):
                ex = experts[i] if i < len(experts) else None
                self._keep(self.step_rows, "per_step", STEP_TABLE_MAX_ROWS,
                           [sc.get("id"), i, ex, timesteps[i] if i < len(timesteps) else None,
                            cfg_on[i] if i < len(cfg_on) else None, passes[i] if i < len(passes) else None, s])
                self.run.log({"step/global": self.global_step, "step/seconds": s, "step/index_in_video": i,
                              "step/expert_low": int(ex == "low"), "step/video_index": self.n_videos})
                self.global_step += 1
            row = {"video/index": self.n_videos, "video/inference_s": sc.get("inference_s"),
                   "video/frames_per_second": sc.get("frames_per_second"),
                   "video/expert_switches": sc.get("expert_switches")}
            row.update({f"video/{k}_s": t.get(k) for k in TIMING_KEYS})
            if video is not None:  # a Video object of its own: one bound to the history is not re-serialised in a Table
                row["video/mp4"] = wandb.Video(str(mp4), format="mp4")
            self.run.log(row)
            self.n_videos += 1
        except Exception as e:  # noqa: BLE001
            self._fail("log", e)

    def _keep(self, rows: list, table: str, cap: int, row: list) -> None:
        if len(rows) < cap:
            rows.append(row)
            return
        if not self.dropped[table]:
            log.warning("W&B %s table is full (%d rows): later rows are not kept (their series still are)", table, cap)
        self.dropped[table] += 1

    def log_summary(self, summary: dict) -> None:
        if not self.active:
            return
        try:
            wandb = self.wandb
            summary = {**summary, **{f"wandb/{k}_rows_dropped": v for k, v in self.dropped.items() if v}}
            if self.rows:
                self.run.log({"videos": wandb.Table(columns=VIDEO_COLUMNS, data=self.rows),
                              "per_step": wandb.Table(columns=STEP_COLUMNS, data=self.step_rows)})
            for k, v in redact(summary).items():
                self.run.summary[k] = v
        except Exception as e:  # noqa: BLE001
            self._fail("summary", e)

    def close(self) -> None:
        if not self.active:
            return
        try:
            run_dir = Path(self.run.dir).parent if getattr(self.run, "dir", None) else self.out_dir / "wandb"
            self.run.finish()
            if self.cfg.logger.mode == "offline":
                log.info("W&B offline run written to %s (upload later: wandb sync %s)", run_dir, run_dir)
        except Exception as e:  # noqa: BLE001
            self._fail("finish", e)
        self.run = None


def log_table_run(*, project: str, group: str | None, name: str, mode: str, out_dir, table: str, columns: list,
                  rows: list[list], image=None, job_type: str = "compare") -> str | None:
    """One short W&B run holding one Table (e.g. `wan-dist compare`'s comparison of a sweep, in the sweep's group) and
    an optional plot. Offline runs go under <out_dir>/wandb/. Returns the run's directory, or None after a warning
    (W&B never fails the command that logs to it)."""
    out_dir = Path(out_dir)
    try:
        import wandb
        wdir = out_dir / "wandb"
        wdir.mkdir(parents=True, exist_ok=True)
        saved = os.environ.get("WANDB_DATA_DIR")
        if mode == "offline" and not _USER_DATA_DIR:
            os.environ["WANDB_DATA_DIR"] = str((wdir / "data").resolve())
        settings = wandb.Settings(console="off", silent=True, disable_git=True, save_code=False, x_disable_stats=True)
        try:
            run = wandb.init(project=project, group=group, name=name, mode=mode, dir=str(out_dir), job_type=job_type,
                             reinit="create_new", settings=settings)
            data = {table: wandb.Table(columns=list(columns), data=rows)}
            if image is not None and Path(image).is_file():
                data[f"{table}_plot"] = wandb.Image(str(image))
            run.log(data)
            run_dir = str(Path(run.dir).parent) if getattr(run, "dir", None) else str(wdir)
            run.finish()
        finally:
            if mode == "offline" and not _USER_DATA_DIR:
                if saved is None:
                    os.environ.pop("WANDB_DATA_DIR", None)
                else:
                    os.environ["WANDB_DATA_DIR"] = saved
        log.info("W&B %s run %s (group %s) with the %s table: %s", mode, name, group, table, run_dir)
        return run_dir
    except Exception as e:  # noqa: BLE001 - observability never fails the command
        log.warning("W&B logging of %s failed (%s: %s); the files are written anyway", table, type(e).__name__, e)
        return None


def read_offline_records(wandb_file):
    """Records of an offline `run-*.wandb` file (LevelDB-log framing: a 7-byte header, 32 KiB blocks, 7-byte
    record headers crc32/length/type with FULL=1 FIRST=2 MIDDLE=3 LAST=4), parsed as wandb's `Record` protobuf.
    For tests and offline inspection; no network, no wandb-core."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(wandb_file).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{wandb_file}: not a W&B datastore file")
    block, pos, buf, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            buf = chunk
        elif kind == 2:
            buf = chunk
            continue
        elif kind == 3:
            buf += chunk
            continue
        elif kind == 4:
            buf += chunk
        else:
            break
        rec = pb.Record()
        rec.ParseFromString(buf)
        out.append(rec)
        buf = b""
    return out


def offline_history(wandb_file) -> list[dict]:
    """The logged history rows (key -> JSON-decoded value) of an offline run file."""
    import json
    rows = []
    for rec in read_offline_records(wandb_file):
        if rec.WhichOneof("record_type") == "history":
            rows.append({".".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item})
    return rows


def offline_summary(wandb_file) -> dict:
    """The last summary written to an offline run file (key -> JSON-decoded value)."""
    import json
    summary: dict = {}
    for rec in read_offline_records(wandb_file):
        if rec.WhichOneof("record_type") == "summary":
            for i in rec.summary.update:
                summary[".".join(i.nested_key) or i.key] = json.loads(i.value_json)
    return summary

"""Observability: stage timings and their rule, the four figures, the W&B offline sink (read back from its files),
`wan-dist report` (tables match the sidecars, PNGs are valid), progress lines, and the null sink importing no wandb.

Two real runs of the tiny MoE model are made once per module, in subprocesses and in parallel (logger=wandb and
logger=none), so the whole module stays well inside its time budget.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TOL = 2e-5  # sidecar numbers are rounded to 6 decimals

RUNNER = r"""
import sys
from wan_dist.config import compose
from wan_dist.worker import run
code = run(compose(sys.argv[1:]))
print("WANDB_IMPORTED=%s" % ("wandb" in sys.modules), flush=True)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def runs(tiny_ckpt, tmp_path_factory):
    ckpt = tiny_ckpt("tiny-t2v-moe")
    root = tmp_path_factory.mktemp("obs")
    manifest = root / "m.csv"
    manifest.write_text("id,prompt,seed\ncat,a cat,1\ndog,a dog on a skateboard,2\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"PYTHONPATH": str(REPO), "WANDB_SILENT": "true"})
    common = ["model=tiny-t2v-moe", f"ckpt_dir={ckpt}", f"manifest={manifest}", "sample.frame_num=5",
              "sample.steps=4", "batch.progress=false"]
    procs = {}
    for kind in ("none", "wandb"):
        out = root / kind
        args = common + [f"out_dir={out}", f"logger={kind}"]
        if kind == "none":  # a fresh process, so that `wandb` in sys.modules means this run imported it
            procs[kind] = (out, subprocess.Popen([sys.executable, "-c", RUNNER, *args], cwd=root, env=env,
                                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    # meanwhile, the W&B run in this process (saves one interpreter start-up on a 2-core budget)
    from wan_dist.config import compose
    from wan_dist.worker import run
    out = root / "wandb"
    args = common + [f"out_dir={out}", "logger=wandb", "logger.project=obs-test", "logger.group=g1",
                     "logger.name=run-a", "logger.tags=[t1,t2]"]
    buf = io.StringIO()
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("WANDB_") and k != "WANDB_SILENT"}
    try:
        with contextlib.redirect_stdout(buf):
            code = run(compose(args))
    finally:
        for k in [k for k in os.environ if k.startswith("WANDB_") and k != "WANDB_SILENT"]:
            del os.environ[k]   # e.g. WANDB_DATA_DIR, set by the sink for this run
        os.environ.update(saved)
    assert code == 0
    res = {"wandb": SimpleNamespace(out=out, stdout=buf.getvalue(), stderr="")}
    for kind, (out, p) in procs.items():
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, f"{kind} run failed:\n{stdout}\n{stderr[-4000:]}"
        res[kind] = SimpleNamespace(out=out, stdout=stdout, stderr=stderr)
    return res


def _sidecars(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "videos").glob("*.json"))}


# ---------------------------------------------------------------- timings rule (wan_dist/observability/figures.py)

def check_timing_rule(sc: dict) -> None:
    from wan_dist.observability.figures import SUM_STAGES
    t = sc["timings"]
    for k in ("model_load", "text_encode", "latents", "denoise", "expert_switch", "vae_decode", "save", "total"):
        assert t[k] >= 0, (k, t)
    assert t["expert_switch"] <= t["denoise"] + TOL
    assert t["total"] + TOL >= sum(t[k] for k in SUM_STAGES), t   # expert_switch is inside denoise: not added
    assert abs(sc["inference_s"] - sum(t[k] for k in ("text_encode", "latents", "denoise", "vae_decode"))) < 1e-4
    assert abs(sc["frames_per_second"] - sc["video"]["frames"] / sc["inference_s"]) < 1e-2 * sc["frames_per_second"]
    assert len(sc["per_step_s"]) == len(sc["step_experts"]) == sc["steps"]
    assert all(s >= 0 for s in sc["per_step_s"])
    assert sum(sc["per_step_s"]) <= t["denoise"] + TOL
    switches = sum(1 for a, b in zip(sc["step_experts"], sc["step_experts"][1:]) if a != b)
    assert sc["expert_switches"] == switches


@pytest.mark.parametrize("kind", ["wandb", "none"])
def test_timings_consistent(runs, kind):
    scs = _sidecars(runs[kind].out)
    assert set(scs) == {"cat", "dog"}
    for sc in scs.values():
        check_timing_rule(sc)
        assert sc["peak_memory"]["bytes"] > 0 and sc["peak_memory"]["kind"] == "host_peak_rss"
        assert set(sc["run"]["load_seconds"]) >= {"t5", "vae", "dit_high", "dit_low"}
        assert sc["expert_switches"] == 1 and set(sc["step_experts"]) == {"high", "low"}
    # the one-time model load is charged to the first video this process made (manifest order), 0 on the others
    assert scs["cat"]["timings"]["model_load"] == pytest.approx(scs["cat"]["run"]["model_load_s"], abs=TOL)
    assert scs["cat"]["timings"]["model_load"] > 0
    assert scs["dog"]["timings"]["model_load"] == 0


class _SlowRankCtx:
    """A replica whose other rank is 50 % slower in every stage and step (what replica_max must report)."""
    def replica_max(self, values):
        return {k: v * 1.5 for k, v in values.items()}


def test_replica_reduction_keeps_the_rule():
    import time

    from wan_dist.observability.figures import item_total, reduce_item_times, reduce_load, stage_sum
    from wan_dist.observability.timer import StageTimer
    timer = StageTimer("cpu")
    for k, v in {"text_encode": 0.1, "latents": 0.01, "denoise": 0.5, "expert_switch": 0.02, "vae_decode": 0.2}.items():
        timer.add(k, v)
    dn = SimpleNamespace(per_step_s=[0.1, 0.2, 0.2])
    t0 = time.perf_counter() - 0.9
    t0r = reduce_item_times(_SlowRankCtx(), timer, dn, t0)
    assert timer.seconds["denoise"] == pytest.approx(0.75) and timer.seconds["expert_switch"] == pytest.approx(0.03)
    assert dn.per_step_s == pytest.approx([0.15, 0.3, 0.3])
    assert time.perf_counter() - t0r >= 1.35 - 1e-3        # the slowest rank's elapsed time
    timings = timer.as_dict() | {"save": 0.05, "model_load": 2.0}
    assert item_total(timings, 0.1) == pytest.approx(stage_sum(timings))   # never less than the stage sum
    assert item_total(timings, 10.0) == pytest.approx(12.0)
    load, comp = reduce_load(_SlowRankCtx(), 2.0, {"t5": 1.0, "vae": 0.5})
    assert load == pytest.approx(3.0) and comp == {"t5": 1.5, "vae": 0.75}


def test_four_figures_printed(runs):
    for kind in ("wandb", "none"):
        lines = [x for x in runs[kind].stdout.splitlines() if x.startswith("[figures]")]
        assert len(lines) == 3, runs[kind].stdout            # one per video + one for the run
        for line in lines:
            for word in ("model load", "inference", "expert switch", "frames/s"):
                assert word in line, line
        assert lines[0].startswith("[figures] cat:") and lines[-1].startswith("[figures] run, 2 video(s)")


# ---------------------------------------------------------------- W&B offline, read back from the files

def test_wandb_offline_run_files(runs):
    from wan_dist.observability.wandb_sink import offline_history, offline_summary, read_offline_records
    out = runs["wandb"].out
    run_dirs = list((out / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1, list((out / "wandb").iterdir())     # exactly one process logged
    rd = run_dirs[0]
    scs = _sidecars(out)
    # the videos
    mp4s = list((rd / "files" / "media" / "videos").rglob("*.mp4"))
    assert len(mp4s) == 2 and all(p.stat().st_size > 0 for p in mp4s)
    sizes = sorted(p.stat().st_size for p in mp4s)
    assert sizes == sorted((out / sc["outputs"]["mp4"]).stat().st_size for sc in scs.values())
    # the tables
    tables = {p.name.split("_")[0] if not p.name.startswith("per_step") else "per_step": json.loads(p.read_text())
              for p in (rd / "files" / "media" / "table").glob("*.table.json")}
    vt = tables["videos"]
    rows = [dict(zip(vt["columns"], r)) for r in vt["data"]]
    assert sorted(r["id"] for r in rows) == ["cat", "dog"]
    for r in rows:
        sc = scs[r["id"]]
        assert r["prompt"] == sc["prompt"] and r["seed"] == str(sc["seed"]) and r["steps"] == sc["steps"]
        assert r["guide_scale"] == sc["guide_scale"] and r["mp4"] == sc["outputs"]["mp4"]
        for k, v in sc["timings"].items():
            assert r[f"{k}_s"] == pytest.approx(v), k
        assert r["frames_per_second"] == pytest.approx(sc["frames_per_second"])
        assert r["video"] is not None
    st = tables["per_step"]
    srows = [dict(zip(st["columns"], r)) for r in st["data"]]
    for vid, sc in scs.items():
        mine = sorted((r for r in srows if r["id"] == vid), key=lambda r: r["step"])
        assert [r["seconds"] for r in mine] == pytest.approx(sc["per_step_s"])
        assert [r["expert"] for r in mine] == sc["step_experts"]
        assert [r["passes"] for r in mine] == sc["step_passes"] and "passes" in st["columns"]
    # the per-step series in the .wandb history
    wfile = next(rd.glob("run-*.wandb"))
    hist = offline_history(wfile)
    series = [h["step/seconds"] for h in sorted((h for h in hist if "step/seconds" in h),
                                                key=lambda h: h["step/global"])]
    assert series == pytest.approx(scs["cat"]["per_step_s"] + scs["dog"]["per_step_s"])
    assert sum(1 for h in hist if "video/total_s" in h) == 2
    assert any(h.get("video/mp4._type") == "video-file" for h in hist)
    # the run summary and the config
    summ = offline_summary(wfile)
    assert summ["done"] == 2 and summ["failed"] == 0 and summ["run/videos"] == 2
    assert summ["run/expert_switches"] == 2
    assert summ["run/inference_s"] == pytest.approx(sum(sc["inference_s"] for sc in scs.values()), abs=1e-4)
    recs = read_offline_records(wfile)
    run_rec = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    assert run_rec.project == "obs-test" and run_rec.run_group == "g1" and run_rec.display_name == "run-a"
    assert list(run_rec.tags) == ["t1", "t2"]
    cfg_keys = {i.key for r in recs if r.WhichOneof("record_type") == "config" for i in r.config.update}
    assert {"model", "sample", "logger", "ckpt_dir"} <= cfg_keys
    # nothing of the run written outside out_dir/wandb (artifact staging included)
    assert (out / "wandb" / "data").is_dir()


def test_wandb_config_is_redacted_by_the_one_redactor():
    from wan_dist.observability import wandb_sink
    from wan_dist.observability.redact import REDACTED, redact
    assert wandb_sink.redact is redact          # no second redactor
    got = redact({"a": 1, "api_key": "x", "nested": {"WANDB_API_KEY": "y", "token": "z", "b": [{"password": 1}]}})
    assert got == {"a": 1, "api_key": REDACTED,
                   "nested": {"WANDB_API_KEY": REDACTED, "token": REDACTED, "b": [{"password": REDACTED}]}}


def _cfg(tmp_path, kind="wandb", mode="offline"):
    from wan_dist.config import compose
    return compose([f"logger={kind}", f"logger.mode={mode}", f"out_dir={tmp_path}", "prompt=x", f"ckpt_dir={tmp_path}"])


def test_wandb_failures_are_warnings(tmp_path, monkeypatch, caplog):
    wandb = pytest.importorskip("wandb")
    from wan_dist.observability.sinks import make_sink

    def boom(*a, **k):
        raise RuntimeError("no W&B today")
    monkeypatch.setattr(wandb, "init", boom)
    caplog.set_level(logging.WARNING)
    sink = make_sink(_cfg(tmp_path), tmp_path, is_logger=True)
    sink.log_config({"a": 1})
    sc = {"id": "x", "timings": {"total": 1.0}, "inference_s": 0.5, "frames_per_second": 2.0, "run": {}}
    sink.log_video(sc, tmp_path / "missing.mp4")
    sink.log_summary({"model_load_s": 0.1})
    sink.close()
    assert any("W&B init failed" in r.message and "no W&B today" in r.message for r in caplog.records)

    # a log error after a good init: warned once, sink off, batch goes on
    from wan_dist.observability.wandb_sink import WandbSink

    class BadRun:
        config = SimpleNamespace(update=lambda *a, **k: None)
        def log(self, *a, **k):
            raise OSError("disk full")
        def finish(self, *a, **k):
            pass
    w = WandbSink.__new__(WandbSink)
    w.cfg, w.out_dir, w.run, w.wandb = _cfg(tmp_path), tmp_path, BadRun(), wandb
    w.rows, w.step_rows, w.n_videos, w.global_step = [], [], 0, 0
    w.dropped = {"videos": 0, "per_step": 0}
    w.log_video(sc | {"per_step_s": [0.1]}, tmp_path / "missing.mp4")
    assert w.run is None and any("W&B log failed" in r.message for r in caplog.records)
    w.log_summary({}), w.close()


def test_wandb_starts_while_the_run_goes_on(tmp_path, monkeypatch):
    """The W&B start (import + wandb.init, which waits for W&B's service process) runs beside the model load: the
    constructor and log_config return while wandb.init is still held back; the first call that needs the run waits,
    and the config logged meanwhile reaches the (real, offline) run."""
    import threading

    import wandb

    from wan_dist.observability.wandb_sink import WandbSink, read_offline_records
    gate, real = threading.Event(), wandb.init
    monkeypatch.setattr(wandb, "init", lambda *a, **k: gate.wait(120) and real(*a, **k))
    built = {}
    t = threading.Thread(target=lambda: built.setdefault("sink", WandbSink(_cfg(tmp_path), tmp_path)), daemon=True)
    t.start()
    t.join(60)
    assert "sink" in built, "the constructor waited for wandb.init"
    sink = built["sink"]
    sink.log_config({"model": "tiny-t2v", "api_key": "secret"})   # held, not waited for
    assert sink.run is None and sink._starting.is_alive()
    gate.set()
    assert sink.active and sink.run is not None
    sink.close()
    (wfile,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    update = {i.key: i.value_json for r in read_offline_records(wfile) if r.WhichOneof("record_type") == "config"
              for i in r.config.update}
    assert json.loads(update["model"]) == "tiny-t2v" and "secret" not in update["api_key"]


def test_wandb_table_rows_are_capped_and_the_drop_counted(tmp_path, monkeypatch, caplog):
    """A long batch: the rows held for the end-of-run Tables stop at the caps; the series still get every step and
    the summary says how many table rows were left out."""
    import wandb

    from wan_dist.observability import wandb_sink
    from wan_dist.observability.wandb_sink import WandbSink
    monkeypatch.setattr(wandb_sink, "TABLE_MAX_ROWS", 3)
    monkeypatch.setattr(wandb_sink, "STEP_TABLE_MAX_ROWS", 5)
    logged, summary = [], {}

    class Run:
        def log(self, d, *a, **k):
            logged.append(d)
    Run.summary = summary
    w = WandbSink.__new__(WandbSink)
    w.cfg, w.out_dir, w.run, w.wandb = _cfg(tmp_path), tmp_path, Run(), wandb
    w.rows, w.step_rows, w.n_videos, w.global_step = [], [], 0, 0
    w.dropped = {"videos": 0, "per_step": 0}
    for i in range(4):
        w.log_video({"id": f"v{i}", "timings": {}, "per_step_s": [0.1, 0.2]}, tmp_path / "missing.mp4")
    assert len(w.rows) == 3 and len(w.step_rows) == 5 and w.dropped == {"videos": 1, "per_step": 3}
    assert sum("step/seconds" in d for d in logged) == 8
    assert sum("W&B videos table is full" in r.message for r in caplog.records) == 1
    w.log_summary({"done": 4})
    assert summary["wandb/videos_rows_dropped"] == 1 and summary["wandb/per_step_rows_dropped"] == 3
    assert summary["done"] == 4


def test_only_rank0_logs(tmp_path):
    from wan_dist.observability.sinks import FiguresSink, NullSink, make_sink
    cfg = _cfg(tmp_path, kind="none")
    assert isinstance(make_sink(cfg, tmp_path, is_logger=False), NullSink)
    assert isinstance(make_sink(_cfg(tmp_path), tmp_path, is_logger=False), NullSink)
    assert isinstance(make_sink(cfg, tmp_path, is_logger=True), FiguresSink)


def test_figures_sink_keeps_totals_not_sidecars(tmp_path):
    """A long batch: the sink keeps running totals (no sidecar per video) and the run line equals run_figures over
    every sidecar; a repeated id is printed but counted once."""
    from wan_dist.observability.figures import run_figures, run_line
    from wan_dist.observability.sinks import FiguresSink, NullSink
    lines = []
    sink = FiguresSink(NullSink(), tmp_path, printer=lambda line, **k: lines.append(line))
    scs = [{"id": f"v{i}", "inference_s": 0.1 + i * 1e-3, "video": {"frames": 5 + i % 3},
            "timings": {"expert_switch": 0.01 * (i % 2)}, "expert_switches": i % 2, "run": {"model_load_s": 1.5},
            "per_step_s": [0.01] * 40} for i in range(500)]
    for sc in scs:
        sink.log_video(sc, tmp_path / f"{sc['id']}.mp4")
    sink.log_video(scs[0], tmp_path / "v0.mp4")
    assert not any(isinstance(v, (list, dict)) and len(v) >= len(scs) for v in vars(sink).values())
    for load in (2.0, None):
        sink.log_summary({"model_load_s": load})
        assert lines[-1] == run_line(run_figures(scs, load))
    assert sink.totals.figures(None)["model_load_s"] == 1.5 and sink.totals.videos == 500


def test_null_sink_imports_no_wandb(runs):
    assert "WANDB_IMPORTED=False" in runs["none"].stdout
    assert not (runs["none"].out / "wandb").exists()


# ---------------------------------------------------------------- report

def _check_png(p: Path) -> None:
    from PIL import Image
    data = p.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 2000, p
    with Image.open(p) as im:
        im.verify()
    with Image.open(p) as im:
        assert im.size[0] > 300 and im.size[1] > 200


def test_report_single_run(runs):
    from wan_dist.cli import main
    out = runs["wandb"].out
    assert main(["report", str(out)]) == 0
    rep = out / "report"
    for name in ("stage_breakdown.png", "per_step.png"):
        _check_png(rep / name)
    assert not list(rep.glob("sweep_*.png"))
    scs = _sidecars(out)
    rows = list(csv.DictReader(io.StringIO((rep / "videos.csv").read_text())))
    assert sorted(r["id"] for r in rows) == ["cat", "dog"]
    for r in rows:
        sc = scs[r["id"]]
        for k, v in sc["timings"].items():
            assert float(r[f"{k}_s"]) == pytest.approx(v), k
        assert float(r["inference_s"]) == pytest.approx(sc["inference_s"])
        assert float(r["frames_per_second"]) == pytest.approx(sc["frames_per_second"])
        assert int(r["seed"]) == sc["seed"] and int(r["expert_switches"]) == sc["expert_switches"]
    stages = {r["stage"]: r for r in csv.DictReader(io.StringIO((rep / "stages.csv").read_text()))}
    for k in ("text_encode", "denoise", "expert_switch", "vae_decode", "save", "total"):
        assert float(stages[k]["total_s"]) == pytest.approx(sum(sc["timings"][k] for sc in scs.values()), abs=1e-5)
        assert int(stages[k]["videos"]) == 2
    assert int(stages["model_load"]["videos"]) == 1     # one load, charged to one video
    md = (rep / "report.md").read_text()
    assert "| denoise | 2 |" in md and "![per_step](per_step.png)" in md and "frames/s" in md
    assert f"{scs['cat']['timings']['denoise']:.4f}" in md


def test_report_sweep(runs, tmp_path):
    """A Hydra multirun layout: OUT/<n>_<overrides>/videos/*.json, one setting per sub-directory."""
    from wan_dist.observability.report import load_sidecars, swept_keys, write_report
    base = _sidecars(runs["none"].out)
    for n, cts in enumerate((0, 2, 4)):
        vdir = tmp_path / f"{n}_sample.cfg_truncate_steps={cts}" / "videos"
        vdir.mkdir(parents=True)
        for vid, sc in base.items():
            sc = copy.deepcopy(sc)
            sc["cfg_truncate_steps"] = cts
            sc["timings"]["denoise"] = round(1.0 - 0.1 * cts, 6)
            (vdir / f"{vid}.json").write_text(json.dumps(sc))
    assert swept_keys(load_sidecars(tmp_path)) == ["cfg_truncate_steps"]
    rep = write_report(tmp_path)
    for name in ("stage_breakdown.png", "per_step.png", "sweep_cfg_truncate_steps.png"):
        _check_png(rep / name)
    rows = list(csv.DictReader(io.StringIO((rep / "videos.csv").read_text())))
    assert len(rows) == 6
    assert {r["setting"] for r in rows} == {"0_sample.cfg_truncate_steps=0", "1_sample.cfg_truncate_steps=2",
                                            "2_sample.cfg_truncate_steps=4"}
    for r in rows:
        assert float(r["denoise_s"]) == pytest.approx(1.0 - 0.1 * int(r["cfg_truncate_steps"]))
    assert "swept: cfg_truncate_steps" in (rep / "report.md").read_text()


def test_report_empty_dir_is_an_error(tmp_path, capsys):
    from wan_dist.cli import main
    assert main(["report", str(tmp_path)]) == 1
    assert "no sidecars" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["report", "compare"])
def test_report_and_compare_of_a_missing_dir_is_an_error_not_a_traceback(tmp_path, capsys, command):
    from wan_dist.cli import main
    assert main([command, str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "no such directory" in err and "Traceback" not in err


# ---------------------------------------------------------------- progress

def test_progress_log_lines_when_not_a_tty(caplog):
    from wan_dist.observability.progress import Progress
    caplog.set_level(logging.INFO, logger="wan_dist.progress")
    p = Progress(enabled=True, stream=io.StringIO())
    assert not p.tty
    p.item_start(0, 2, "vid-a")
    for i in range(40):
        p.step(i, 40)
    p.item_end(True)
    msgs = [r.getMessage() for r in caplog.records]
    steps = [m for m in msgs if "step " in m]
    assert msgs[0] == "video 1/2: vid-a"
    assert steps[0].endswith("step 1/40 (2%)")                              # it started
    assert len(steps) == 11 and steps[-1].endswith("step 40/40 (100%)")   # then one line every 10 %
    caplog.clear()
    Progress(enabled=False).step(0, 10)
    assert not caplog.records


def test_progress_bars_on_a_tty():
    from wan_dist.observability.progress import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True
    s = Tty()
    p = Progress(enabled=True, stream=s)
    for n in range(2):
        p.item_start(n, 2, f"v{n}")
        for i in range(5):
            p.step(i, 5)
        p.item_end(True)
    text = s.getvalue()
    assert "videos" in text and "2/2" in text and "step" in text

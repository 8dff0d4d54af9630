"""`wan-dist report OUT_DIR`: timing tables (Markdown + CSV) and PNG plots from the per-video sidecars.

Reads `OUT_DIR/videos/*.json` and, for a Hydra multirun sweep, `OUT_DIR/<n>_<overrides>/videos/*.json` (one setting
per sub-directory). Writes into `OUT_DIR/report/`:
  report.md            the four figures, the per-video and per-stage tables, the plots
  videos.csv           one row per video: setting, request settings, every stage (s), inference, fps, memory
  stages.csv           one row per stage: videos, total / mean / min / max seconds
  stage_breakdown.png  stacked bars per video (seconds per stage; expert switch shown inside denoise)
  per_step.png         seconds per denoising step per video, the expert of each step, the switch marked
  sweep_<key>.png      (sweeps only) mean seconds per video against the swept setting, e.g. cfg_truncate_steps
"""
from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from .figures import run_figures, run_line
from .stages import TIMING_KEYS

log = logging.getLogger("wan_dist.report")

STAGES = TIMING_KEYS
SETTING_KEYS = ("model", "steps", "shift", "solver", "guide_scale", "guide_scale_high", "cfg_truncate_steps",
                "cfg_truncate_high_noise_steps", "cfg_truncate_keep", "frame_num", "size")
VIDEO_COLUMNS = (["setting", "id", "seed", "prompt"] + list(SETTING_KEYS) + ["frames", "forwards_cond",
                                                                                "forwards_uncond"]
                 + [f"{s}_s" for s in STAGES] + ["inference_s", "frames_per_second", "expert_switches",
                                                 "peak_memory_mib", "peak_memory_kind"])
STAGE_COLUMNS = ["stage", "videos", "total_s", "mean_s", "min_s", "max_s"]
LABELS = {"model_load": "model load", "compile": "compile", "text_encode": "text encode", "latents": "latents",
          "denoise": "denoise", "expert_switch": "expert switch", "vae_decode": "VAE decode", "save": "save",
          "total": "total", "inference": "pure inference"}


def find_sidecars(out_dir) -> list[tuple[str, Path]]:
    """(setting, path) for every sidecar; setting is '' for OUT_DIR/videos, else the sweep sub-directory name."""
    root = Path(out_dir)
    if not root.is_dir():
        raise ValueError(f"out_dir={str(out_dir)!r}: no such directory (give a run's or a sweep's out_dir)")
    found = [("", p) for p in sorted((root / "videos").glob("*.json"))]
    for sub in sorted(p for p in root.iterdir()
                      if p.is_dir() and p.name not in ("videos", "report", "wandb", "compare")):
        found += [(sub.name, p) for p in sorted((sub / "videos").glob("*.json"))]
    return found


def load_sidecars(out_dir) -> list[dict]:
    rows = []
    for setting, p in find_sidecars(out_dir):
        try:
            sc = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            log.warning("skipping unreadable sidecar %s: %s", p, e)
            continue
        if isinstance(sc, dict) and isinstance(sc.get("timings"), dict):
            sc["_setting"] = setting
            rows.append(sc)
    return rows


def _frames(sc) -> int:
    return int((sc.get("video") or {}).get("frames", sc.get("frame_num") or 0))


def _setting_value(v):
    return "x".join(map(str, v)) if isinstance(v, (list, tuple)) else v


def video_rows(sidecars: list[dict]) -> list[dict]:
    rows = []
    for sc in sidecars:
        t, mem = sc["timings"], sc.get("peak_memory") or {}
        row = {"setting": sc.get("_setting", ""), "id": sc.get("id"), "seed": sc.get("seed"),
               "prompt": sc.get("prompt")}
        row.update({k: _setting_value(sc.get(k)) for k in SETTING_KEYS})
        row["frames"] = _frames(sc)
        fw = sc.get("forwards") or {}
        row.update({"forwards_cond": fw.get("cond"), "forwards_uncond": fw.get("uncond")})
        row.update({f"{s}_s": t.get(s, 0.0) for s in STAGES})
        row.update({"inference_s": sc.get("inference_s"), "frames_per_second": sc.get("frames_per_second"),
                    "expert_switches": sc.get("expert_switches"),
                    "peak_memory_mib": round(mem["bytes"] / 2**20, 1) if mem.get("bytes") else None,
                    "peak_memory_kind": mem.get("kind")})
        rows.append(row)
    return rows


def stage_rows(sidecars: list[dict]) -> list[dict]:
    rows = []
    for s in STAGES + ("inference",):
        vals = [float(sc.get("inference_s") or 0.0) if s == "inference" else float(sc["timings"].get(s, 0.0))
                for sc in sidecars]
        if s in ("model_load", "compile"):  # charged to the first video of each process: count those, not videos
            vals = [v for v in vals if v > 0] or [0.0]
        rows.append({"stage": s, "videos": len(vals) if sidecars else 0, "total_s": round(sum(vals), 6),
                     "mean_s": round(sum(vals) / len(vals), 6) if vals else 0.0,
                     "min_s": round(min(vals), 6) if vals else 0.0, "max_s": round(max(vals), 6) if vals else 0.0})
    return rows


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


def _md(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        if isinstance(v, float):
            s = f"{v:.2e}" if 0 < abs(v) < 1e-3 else f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) >= 100 else f"{v:.4f}"
        else:
            s = "" if v is None else str(v)
        return s.replace("|", "\\|").replace("\n", " ")[:60]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def swept_keys(sidecars: list[dict]) -> list[str]:
    """Settings that differ between the sub-directories of a sweep (and are constant within each)."""
    settings = sorted({sc.get("_setting", "") for sc in sidecars})
    if len(settings) < 2:
        return []
    keys = []
    for k in SETTING_KEYS:
        per = {}
        for sc in sidecars:
            per.setdefault(sc.get("_setting", ""), set()).add(json.dumps(sc.get(k)))
        if all(len(v) == 1 for v in per.values()) and len({next(iter(v)) for v in per.values()}) > 1:
            keys.append(k)
    return keys


def _short_dir_label(setting: str) -> str:
    """`3_sample.cfg_truncate_keep=cond,sample.cfg_truncate_steps=1` -> `cfg_truncate_keep=cond, cfg_truncate_steps=1`
    (the job number and the group prefixes dropped): for sweeps over keys the sidecars do not record."""
    _, _, rest = setting.partition("_") if setting.split("_", 1)[0].isdigit() else ("", "", setting)
    parts = []
    for piece in rest.split(","):
        key, eq, value = piece.partition("=")
        if eq:
            parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
        elif parts:             # a value holding a comma (a swept list)
            parts[-1] += "," + piece
    return ", ".join(parts) or setting


def setting_labels(sidecars: list[dict]) -> dict[str, str]:
    """A short label per sweep setting for plots: the swept keys' short names and values (`cfg_truncate_steps=3`),
    never the whole override string. Falls back to the shortened directory name when the recorded settings do not
    tell the settings apart (a sweep over a key outside SETTING_KEYS, e.g. output.lossless)."""
    settings = sorted({sc.get("_setting", "") for sc in sidecars})
    if len(settings) < 2:
        return {s: "" for s in settings}
    keys = swept_keys(sidecars)
    first = {}
    for sc in sidecars:
        first.setdefault(sc.get("_setting", ""), sc)
    labels = {s: ", ".join(f"{k}={_setting_value(first[s].get(k))}" for k in keys) for s in settings}
    if not keys or len(set(labels.values())) < len(settings):
        labels = {s: _short_dir_label(s) for s in settings}
    return labels


def _label(sc, labels: dict | None = None) -> str:
    """A video's label in plots: its id, and in a sweep its setting's short label."""
    short = (labels or {}).get(sc.get("_setting", ""), sc.get("_setting"))
    return f"{sc['id']} ({short})" if short else str(sc["id"])


def plot_stage_breakdown(sidecars, path: Path, labels: dict | None = None) -> None:
    import matplotlib.pyplot as plt
    parts = [("model_load", "#9e9e9e"), ("compile", "#bab0ac"), ("text_encode", "#4e79a7"), ("latents", "#76b7b2"),
             ("denoise_only", "#f28e2b"), ("expert_switch", "#e15759"), ("vae_decode", "#59a14f"),
             ("save", "#b07aa1")]
    names = [_label(sc, labels) for sc in sidecars]
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.45 * len(sidecars) + 1.5)))
    left = [0.0] * len(sidecars)
    for key, color in parts:
        if key == "denoise_only":
            vals = [max(0.0, sc["timings"].get("denoise", 0.0) - sc["timings"].get("expert_switch", 0.0))
                    for sc in sidecars]
            name = "denoise (steps)"
        else:
            vals = [float(sc["timings"].get(key, 0.0)) for sc in sidecars]
            name = LABELS[key]
        ax.barh(range(len(names)), vals, left=left, color=color, label=name)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_yticks(range(len(names)), names)   # by position: two videos with one label stay two bars
    ax.set_xlabel("time (seconds)")
    ax.set_ylabel("video")
    ax.set_title("Stage breakdown per video (model load is charged to a process's first video)", fontsize=10)
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="stage")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    """Legends sit outside the axes (never over the data); the saved box grows to hold them and every label."""
    import matplotlib.pyplot as plt
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)


def plot_per_step(sidecars, path: Path, max_videos: int = 12, labels: dict | None = None) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    markers = {"high": "^", "low": "v", "single": "o"}
    shown = [sc for sc in sidecars if sc.get("per_step_s")][:max_videos]
    handles, switched = [], False
    ax.set_prop_cycle(color=plt.get_cmap("tab20" if len(shown) > 10 else "tab10").colors)  # no colour twice
    for sc in shown:
        steps = [1000.0 * s for s in sc["per_step_s"]]
        experts = sc.get("step_experts") or ["single"] * len(steps)
        line, = ax.plot(range(len(steps)), steps, alpha=0.8, label=_label(sc, labels))
        handles.append(line)
        for ex in sorted(set(experts)):
            idx = [i for i, e in enumerate(experts) if e == ex]
            ax.scatter(idx, [steps[i] for i in idx], marker=markers.get(ex, "o"), color=line.get_color(), s=22)
        for i in range(1, len(experts)):
            if experts[i] != experts[i - 1]:
                ax.axvline(i - 0.5, color=line.get_color(), linestyle="--", alpha=0.6)
                switched = True
    # the key to the marks after the videos: one entry each, in black (the marks take their video's colour)
    if switched:
        handles.append(Line2D([], [], color="k", linestyle="--", label="expert switch (high → low noise)"))
    for ex, m in markers.items():
        if any(ex in (sc.get("step_experts") or ["single"]) for sc in shown):
            handles.append(Line2D([], [], marker=m, color="k", linestyle="none",
                                  label=f"{ex}-noise expert" if ex != "single" else "single model"))
    ax.set_xlabel("denoising step")
    ax.set_ylabel("time per step (milliseconds)")
    ax.set_title("Per-step time" + (f" (first {max_videos} videos)" if len(sidecars) > max_videos else ""))
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="video",
              title_fontsize=8)
    _save(fig, path)


def plot_sweep(sidecars, key: str, path: Path) -> None:
    import matplotlib.pyplot as plt
    by: dict = {}
    for sc in sidecars:
        by.setdefault(json.dumps(sc.get(key)), []).append(sc)

    def order(k):
        v = json.loads(k)
        return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))
    xs = sorted(by, key=order)
    xlabels = [str(_setting_value(json.loads(x))) for x in xs]
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    for name, get in (("denoise", lambda s: s["timings"].get("denoise", 0.0)),
                      ("pure inference", lambda s: s.get("inference_s") or 0.0),
                      ("VAE decode", lambda s: s["timings"].get("vae_decode", 0.0))):
        ys = [sum(get(s) for s in by[x]) / len(by[x]) for x in xs]
        ax.plot(range(len(xs)), ys, marker="o", label=f"{name} (mean per video)")
    crowded = sum(len(x) + 2 for x in xlabels) > 60        # long values (sizes, prompts): slant them
    ax.set_xticks(range(len(xs)), xlabels, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_xlabel(key)
    ax.set_ylabel("time per video (seconds)")
    others = len({sc.get("_setting") for sc in sidecars}) > len(xs)
    ax.set_title(f"Time against {key} ({len(sidecars)} videos, {len(xs)} values"
                 + (", mean over the other swept settings" if others else "") + ")", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def write_report(out_dir) -> Path:
    """Write OUT_DIR/report/ and return its path. Raises ValueError when there is no sidecar to report on."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    from ..files import write_bytes_atomic

    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir}: no such directory")
    sidecars = load_sidecars(out_dir)
    if not sidecars:
        raise ValueError(f"{out_dir}: no sidecars (videos/*.json or <sweep>/videos/*.json) to report on")
    rep = out_dir / "report"
    rep.mkdir(parents=True, exist_ok=True)
    vrows, srows = video_rows(sidecars), stage_rows(sidecars)
    write_bytes_atomic(rep / "videos.csv", _csv(vrows, VIDEO_COLUMNS).encode())
    write_bytes_atomic(rep / "stages.csv", _csv(srows, STAGE_COLUMNS).encode())
    plots = ["stage_breakdown.png", "per_step.png"]
    labels = setting_labels(sidecars)
    plot_stage_breakdown(sidecars, rep / "stage_breakdown.png", labels)
    plot_per_step(sidecars, rep / "per_step.png", labels=labels)
    keys = swept_keys(sidecars)
    for k in keys:
        plot_sweep(sidecars, k, rep / f"sweep_{k}.png")
        plots.append(f"sweep_{k}.png")
    settings = sorted({sc["_setting"] for sc in sidecars})
    md = [f"# wan-dist timing report: `{out_dir}`", ""]
    if len(settings) > 1:
        md += [f"Sweep: {len(settings)} settings ({', '.join(f'`{s}`' for s in settings)}); "
               f"swept: {', '.join(keys) or 'n/a'}.", ""]
    md += ["## The four figures", ""]
    for s in settings:
        scs = [sc for sc in sidecars if sc["_setting"] == s]
        md.append(f"- {'`' + s + '`: ' if s else ''}" + run_line(run_figures(scs, None)).replace("[figures] ", ""))
    md += ["", "Model load is the one-time load of the process (per component in the sidecars' `run.load_seconds`);",
           "pure inference = text encode + latents + denoise + VAE decode (no load, no save); expert switch is",
           "inside denoise; frames per second = frames / pure inference. All times in seconds.", "",
           "## Per stage", "", _md(srows, STAGE_COLUMNS), "",
           "## Per video", "",
           _md(vrows, ["setting", "id", "seed", "steps", "cfg_truncate_steps", "cfg_truncate_high_noise_steps",
                       "cfg_truncate_keep", "forwards_cond", "forwards_uncond", "frames", "model_load_s",
                       "text_encode_s", "denoise_s", "expert_switch_s", "vae_decode_s", "save_s", "total_s",
                       "inference_s", "frames_per_second", "expert_switches", "peak_memory_mib"]
               if len(settings) > 1 else
               ["id", "seed", "steps", "frames", "model_load_s", "text_encode_s", "latents_s", "denoise_s",
                "expert_switch_s", "vae_decode_s", "save_s", "total_s", "inference_s", "frames_per_second",
                "expert_switches", "peak_memory_mib"]), "",
           "Full tables: [videos.csv](videos.csv), [stages.csv](stages.csv).", "", "## Plots", ""]
    md += [f"![{p[:-4]}]({p})" for p in plots]
    write_bytes_atomic(rep / "report.md", ("\n".join(md) + "\n").encode())
    return rep


def add_args(p) -> None:
    p.add_argument("out_dir", help="a run's out_dir (videos/*.json) or a sweep's (<n>_<overrides>/videos/*.json)")


def run_cli(args) -> int:
    import sys
    try:
        rep = write_report(args.out_dir)
    except ValueError as e:
        print(f"wan-dist report: error: {e}", file=sys.stderr)
        return 1
    print(f"report: {rep / 'report.md'} (tables: videos.csv, stages.csv; plots: {rep}/*.png)")
    return 0

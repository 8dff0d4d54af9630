"""`wan-dist compare SWEEP_DIR`: what each setting of a sweep costs and changes, against the baseline setting.

For every video of every setting, its baseline video: CFG truncation 0 in both windows (either keep mode: with no
window they are the same run) with the same id, seed, prompt and other sampling settings (SIGNATURE), the earliest
such job when several qualify (a later one when the earliest's video carries the process's warm-up); with
`baseline=`, that sub-directory's video with the same id and seed. Then
  forwards   DiT forwards (cond + uncond) of each, and how many the setting skipped
  time       denoise and total seconds (total = the item's wall time less the one-time model load) and what was saved
  fidelity   PSNR / SSIM of the decoded frames and relative L2 / cosine of the final latents (analysis/fidelity.py)
The functions are reusable: `compare_runs(run_dir, baseline_dir)` compares two plain out_dirs (e.g. a speed
setting on and off), `compare_sweep(sweep_dir)` a sweep. `write_comparison` writes SWEEP_DIR/compare/ (compare.md,
compare.csv per setting, compare_videos.csv per video, time_vs_fidelity.png) and, when the sweep ran with
logger=wandb, logs one W&B run in the sweep's group with the comparison table.

Timing caveat: the first video a process makes carries one-time warm-up (lazy initialisation, kernel selection), so
rows involving such a video are marked `warmup` and left out of a setting's time figures when it has other videos.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..observability.report import load_sidecars

SIGNATURE = ("model", "prompt", "negative_prompt", "seed", "steps", "shift", "solver", "guide_scale",
             "guide_scale_high", "size", "frame_num", "image")
TRUNCATION = ("cfg_truncate_steps", "cfg_truncate_high_noise_steps", "cfg_truncate_keep")
VIDEO_COLUMNS = (["setting", "baseline", "id", "seed", *TRUNCATION, "forwards", "baseline_forwards",
                  "forwards_skipped", "denoise_s", "baseline_denoise_s", "denoise_saved_s", "denoise_saved_pct",
                  "total_s", "baseline_total_s", "total_saved_s", "total_saved_pct", "warmup", "psnr_db",
                  "psnr_db_min", "ssim", "latent_rel_l2", "latent_cosine", "frames_source", "frames_exact"])
SETTING_COLUMNS = (["setting", "baseline", "videos", *TRUNCATION, "forwards", "forwards_skipped",
                    "forwards_skipped_pct", "denoise_s", "denoise_saved_s", "denoise_saved_pct", "total_s",
                    "total_saved_s", "total_saved_pct", "timing_videos", "psnr_db", "psnr_db_min", "identical", "ssim",
                    "latent_rel_l2", "latent_cosine", "frames_source"])


@dataclass
class Comparison:
    videos: list[dict]                         # one row per (setting, video), VIDEO_COLUMNS
    settings: list[dict]                       # one row per setting, SETTING_COLUMNS
    baselines: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)   # "<setting>/<id>" without a baseline video


def setting_order(name: str):
    """Sweep sub-directories in job order: `<n>_...` by n, then by name ('' = OUT_DIR/videos first)."""
    head = name.split("_", 1)[0]
    return (int(head), name) if head.isdigit() else (-1 if not name else 10**9, name)


def is_baseline(sc: dict) -> bool:
    return not sc.get("cfg_truncate_steps") and not sc.get("cfg_truncate_high_noise_steps")


def signature(sc: dict) -> str:
    return json.dumps([sc.get(k) for k in SIGNATURE], default=str)


def forwards(sc: dict) -> int:
    return int(sum((sc.get("forwards") or {}).values()))


def warm(sc: dict) -> bool:
    """The first video a process made after loading: it carries one-time warm-up (lazy init, kernel selection)."""
    return bool((sc.get("timings") or {}).get("model_load"))


def total_s(sc: dict) -> float:
    t = sc.get("timings") or {}
    return float(t.get("total", 0.0)) - float(t.get("model_load", 0.0))


def _pct(part: float, whole: float):
    return round(100.0 * part / whole, 3) if whole else None


def compare_pair(run_dir, sc: dict, base_dir, base: dict, device="cpu") -> dict:
    """One video against its baseline video: forwards, time and fidelity."""
    dn, bdn = float(sc["timings"].get("denoise", 0.0)), float(base["timings"].get("denoise", 0.0))
    tot, btot = total_s(sc), total_s(base)
    row = {"id": sc.get("id"), "seed": sc.get("seed"), **{k: sc.get(k) for k in TRUNCATION},
           "forwards": forwards(sc), "baseline_forwards": forwards(base),
           "forwards_skipped": forwards(base) - forwards(sc),
           "denoise_s": round(dn, 6), "baseline_denoise_s": round(bdn, 6), "denoise_saved_s": round(bdn - dn, 6),
           "denoise_saved_pct": _pct(bdn - dn, bdn), "total_s": round(tot, 6), "baseline_total_s": round(btot, 6),
           "total_saved_s": round(btot - tot, 6), "total_saved_pct": _pct(btot - tot, btot),
           "warmup": warm(sc) or warm(base)}
    from .fidelity import video_fidelity     # torch: imported when comparing, not when `wan-dist` parses its CLI
    row.update(video_fidelity(Path(run_dir), sc, Path(base_dir), base, device))
    return row


def compare_runs(run_dir, baseline_dir, device="cpu") -> list[dict]:
    """Two plain out_dirs (videos/*.json): one row per video of run_dir that baseline_dir made with the same seed."""
    base = {(sc["id"], sc.get("seed")): sc for sc in load_sidecars(baseline_dir) if not sc["_setting"]}
    rows = []
    for sc in load_sidecars(run_dir):
        b = base.get((sc["id"], sc.get("seed")))
        if not sc["_setting"] and b is not None:
            rows.append({"setting": str(run_dir), "baseline": str(baseline_dir),
                         **compare_pair(run_dir, sc, baseline_dir, b, device)})
    return rows


def compare_sweep(sweep_dir, baseline: str | None = None, device="cpu") -> Comparison:
    """Every setting of a sweep directory (<n>_<key=value,...>/videos/*.json) against its baseline."""
    sweep_dir = Path(sweep_dir)
    sidecars = sorted(load_sidecars(sweep_dir), key=lambda sc: (setting_order(sc["_setting"]), str(sc["id"])))
    if not sidecars:
        raise ValueError(f"{sweep_dir}: no sidecars (<setting>/videos/*.json) to compare")
    names = sorted({sc["_setting"] for sc in sidecars}, key=setting_order)
    if baseline is not None and baseline not in names:
        raise ValueError(f"baseline={baseline!r}: not a setting of {sweep_dir}; settings: {', '.join(names)}")
    index: dict[tuple, tuple[str, dict]] = {}
    for sc in sidecars:   # earliest job first: the first qualifying video, or a later one without the warm-up
        if baseline is not None and sc["_setting"] == baseline:
            key = (sc["id"], sc.get("seed"))
        elif baseline is None and is_baseline(sc):
            key = (sc["id"], signature(sc))
        else:
            continue
        if key not in index or (warm(index[key][1]) and not warm(sc)):
            index[key] = (sc["_setting"], sc)
    comp = Comparison([], [])
    for sc in sidecars:
        key = (sc["id"], sc.get("seed")) if baseline is not None else (sc["id"], signature(sc))
        if key not in index:
            comp.unmatched.append(f"{sc['_setting']}/{sc['id']}")
            continue
        bname, base = index[key]
        row = compare_pair(sweep_dir / sc["_setting"], sc, sweep_dir / bname, base, device)
        comp.videos.append({"setting": sc["_setting"], "baseline": bname, **row})
    if not comp.videos:
        raise ValueError(f"{sweep_dir}: no video has a baseline (CFG truncation 0 in both windows with the same id, "
                         "seed and other settings); run that setting too, or name one with --baseline")
    comp.baselines = sorted({r["baseline"] for r in comp.videos}, key=setting_order)
    comp.settings = setting_rows(comp.videos)
    return comp


def _mean(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return round(sum(xs) / len(xs), 6) if xs else None


def setting_rows(videos: list[dict]) -> list[dict]:
    """Per setting: means over its videos; the time figures over the videos without warm-up when there are any;
    psnr_db over the videos that differ from their baseline (inf when none does; `identical` counts the others)."""
    out = []
    for name in sorted({r["setting"] for r in videos}, key=setting_order):
        rows = [r for r in videos if r["setting"] == name]
        timed = [r for r in rows if not r["warmup"]] or rows
        base_fw = sum(r["baseline_forwards"] for r in rows)
        bdn, btot = sum(r["baseline_denoise_s"] for r in timed), sum(r["baseline_total_s"] for r in timed)
        psnr = [r["psnr_db"] for r in rows]
        out.append({"setting": name, "baseline": ", ".join(sorted({r["baseline"] for r in rows})),
                    "videos": len(rows), **{k: rows[0].get(k) for k in TRUNCATION},
                    "forwards": _mean([r["forwards"] for r in rows]),
                    "forwards_skipped": _mean([r["forwards_skipped"] for r in rows]),
                    "forwards_skipped_pct": _pct(sum(r["forwards_skipped"] for r in rows), base_fw),
                    "denoise_s": _mean([r["denoise_s"] for r in timed]),
                    "denoise_saved_s": _mean([r["denoise_saved_s"] for r in timed]),
                    "denoise_saved_pct": _pct(sum(r["denoise_saved_s"] for r in timed), bdn),
                    "total_s": _mean([r["total_s"] for r in timed]),
                    "total_saved_s": _mean([r["total_saved_s"] for r in timed]),
                    "total_saved_pct": _pct(sum(r["total_saved_s"] for r in timed), btot),
                    "timing_videos": len(timed),
                    "psnr_db": math.inf if psnr and all(math.isinf(p) for p in psnr) else
                    _mean([p for p in psnr if not math.isinf(p)]),
                    "psnr_db_min": min(r["psnr_db_min"] for r in rows),
                    "identical": sum(math.isinf(p) for p in psnr),      # videos equal to their baseline
                    "ssim": _mean([r["ssim"] for r in rows]),
                    "latent_rel_l2": _mean([r.get("latent_rel_l2") for r in rows]),
                    "latent_cosine": _mean([r.get("latent_cosine") for r in rows]),
                    "frames_source": ", ".join(sorted({r["frames_source"] for r in rows}))})
    return out


def write_comparison(sweep_dir, baseline: str | None = None, device="cpu", wandb: str = "auto") -> Path:
    """SWEEP_DIR/compare/ (tables, plot) and, with logger=wandb in the sweep's config (or wandb="on"), one W&B run."""
    from .compare_out import log_wandb, write_files
    comp = compare_sweep(sweep_dir, baseline, device)
    out = write_files(Path(sweep_dir), comp)
    log_wandb(Path(sweep_dir), comp, out, wandb)
    return out


def add_args(p) -> None:
    p.add_argument("sweep_dir", help="a sweep's out_dir (<n>_<key=value,...>/videos/*.json)")
    p.add_argument("--baseline", default=None,
                   help="the setting (sub-directory name) to compare against; default: per video, the earliest job "
                        "with CFG truncation 0 and otherwise the same settings")
    p.add_argument("--device", default="cpu", help="where PSNR/SSIM are computed: cpu (default), cuda, cuda:1, ...")
    p.add_argument("--wandb", choices=("auto", "on", "off"), default="auto",
                   help="log the comparison table to W&B: auto = when the sweep ran with logger=wandb")


def run_cli(args) -> int:
    import sys
    try:
        out = write_comparison(args.sweep_dir, args.baseline, args.device, args.wandb)
    except ValueError as e:
        print(f"wan-dist compare: error: {e}", file=sys.stderr)
        return 1
    print(f"compare: {out / 'compare.md'} (tables: compare.csv, compare_videos.csv; plot: "
          f"{out / 'time_vs_fidelity.png'})")
    return 0

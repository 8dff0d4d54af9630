"""What `wan-dist compare` writes: SWEEP_DIR/compare/{compare.md, compare.csv, compare_videos.csv,
time_vs_fidelity.png}, and the W&B comparison run (one Table, in the sweep's W&B group)."""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

from ..files import write_bytes_atomic
from .compare import SETTING_COLUMNS, VIDEO_COLUMNS, Comparison

log = logging.getLogger("wan_dist.compare")
MD_COLUMNS = ["setting", "cfg_truncate_steps", "cfg_truncate_high_noise_steps", "cfg_truncate_keep", "videos",
              "forwards_skipped", "forwards_skipped_pct", "denoise_saved_pct", "total_saved_pct", "psnr_db",
              "ssim", "latent_rel_l2", "latent_cosine"]


def _cell(v) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.6g}" if abs(v) < 1e4 else f"{v:.0f}"
    return "" if v is None else str(v).replace("|", "\\|")


def _csv(rows: list[dict], columns: list[str]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in columns})
    return buf.getvalue().encode()


def _md_table(rows: list[dict], columns: list[str]) -> list[str]:
    return (["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            + ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows])


def _label(r: dict, with_m: bool = True) -> str:
    """A setting's short label: the truncation windows (M only where some setting has one) and the keep mode."""
    m = f" M={r['cfg_truncate_high_noise_steps']}" if with_m else ""
    return f"N={r['cfg_truncate_steps']}{m} {r['cfg_truncate_keep']}"


def plot_time_vs_fidelity(comp: Comparison, path: Path) -> None:
    """Denoise time saved (%) against PSNR and SSIM, one point per setting, marker by keep mode."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    pts = [r for r in comp.settings if r["setting"] not in comp.baselines and r["denoise_saved_pct"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    markers = {"uncond": "o", "cond": "s"}
    with_m = any(r["cfg_truncate_high_noise_steps"] for r in pts)
    for ax, key, unit in ((axes[0], "psnr_db", "PSNR vs baseline (dB, higher = closer)"),
                          (axes[1], "ssim", "SSIM vs baseline (1 = identical)")):
        for keep, m in markers.items():
            sel = [r for r in pts if r["cfg_truncate_keep"] == keep and r[key] is not None
                   and not math.isinf(r[key])]
            if not sel:           # no empty entry in the key for a keep mode the sweep did not run
                continue
            ax.scatter([r["denoise_saved_pct"] for r in sel], [r[key] for r in sel], marker=m, s=40,
                       label=f"keep={keep}")
            for r in sel:
                ax.annotate(_label(r, with_m).rsplit(" ", 1)[0], (r["denoise_saved_pct"], r[key]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("denoise time saved vs baseline (%)")
        ax.set_ylabel(unit)
        ax.margins(0.15)          # room for the point labels inside the axes
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    if handles:                   # one key for both panels, below them: never over a point
        fig.legend(handles, names, loc="outside lower center", ncols=len(handles), fontsize=8,
                   title="the pass a truncated step runs", title_fontsize=8)
    same = sum(1 for r in pts if r["psnr_db"] is not None and math.isinf(r["psnr_db"]))
    fig.suptitle(f"What each setting costs and changes ({len(pts)} setting(s) vs the baseline; N = last steps "
                 + ("of the run, M = last high-noise steps" if with_m else "of the run") + " with one DiT forward"
                 + (f"; {same} identical to it, not drawn" if same else "") + ")", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)


def write_files(sweep_dir: Path, comp: Comparison) -> Path:
    out = sweep_dir / "compare"
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "compare.csv", _csv(comp.settings, SETTING_COLUMNS))
    write_bytes_atomic(out / "compare_videos.csv", _csv(comp.videos, VIDEO_COLUMNS))
    plot_time_vs_fidelity(comp, out / "time_vs_fidelity.png")
    exact = all(r["frames_exact"] for r in comp.videos)
    md = [f"# What each setting costs and changes: `{sweep_dir}`", "",
          f"Baseline: {', '.join(f'`{b}`' for b in comp.baselines)} (CFG truncation 0; per video the same id, seed "
          "and other settings). Forwards = DiT forward passes (cond + uncond); time saved = baseline − setting, "
          "total = the item's wall time less the one-time model load; PSNR / SSIM of the decoded frames, relative "
          "L2 / cosine of the final latents (when saved) against the baseline video.", "",
          *_md_table(comp.settings, MD_COLUMNS), "",
          "Frames: " + ("exact (PNG frames or lossless mp4)." if exact else
                        "from lossy H.264 mp4s: codec noise is part of every difference (use output.lossless=true "
                        "or output.frames=png for exact frames)."),
          "Timing: the first video of a process carries one-time warm-up; rows with it (`warmup` in "
          "compare_videos.csv) are left out of a setting's time figures when it has other videos.", ""]
    if comp.unmatched:
        md += [f"No baseline video for: {', '.join(comp.unmatched)}.", ""]
    md += ["Full tables: [compare.csv](compare.csv), [compare_videos.csv](compare_videos.csv).", "",
           "![time vs fidelity](time_vs_fidelity.png)", ""]
    write_bytes_atomic(out / "compare.md", "\n".join(md).encode())
    return out


def _sweep_logger(sweep_dir: Path, comp: Comparison) -> dict | None:
    """The logger settings the sweep's jobs ran with (their config.yaml), wandb ones first."""
    import yaml
    found = None
    for name in sorted({r["setting"] for r in comp.videos}):
        p = sweep_dir / name / "config.yaml"
        try:
            lc = ((yaml.safe_load(p.read_text()) or {}).get("config") or {}).get("logger") or {}
        except (OSError, yaml.YAMLError):
            continue
        if lc.get("kind") == "wandb":
            return lc
        found = found or lc
    return found


def log_wandb(sweep_dir: Path, comp: Comparison, out: Path, mode: str = "auto") -> None:
    if mode == "off":
        return
    lc = _sweep_logger(sweep_dir, comp) or {}
    if mode == "auto" and lc.get("kind") != "wandb":
        return
    from ..observability.wandb_sink import log_table_run
    group = lc.get("group") or sweep_dir.resolve().name
    log_table_run(project=lc.get("project") or "wan-dist", group=group, name=f"{group}-compare",
                  mode=lc.get("mode") or "offline", out_dir=sweep_dir, table="comparison",
                  columns=SETTING_COLUMNS, rows=[[_wb(r.get(c)) for c in SETTING_COLUMNS] for r in comp.settings],
                  image=out / "time_vs_fidelity.png")


def _wb(v):
    """W&B tables hold JSON numbers: an infinite PSNR (a video identical to its baseline; `identical` counts them)
    is left empty."""
    return None if isinstance(v, float) and math.isinf(v) else v

"""The report's and compare's plots are legible: legends outside the data, videos and settings labelled by the swept
keys' short names and values (`cfg_truncate_steps=1`), never by the whole override string of a job directory.
Synthetic sidecars, no model: the figures are inspected before they are saved."""
from __future__ import annotations

import math
import types

import matplotlib
import pytest

matplotlib.use("Agg", force=True)

from wan_dist.analysis import compare_out
from wan_dist.observability import report


def sidecar(setting: str, vid: str, n: int, keep: str, **extra) -> dict:
    steps = 6
    return {"_setting": setting, "id": vid, "cfg_truncate_steps": n, "cfg_truncate_keep": keep,
            "cfg_truncate_high_noise_steps": 0, "steps": steps, "model": "tiny-t2v-moe", "seed": 1,
            "timings": {"model_load": 0.0, "text_encode": 0.1, "latents": 0.01, "denoise": 0.5 - 0.05 * n,
                        "expert_switch": 0.0, "vae_decode": 0.3, "save": 0.02, "total": 1.0},
            "inference_s": 0.9, "per_step_s": [0.05 + 0.001 * i for i in range(steps)],
            "step_experts": ["high"] * 3 + ["low"] * 3, **extra}


def sweep_sidecars() -> list[dict]:
    scs = []
    for job, (n, keep) in enumerate((n, k) for n in (0, 1, 2) for k in ("uncond", "cond")):
        setting = f"{job}_sample.cfg_truncate_keep={keep},sample.cfg_truncate_steps={n}"
        scs += [sidecar(setting, vid, n, keep) for vid in ("cat", "dog")]
    return scs


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions would save, kept open for inspection."""
    kept = []
    monkeypatch.setattr(report, "_save", lambda fig, path: kept.append(fig))
    yield kept
    import matplotlib.pyplot as plt
    for fig in kept:
        plt.close(fig)


def outside(fig, legend) -> bool:
    """The legend's box overlaps no axes' data area."""
    fig.canvas.draw()
    box = legend.get_window_extent()
    return all(not box.overlaps(ax.get_window_extent()) for ax in fig.axes)


def test_setting_labels_are_the_swept_keys_short_names():
    labels = report.setting_labels(sweep_sidecars())
    assert labels["3_sample.cfg_truncate_keep=cond,sample.cfg_truncate_steps=1"] == \
        "cfg_truncate_steps=1, cfg_truncate_keep=cond"
    assert report.setting_labels([sidecar("", "cat", 0, "uncond")]) == {"": ""}     # a single run: ids only
    # a sweep over a key the sidecars do not record: the directory name, job number and group prefixes dropped
    other = [sidecar(f"{i}_output.lossless={v}", "cat", 0, "uncond") for i, v in enumerate(("false", "true"))]
    assert report.setting_labels(other) == {"0_output.lossless=false": "lossless=false",
                                            "1_output.lossless=true": "lossless=true"}
    # recorded settings that do not tell two settings apart fall back to the directory names too
    mixed = [sidecar(f"{i}_output.crf={c},sample.cfg_truncate_steps=1", "cat", 1, "uncond")
             for i, c in enumerate((10, 30))] + [sidecar("2_output.crf=10,sample.cfg_truncate_steps=2", "cat", 2,
                                                         "uncond")]
    labels = report.setting_labels(mixed)
    assert len(set(labels.values())) == 3 and labels["1_output.crf=30,sample.cfg_truncate_steps=1"] == \
        "crf=30, cfg_truncate_steps=1"


def test_per_step_legend_outside_with_short_labels(figures, tmp_path):
    scs = sweep_sidecars()
    report.plot_per_step(scs, tmp_path / "p.png", labels=report.setting_labels(scs))
    (fig,) = figures
    legend = fig.axes[0].get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[:2] == ["cat (cfg_truncate_steps=0, cfg_truncate_keep=uncond)",
                         "dog (cfg_truncate_steps=0, cfg_truncate_keep=uncond)"]
    assert texts[-3:] == ["expert switch (high → low noise)", "high-noise expert", "low-noise expert"]
    assert not any("sample." in t or "_sample" in t for t in texts)
    assert len({line.get_color() for line in fig.axes[0].get_lines() if line.get_label() in texts}) == len(scs)
    assert outside(fig, legend)


def test_stage_breakdown_and_sweep_plots(figures, tmp_path):
    scs = sweep_sidecars()
    report.plot_stage_breakdown(scs, tmp_path / "s.png", report.setting_labels(scs))
    report.plot_sweep(scs, "cfg_truncate_steps", tmp_path / "w.png")
    stages, sweep = figures
    ticks = [t.get_text() for t in stages.axes[0].get_yticklabels()]
    assert ticks[0] == "cat (cfg_truncate_steps=0, cfg_truncate_keep=uncond)" and len(ticks) == len(scs)
    assert outside(stages, stages.axes[0].get_legend())
    ax = sweep.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"] and ax.get_xlabel() == "cfg_truncate_steps"
    assert "mean over the other swept settings" in ax.get_title()
    assert outside(sweep, ax.get_legend())


def test_compare_plot_key_below_the_panels(monkeypatch, tmp_path):
    import matplotlib.figure
    kept = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: kept.append(self))
    rows = [{"setting": f"{i}_x", "cfg_truncate_steps": n, "cfg_truncate_high_noise_steps": 0,
             "cfg_truncate_keep": "uncond", "denoise_saved_pct": 10.0 * n, "psnr_db": math.inf if n == 0 else 40 - n,
             "ssim": 1.0 - 0.01 * n} for i, n in enumerate((0, 3, 5))]
    compare_out.plot_time_vs_fidelity(types.SimpleNamespace(settings=rows, baselines=["0_x"]), tmp_path / "c.png")
    (fig,) = kept
    notes = sorted(t.get_text() for ax in fig.axes for t in ax.texts)
    assert notes == ["N=3", "N=3", "N=5", "N=5"]                # M only when a setting has one
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["keep=uncond"]   # no entry for a mode not run
    assert outside(fig, legend)

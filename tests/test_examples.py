"""Every example in examples/ runs as its README shows, on the tiny models, and makes what it promises: the JSONL
manifest's per-row overrides reach the sidecars and the videos, the image-to-video manifest finds its images and keeps
their aspect ratios, the sweep script leaves every job, the report and the comparison, the multi-GPU script's tiny
command runs a 2-rank Ulysses replica, and every real-model layout it lists passes the layout rules at its rank count.

The commands run here are the documented ones (checked against examples/README.md and README.md), with the outputs
moved to a temp dir and, for rows that do not set their own, a smaller size and frame count.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EX = REPO / "examples"
BIN = Path(sys.executable).parent
FAST = ["sample.frame_num=5", "sample.size=32*32", "batch.progress=false"]   # rows that set their own keep them
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "OUT", "CKPT", "MANIFEST", "DRY_RUN"))},
       "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

TINY_MOE = "runs/examples/ckpt-tiny-t2v-moe"
JSONL_CMD = ("python launch/run.py model=tiny-t2v-moe ckpt_dir=runs/examples/ckpt-tiny-t2v-moe "
             "manifest=examples/rows.jsonl out_dir=runs/examples/jsonl")
I2V_CMD = ("python launch/run.py model=tiny-i2v-moe ckpt_dir=runs/examples/ckpt-tiny-i2v-moe "
           "manifest=examples/i2v/rows.csv out_dir=runs/examples/i2v")
ULYSSES_CMD = ("wan-dist torchrun --standalone --nproc_per_node 2 launch/run.py model=tiny-t2v-moe "
               "ckpt_dir=runs/examples/ckpt-tiny-t2v-moe manifest=examples/text_prompts.csv parallel.ulysses=2 "
               "out_dir=runs/examples/tiny")
SWEEP_JOBS = [f"{n}_sample.cfg_truncate_high_noise_steps={m},sample.cfg_truncate_steps={k}"
              for n, (k, m) in enumerate((k, m) for k in (0, 1, 2) for m in (0, 2))]


def flat(text: str) -> str:
    """Shell text with line continuations joined and runs of blanks made one: commands compare as typed."""
    return re.sub(r"[ \t]+", " ", text.replace("\\\n", " "))


def sidecars(videos: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(videos.glob("*.json"))}


def check_video(videos: Path, sc: dict) -> None:
    """The mp4 decodes to the frame count and size its sidecar records."""
    from wan_dist.pipeline.video_io import read_mp4
    frames = read_mp4(videos / f"{sc['id']}.mp4")
    w, h = sc["size"]
    assert frames.shape == (sc["frame_num"], h, w, 3), (sc["id"], frames.shape)
    assert (sc["video"]["frames"], sc["video"]["width"], sc["video"]["height"]) == (sc["frame_num"], w, h)


def run_documented(cmd: str, ckpt: Path, out: Path, fast=tuple(FAST)) -> int:
    """A documented `python launch/run.py ...` command, in this process: its overrides with the checkpoint and
    out_dir moved, manifest paths from the repository root, `fast` appended."""
    from wan_dist import config as config_mod
    from wan_dist.worker import run
    moved = {"ckpt_dir": str(ckpt), "out_dir": str(out)}
    overrides = []
    for o in shlex.split(cmd)[2:]:
        key, _, value = o.partition("=")
        value = moved.get(key, str(REPO / value) if key == "manifest" else value)
        overrides.append(f"{key}={value}")
    return int(run(config_mod.compose(overrides + list(fast))))


def test_the_docs_show_the_commands_run_here():
    ex, readme = flat((EX / "README.md").read_text()), flat((REPO / "README.md").read_text())
    for cmd in (JSONL_CMD, I2V_CMD, ULYSSES_CMD):
        assert cmd in ex, cmd
    assert ULYSSES_CMD in readme and "examples/README.md" in readme and "docs/PARALLEL.md" in readme
    # the sweep the README shows is the one the script runs
    script = flat((EX / "sweep.sh").read_text())
    (run_line,) = [ln for ln in script.splitlines() if ln.startswith("python launch/run.py -m")]
    shown = run_line.replace('"$CKPT"', TINY_MOE).replace('"$OUT/sweep"', "runs/examples/sweep")
    assert shown.replace(' "$@"', "") in ex
    # the multi-GPU script's first command is the one both READMEs show
    p = subprocess.run(["bash", str(EX / "multi_gpu.sh")], env={**ENV, "DRY_RUN": "1"}, cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert [ln for ln in p.stdout.splitlines() if "torchrun" in ln] == [ULYSSES_CMD]


def test_jsonl_rows_override_the_config(tiny_ckpt, tmp_path):
    out = tmp_path / "jsonl"
    assert run_documented(JSONL_CMD, tiny_ckpt("tiny-t2v-moe"), out) == 0
    rows = [json.loads(line) for line in (EX / "rows.jsonl").read_text().splitlines()]
    scs = sidecars(out / "videos")
    assert sorted(scs) == sorted(r["id"] for r in rows)
    for row in rows:
        sc = scs[row["id"]]
        check_video(out / "videos", sc)
        for key, value in row.items():
            if key == "size":
                assert sc["size"] == [int(v) for v in value.split("*")], row["id"]
            elif key == "frame_num":
                assert sc["frame_num_requested"] == value and (sc["frame_num"] - 1) % 4 == 0, row["id"]
            else:
                assert sc[key] == value, (row["id"], key)
        assert len(sc["per_step_s"]) == sc["steps"]
    default = scs["fox-default"]   # only the prompt: the model's steps, the run's size and frames (FAST here)
    assert (default["steps"], default["size"], default["frame_num"]) == (10, [32, 32], 5)
    assert default["seed"] not in {r.get("seed") for r in rows}           # derived from sample.seed and the id
    assert default["cfg_truncate_steps"] == 0 and default["forwards"] == {"cond": 10, "uncond": 10}
    trunc = scs["forest-truncated"]   # frame_num 6 -> 5, N=1 low-noise + M=2 high-noise steps with one forward
    assert trunc["frame_num"] == 5 and any("6" in w and "4n+1" in w for w in trunc["warnings"])
    assert trunc["step_passes"].count("uncond") == 3 and trunc["forwards"] == {"cond": 5, "uncond": 8}
    assert trunc["step_passes"][-1] == "uncond" and trunc["step_experts"][-1] == "low"


def rows_with_sidecars(manifest: Path, videos: Path) -> list[tuple[dict, dict]]:
    """Each row of a CSV manifest with its video's sidecar: every row made, nothing else, each video checked."""
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    scs = sidecars(videos)
    assert sorted(scs) == sorted(r["id"] for r in rows)
    for row in rows:
        check_video(videos, scs[row["id"]])
    return [(row, scs[row["id"]]) for row in rows]


def test_image_to_video_manifest(tiny_ckpt, tmp_path):
    out = tmp_path / "i2v"
    assert run_documented(I2V_CMD, tiny_ckpt("tiny-i2v-moe"), out) == 0
    from PIL import Image
    made = rows_with_sidecars(EX / "i2v" / "rows.csv", out / "videos")
    scs = {row["id"]: sc for row, sc in made}
    for row, sc in made:
        img = EX / "i2v" / row["image"]                       # relative to the manifest, recorded absolute
        assert sc["image"] == str(img) and img.is_file()
        if row["seed"]:
            assert sc["seed"] == int(row["seed"])
        with Image.open(img) as im:
            iw, ih = im.size
        w, h = sc["size"]
        assert w * h <= 32 * 32 and (w > h) == (iw > ih) and (w < h) == (iw < ih), (row["id"], sc["size"])
    assert [scs[i]["size"] for i in ("sunset-waves", "lighthouse-storm", "ball-bounce")] == [[32, 16], [16, 32],
                                                                                          [32, 32]]


def test_demo_manifest(tiny_ckpt, tmp_path):
    """examples/prompts.csv, the manifest `make demo` runs (there on 2 ranks): text rows and an image row."""
    makefile = (REPO / "Makefile").read_text()
    assert "model=tiny-ti2v" in makefile and "manifest=examples/prompts.csv" in makefile
    out = tmp_path / "demo"
    cmd = "python launch/run.py model=tiny-ti2v ckpt_dir=CKPT manifest=examples/prompts.csv out_dir=OUT"
    # the 2.2 VAE's 32-pixel grid: the image row needs the model's 64*64 to keep its 3:2 aspect
    assert run_documented(cmd, tiny_ckpt("tiny-ti2v"), out, fast=["sample.frame_num=5", "batch.progress=false"]) == 0
    for row, sc in rows_with_sidecars(EX / "prompts.csv", out / "videos"):
        assert sc["image"] == (str(EX / row["image"]) if row["image"] else None)
        assert sc["frame_num"] == int(row["frame_num"] or 5) and (not row["seed"] or sc["seed"] == int(row["seed"]))


def _layouts() -> list[str]:
    names = re.findall(r"^([a-z0-9.-]+)\)", (EX / "multi_gpu.sh").read_text(), flags=re.M)
    assert names[0] == "tiny" and len(names) >= 8
    return names[1:]


@pytest.mark.parametrize("name", _layouts())
def test_multi_gpu_layouts_pass_the_rules(name):
    """Each real-model command of examples/multi_gpu.sh composes and passes every layout rule (heads, tokens at the
    model's default size, FSDP on a replica of several ranks, cfg with guidance) at its rank count."""
    from wan_dist import config as config_mod
    from wan_dist.distributed.layout import check_layout
    p = subprocess.run(["bash", str(EX / "multi_gpu.sh"), name], env={**ENV, "DRY_RUN": "1"}, cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    (cmd,) = p.stdout.splitlines()
    argv = shlex.split(cmd)
    assert argv[:2] == ["wan-dist", "torchrun"]
    world = int(argv[argv.index("--nproc_per_node") + 1]) * int(
        argv[argv.index("--nnodes") + 1] if "--nnodes" in argv else 1)
    overrides = argv[argv.index("launch/run.py") + 1:]
    assert any(o.startswith("out_dir=runs/examples/") for o in overrides)
    lay = check_layout(config_mod.compose(overrides), world)
    assert lay.dp * lay.replica_size == world


@pytest.mark.slow
def test_sweep_script(tiny_ckpt, tmp_path):
    p = subprocess.run(["bash", str(EX / "sweep.sh"), *FAST], cwd=REPO, capture_output=True, text=True, timeout=900,
                       env={**ENV, "OUT": str(tmp_path), "CKPT": str(tiny_ckpt("tiny-t2v-moe"))})
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-4000:]
    sweep = tmp_path / "sweep"
    assert sorted(d.name for d in sweep.iterdir() if d.is_dir() and d.name[0].isdigit()) == SWEEP_JOBS
    for job in SWEEP_JOBS:
        scs = sidecars(sweep / job / "videos")
        assert sorted(scs) == ["city-rain", "fox-snow"]
        for sc in scs.values():
            check_video(sweep / job / "videos", sc)
            assert sc["run"]["engine"]["loads"] == 1                     # one load for the whole sweep
            assert (sweep / job / "videos" / f"{sc['id']}.latents.safetensors").is_file()
    rep = sweep / "report"
    for name in ("report.md", "videos.csv", "stage_breakdown.png", "per_step.png", "sweep_cfg_truncate_steps.png",
                 "sweep_cfg_truncate_high_noise_steps.png"):
        assert (rep / name).is_file(), name
    rows = {r["setting"]: r for r in csv.DictReader(io.StringIO((sweep / "compare" / "compare.csv").read_text()))}
    assert sorted(rows) == SWEEP_JOBS and (sweep / "compare" / "time_vs_fidelity.png").is_file()
    for r in rows.values():   # each setting skips N + M forwards per video against N=0, M=0
        n, m = int(r["cfg_truncate_steps"]), int(r["cfg_truncate_high_noise_steps"])
        assert float(r["forwards_skipped"]) == n + m and r["frames_source"] == "mp4 lossless"
    assert "Traceback" not in log


@pytest.mark.slow
def test_multi_gpu_script_runs_two_ranks_with_ulysses(tiny_ckpt, tmp_path):
    p = subprocess.run(["bash", str(EX / "multi_gpu.sh"), "tiny", *FAST], cwd=REPO, capture_output=True,
                       text=True, timeout=600,
                       env={**ENV, "OUT": str(tmp_path), "CKPT": str(tiny_ckpt("tiny-t2v-moe"))})
    log = p.stdout + p.stderr
    assert p.returncode == 0 and "wan-dist torchrun: exit 0" in log, log[-4000:]
    videos = tmp_path / "tiny" / "videos"
    scs = sidecars(videos)
    assert sorted(scs) == ["city-rain", "fox-snow"]
    for sc in scs.values():
        check_video(videos, sc)
        lay = sc["layout"]
        assert (lay["world_size"], lay["dp"], lay["ulysses"], lay["replica_size"]) == (2, 1, 2, 2)
        assert sc["seed"] in (11, 12)

"""Start-up cost (issue 20): each process imports only what its command uses, and ends without interpreter teardown.

What a process imported is read from the real process itself: it runs under `python -X importtime`, which prints every
module the moment it is first imported, to the end (also past the os._exit that ends a run). Times are not checked
here (bench/startup.py and docs/BENCHMARKS.md measure them); what a command imports is.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wan_dist import cli

REPO = Path(__file__).resolve().parents[1]
WAN_DIST = Path(sys.executable).with_name("wan-dist")
# optional or heavy packages that only some commands use: W&B (logger=wandb), plots (report, compare), the UI, Ray,
# Slurm sweeps (submitit), the hub clients (download), PyAV (mp4s), and the model libraries
NOT_FOR_RUNS = {"wandb", "matplotlib", "gradio", "ray", "submitit", "modelscope_hub"}
MODEL_LIBS = {"torch", "diffusers", "transformers", "accelerate", "safetensors"}
NOTHING_HEAVY = NOT_FOR_RUNS | MODEL_LIBS | {"huggingface_hub", "av", "numpy", "PIL", "hydra", "omegaconf"}


def imported(cmd: list[str], ok_codes=(0,)) -> set[str]:
    """Run `cmd` (a python command line) under -X importtime; the top-level packages it imported."""
    return imported_and_output(cmd, ok_codes)[0]


def imported_and_output(cmd: list[str], ok_codes=(0,)) -> tuple[set[str], subprocess.CompletedProcess]:
    p = subprocess.run([sys.executable, "-X", "importtime", *cmd], capture_output=True, text=True, timeout=600,
                       cwd=REPO)
    assert p.returncode in ok_codes, p.stdout + "\n".join(line for line in p.stderr.splitlines()
                                                          if not line.startswith("import time:"))[-3000:]
    return {line.split("|")[-1].strip().split(".")[0] for line in p.stderr.splitlines()
            if line.startswith("import time:") and "self [us]" not in line}, p


def wan_dist_cmd(*args: str) -> list[str]:
    return ["-m", "wan_dist.cli", *args]


@pytest.mark.parametrize("args", [["--help"]] + [[name, "--help"] for name in cli.SUBCOMMANDS],
                         ids=lambda a: " ".join(a))
def test_help_imports_nothing_heavy(args):
    """Building the parser (every subcommand's arguments) and printing help needs none of them; the hub clients, torch
    and diffusers in particular are imported by the subcommand that runs, not when `wan-dist` starts."""
    assert imported(wan_dist_cmd(*args)) & NOTHING_HEAVY == set()


def test_check_checkpoint_imports_the_model_libraries_only_and_flushes_before_its_fast_exit(tiny_ckpt):
    """check-checkpoint builds the library modules on the meta device to know every expected tensor: torch, diffusers
    and transformers, but no logger, plot, UI, cluster or video library. Run as the console script, which ends with
    os._exit (process.exit_now): the report written to a pipe still arrives whole, with the command's exit code."""
    mods, p = imported_and_output([str(WAN_DIST), "check-checkpoint", str(tiny_ckpt("tiny-t2v")), "--model",
                                   "tiny-t2v"])
    assert {"torch", "diffusers", "transformers"} <= mods
    assert mods & (NOT_FOR_RUNS | {"av", "hydra"}) == set()
    assert p.stdout.rstrip().endswith("OK: loadable") and p.stdout.count("\n") >= 8, p.stdout
    p = subprocess.run([str(WAN_DIST), "check-checkpoint", str(REPO / "no-such-dir"), "--model", "tiny-t2v"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "not an existing directory" in p.stderr, p.stdout + p.stderr


@pytest.fixture(scope="module")
def finished_run(tiny_ckpt, tmp_path_factory):
    """One tiny launch/run.py process (logger=none) under -X importtime: (its out_dir, the packages it imported)."""
    work = tmp_path_factory.mktemp("startup")
    manifest = work / "prompts.csv"
    manifest.write_text("id,prompt\ncat,a cat walking on grass\n")
    out = work / "out"
    mods = imported([str(REPO / "launch/run.py"), "model=tiny-t2v", f"ckpt_dir={tiny_ckpt('tiny-t2v')}",
                     f"manifest={manifest}", f"out_dir={out}", "sample.steps=2", "sample.frame_num=5",
                     "sample.size=32*32", "logger=none", "batch.progress=false"])
    return out, mods


@pytest.mark.slow
def test_run_imports_what_it_uses_and_no_more(finished_run):
    out, mods = finished_run
    assert (out / "videos" / "cat.mp4").is_file()
    assert {"torch", "diffusers", "transformers", "av", "hydra"} <= mods        # what a run does use
    assert mods & NOT_FOR_RUNS == set()


@pytest.mark.slow
def test_status_and_report_import_no_model_library(finished_run):
    out, _ = finished_run
    status = imported(wan_dist_cmd("status", str(out), "--json"))
    assert status & NOTHING_HEAVY == set(), status & NOTHING_HEAVY       # reads files only: not even numpy
    report = imported(wan_dist_cmd("report", str(out)))
    assert "matplotlib" in report and (out / "report" / "report.md").is_file()   # its plots
    assert report & ((NOTHING_HEAVY - {"matplotlib", "numpy", "PIL"}) | {"wandb"}) == set()


def test_collector_paused_freezes_what_the_block_made():
    """In a fresh interpreter (a frozen heap would outlive the test in this one): inside the block the collector is
    off; after it, every object alive is frozen (later collections skip it) and the collector is on again; a nested
    block, or one entered with the collector disabled by the caller, changes nothing."""
    code = """
import gc, json
from wan_dist.process import collector_paused
out = {"before": gc.get_freeze_count()}
with collector_paused():
    out["inside_enabled"] = gc.isenabled()
    made = [[i] for i in range(50_000)]
    with collector_paused():
        out["nested_freeze"] = gc.get_freeze_count()
out["after_enabled"] = gc.isenabled()
out["frozen"] = gc.get_freeze_count()
gc.disable()
with collector_paused():
    more = [[i] for i in range(1000)]
out["callers_choice_kept"] = not gc.isenabled() and gc.get_freeze_count() == out["frozen"]
print(json.dumps(out))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    out = json.loads(p.stdout)
    assert out["before"] == 0 and out["nested_freeze"] == 0 and out["inside_enabled"] is False
    assert out["after_enabled"] is True and out["frozen"] >= 50_000
    assert out["callers_choice_kept"] is True

"""`wan-dist` console script: the torchrun supervisor and small maintenance subcommands (the batch runner itself is
launch/run.py).

Add a subcommand by writing `_add_x(parser)` + `_run_x(args) -> int` and registering them in `SUBCOMMANDS`.
Exit codes: 0 success, 1 the checked thing is not usable, 2 usage errors (unknown model, bad arguments);
`wan-dist torchrun` and `wan-dist slurm-job` exit with the run's own code (README "Exit codes"); `download` adds 74
(disk/IO problems) and 130 (stopped), see its --help; `status` exits 0 only when every manifest id is done.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from wan_dist.process import collector_paused, exit_now


def _add_tiny(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="tiny model name (tiny-t2v, tiny-ti2v, tiny-t2v-moe, tiny-i2v-moe)")
    p.add_argument("dir", help="output checkpoint directory (created atomically)")
    p.add_argument("--seed", type=int, default=0, help="weight seed; the same seed gives byte-identical files")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists and is not empty")


def _run_tiny(args) -> int:
    from wan_dist.models.registry import get_model
    from wan_dist.models.tiny import write_tiny_checkpoint

    try:
        get_model(args.model)
        path = write_tiny_checkpoint(args.model, args.dir, seed=args.seed, overwrite=args.overwrite)
    except ValueError as e:
        print(f"wan-dist tiny-checkpoint: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote tiny {args.model} checkpoint (seed {args.seed}, random weights) to {path}")
    return 0


def _add_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="checkpoint directory (native Wan layout or a *-Diffusers repo)")
    p.add_argument("--model", required=True, help="registry model name the checkpoint must serve, e.g. t2v-A14B")


def _run_check(args) -> int:
    from wan_dist.models.checkpoint import validate_checkpoint
    from wan_dist.models.registry import get_model

    try:
        spec = get_model(args.model)
    except ValueError as e:
        print(f"wan-dist check-checkpoint: error: {e}", file=sys.stderr)
        return 2
    try:
        with collector_paused():   # mostly imports and meta-device modules: nothing for the GC (wan_dist/process.py)
            report = validate_checkpoint(args.dir, spec)
    except ValueError as e:  # missing directory
        print(f"wan-dist check-checkpoint: error: {e}", file=sys.stderr)
        return 1
    print(report.format())
    return 0 if report.ok else 1


def _lazy(module: str) -> tuple[Callable, Callable]:
    """(add_args, run_cli) of a subcommand's module, imported only when that subcommand is built or run: `wan-dist`
    and the light subcommands never import what the others need (tests/test_startup.py)."""
    def mod():
        import importlib
        return importlib.import_module(module)
    return (lambda p: mod().add_args(p)), (lambda a: mod().run_cli(a))


# name -> (help, add_args, run); other modules may register more (e.g. "report")
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]] = {
    "tiny-checkpoint": ("write a tiny random-weight native checkpoint", _add_tiny, _run_tiny),
    "check-checkpoint": ("validate a checkpoint directory before loading it", _add_check, _run_check),
    "download": ("fetch exactly the files a model needs from Hugging Face or ModelScope (resumable, verified), "
                 "then validate them",
                 *_lazy("wan_dist.download.cli")),
    "status": ("done / failed / running / pending counts of an out_dir against its manifest (per Slurm array task "
               "when known), throughput and ETA; exit 0 only when every manifest id is done",
               *_lazy("wan_dist.batch.status")),
    "report": ("timing tables (Markdown, CSV) and plots from a run's or sweep's sidecars into OUT_DIR/report/",
               *_lazy("wan_dist.observability.report")),
    "decode": ("saved latents (output.save_latents=true) back into an mp4, with the checkpoint's VAE",
               *_lazy("wan_dist.batch.redecode")),
    "compare": ("what each setting of a sweep costs and changes against the baseline (forwards and time saved, "
                "PSNR/SSIM of the frames, latent distance) into SWEEP_DIR/compare/",
                *_lazy("wan_dist.analysis.compare")),
}


SLURM_JOB_HELP = ("inside a Slurm batch script (slurm/*.sbatch): one run over the job's allocation (ranks per node "
                  "from it), exit 75 requeues the job")
TORCHRUN_HELP = ("run torchrun with these options and launch/run.py; exit with the run's own code (0, 2, 3, 74, 75) "
                 "and forward SIGTERM/SIGINT/SIGUSR1 to the workers")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wan-dist", description="wan-dist utilities")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("torchrun", help=TORCHRUN_HELP, add_help=False)   # handled before argparse (see main)
    sub.add_parser("slurm-job", help=SLURM_JOB_HELP, add_help=False)  # likewise
    for name, (help_text, add_args, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["torchrun"]:   # everything after it belongs to torchrun and the run: no parsing here
        from wan_dist.supervise import main as supervise
        return supervise(argv[1:])
    if argv[:1] == ["slurm-job"]:  # likewise: Hydra overrides for the run
        from wan_dist.slurm.job import main as slurm_job
        return slurm_job(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or usage error (2)
        return int(e.code or 0)
    return int(args._run(args))


def console() -> None:
    """The `wan-dist` console script: main(), then the process ends at once (process.exit_now). Every subcommand has
    closed what it wrote when main() returns; a traceback still ends the process the usual way. A subcommand that
    imported torch (check-checkpoint, tiny-checkpoint, decode, compare, download's final check) would otherwise spend
    a second of interpreter teardown finalising modules and objects (docs/BENCHMARKS.md)."""
    exit_now(main())


if __name__ == "__main__":
    console()

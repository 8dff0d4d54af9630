"""Process start-up of the app (launch/app.py): the command line, the config, the layout, the process group, the
session, the server on rank 0, the shutdown, the exit code.

    python launch/app.py model=t2v-1.3B ckpt_dir=DIR [overrides] [--sample_shift 10 --t5_cpu ...]
    wan-dist torchrun --standalone --nproc_per_node N launch/app.py ... parallel.ulysses=N

Exit codes (wan_dist/exit_codes.py): 2 for a user error found before any model work (config, flags, layout,
checkpoint, a port that is taken), 0 after a stop (Ctrl-C, SIGTERM: the generation in flight is dropped at the next
denoise step), 74 when out_dir could not take a video (the server stops), 1 for a crash.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import queue
import socket
import sys

from .. import config as config_mod
from .. import outcome
from ..batch.preempt import StopFlag
from ..distributed.context import env_world
from ..distributed.layout import check_layout
from ..distributed.mesh import open_context
from ..exit_codes import ExitCode
from ..models.device import resolve_device
from ..observability.logs import setup_logging
from ..process import collector_paused
from . import args
from .form import Form
from .session import Session

log = logging.getLogger("wan_dist.ui")


def _say(msg: str) -> None:
    if int(os.environ.get("RANK", 0)) == 0:
        print(msg, file=sys.stderr, flush=True)


def pick_port(host: str, port: int) -> int:
    """ui.port checked before any model work (0: a free port the OS picks; gradio is then given that number)."""
    try:
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        with socket.create_server((host.strip("[]"), port), family=family) as s:
            return s.getsockname()[1]
    except OSError as e:
        raise ValueError(f"ui.host={host!r}, ui.port={port}: cannot listen there ({e.strerror or e}); "
                         "choose another port (ui.port=0 picks a free one)") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> None:
    """Never returns: exits with the code (outcome.exit_with, so `wan-dist torchrun` reports it)."""
    stop = StopFlag().install()
    outcome.mark_started()
    rank, world, local_rank = env_world()
    setup_logging(rank)
    try:
        cl = args.parse(sys.argv[1:] if argv is None else argv)
        if cl.help:
            _say(args.usage())
            outcome.exit_with(ExitCode.OK)
        cfg = args.compose(cl)
        lay = check_layout(cfg, world)
        if lay.dp != 1:
            raise ValueError(f"parallel.dp={lay.dp}: the UI serves one replica (all {world} ranks make each video "
                             "together); use parallel.ulysses / parallel.cfg for the ranks, or launch/run.py for "
                             "data-parallel batches")
        device = resolve_device(cfg.device, local_rank)
    except ValueError as e:
        _say(f"error: {e}")
        outcome.exit_with(ExitCode.USAGE, str(e))
    code = serve(cfg, cl, lay, device, local_rank, stop)
    outcome.exit_with(code, ExitCode(code).meaning)


def serve(cfg, cl, lay, device, local_rank, stop) -> ExitCode:
    with open_context(lay, device, cfg.parallel.backend, local_rank) as ctx:
        try:
            digest = config_mod.config_digest(cfg)
            if ctx.world_any(ctx.share_from_main(lambda: digest) != digest):
                raise ValueError(f"config: a rank composed a different config than rank 0 (sha {digest[:12]} on "
                                 f"rank {ctx.rank}); every rank must get the same argv and files")
            port = ctx.share_from_main(lambda: pick_port(cfg.ui.host, cfg.ui.port))
            with collector_paused():   # the model libraries and the models live as long as the app (process.py)
                session = Session(cfg, ctx, stop, lay, Form(cfg, cl.given, cl.random_seed, lay.replica_size))
        except ValueError as e:
            _say(f"error: {e}")
            return ExitCode.USAGE
        try:
            if ctx.is_main:
                _serve_page(session, cfg, port)
            else:
                session.follow()
        finally:
            session.close()
        return ExitCode.IOERR if session.aborted else ExitCode.OK


def _serve_page(session: Session, cfg, port: int) -> None:
    from . import page
    jobs: queue.Queue = queue.Queue()
    try:
        page.gradio_env(session.out.partial / "gradio")  # before gradio is imported
        with collector_paused():       # gradio and the page's blocks: as long-lived as the models
            demo = page.build(session, jobs, cfg.ui.lang)
        url = page.launch(demo, cfg.ui.host, port)
    except BaseException:
        session.ctx.replica_post(session.seq, None)      # the other ranks end too
        raise
    if not is_loopback(cfg.ui.host):
        log.warning("ui.host=%s is not a loopback address: anyone who can reach this machine on port %d can use "
                    "the UI (no authentication)", cfg.ui.host, port)
    _say(f"wan-dist ui: serving {url} (model {cfg.model.name}, {session.ctx.world_size} rank(s); Ctrl-C stops)")
    try:
        session.serve(jobs)
    finally:
        demo.close()

"""Preemption: SIGTERM, SIGUSR1 (what Slurm sends before a kill, with `--signal=USR1@90`) and SIGINT ask the run to
stop at the next safe point: between items, or between two denoise steps (the item in flight is dropped, nothing
of it is written, and the next run redoes it). The handler only sets a flag; the batch loop checks it, agrees with
the other ranks (`ctx.world_any` / the replica) so every rank stops at the same point, flushes the ledger and the
run exits with EXIT_PREEMPTED (75, EX_TEMPFAIL: "try again later", meant for requeue).

A second SIGINT (Ctrl-C twice) raises KeyboardInterrupt at once.
"""
from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(Exception):
    """Raised between denoise steps when a stop was requested; the item is neither ok nor failed."""


class StopFlag:
    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}
        self._depth = 0                 # install/restore nest: the outermost restore puts the old handlers back

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handler(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            log.warning("received %s: stopping at the next safe point (between items or denoise steps)",
                        signal.Signals(signum).name)
        self.signum = signum

    def request(self, signum: int, why: str) -> None:
        """A stop asked for by someone else than a signal to this process (a Ray gang's driver); `signum` is what
        the run reports as the reason."""
        if self.signum is None:
            log.warning("stop requested (%s): stopping at the next safe point (between items or denoise steps)", why)
            self.signum = signum

    def reclaim(self) -> None:
        """Put this flag's handlers back where a library replaced them (ray.init installs its own SIGTERM handler,
        which exits at once); the handlers found at `install` are still the ones `restore` brings back."""
        if self._depth and threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                signal.signal(s, self._handler)

    def install(self) -> "StopFlag":
        """Install the handlers (main thread only; elsewhere, e.g. in a worker thread, this is a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return self
        self._depth += 1
        if self._depth == 1:
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def restore(self) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0:
            for s, h in self._previous.items():
                signal.signal(s, h)
            self._previous.clear()

    def __getstate__(self) -> dict:
        # a copy sent to another process (a Hydra job pickled for a Slurm node by submitit) starts uninstalled: the
        # handlers and the nesting depth belong to the process that installed them
        return {"signum": None, "_previous": {}, "_depth": 0}

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc):
        self.restore()
        return False

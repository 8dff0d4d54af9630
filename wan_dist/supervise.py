"""`wan-dist torchrun [torchrun's options] launch/run.py [overrides]`: torchrun, with the run's exit code.

torchrun reports every worker failure as its own exit 1 with a ChildFailedError (or SignalException) traceback, so a
scheduler cannot tell "preempted, requeue me" (75) from "bad manifest" (2). This supervisor runs torchrun with
$WAN_DIST_OUTCOME_DIR set: each worker records its code there and exits 0 (wan_dist/outcome.py), and the supervisor
exits with the most urgent recorded code and one line saying what it means.

Signals: SIGTERM, SIGINT and SIGUSR1 sent to the supervisor are forwarded to the workers themselves (their pids are
recorded at start), not to torchrun, which would tear the group down with a traceback. torchrun runs in its own
session, so a terminal's Ctrl-C reaches only the supervisor. The workers stop at their next safe point and record
75. A worker that ends without recording (a crash) makes the run exit 1 -- or 75 when a stop signal was sent, since
a stopped run is to be rerun either way.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import outcome
from .exit_codes import ExitCode, worst

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nusage: wan-dist torchrun [torchrun options] launch/run.py [overrides]\n"
              "example: wan-dist torchrun --standalone --nproc_per_node 8 launch/run.py model=t2v-A14B ...")
        return 0
    d = Path(tempfile.mkdtemp(prefix="wan-dist-outcome-"))
    received: list[int] = []
    signalled: dict[int, set[int]] = {}

    def on_signal(signum, frame):
        received.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in FORWARDED}
    try:
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *argv],
                                env={**os.environ, outcome.OUTCOME_ENV: str(d)}, start_new_session=True,
                                preexec_fn=_ignore_usr1)
        while proc.poll() is None:
            for sig in list(received):
                for pid in outcome.pids(d):
                    if pid not in signalled.setdefault(sig, set()):
                        signalled[sig].add(pid)
                        try:
                            os.kill(pid, sig)
                        except ProcessLookupError:
                            pass
            time.sleep(0.1)
        rc = proc.returncode
        results = outcome.read_all(d)
        started = len(outcome.pids(d))
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        shutil.rmtree(d, ignore_errors=True)
    code = decide(rc, results, started, stopped=bool(received))
    print(f"wan-dist torchrun: exit {int(code)} ({code.meaning})", file=sys.stderr, flush=True)
    return int(code)


def _ignore_usr1() -> None:
    """In the torchrun child, before exec: torchrun has no SIGUSR1 handler, so USR1 would kill the agent (and the
    rendezvous store its workers use). Under Slurm every process of a job step gets the step's signals (srun
    forwarding them, `scancel --signal=USR1 JOB`, `--signal` without `B:`), torchrun included. An ignored signal stays
    ignored across exec; the workers install their own handler at start (entry.hydra_main) and stop at a safe point."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def decide(torchrun_rc: int, results: dict[int, dict], started: int, stopped: bool) -> ExitCode:
    """The run's code from what the workers recorded (see the module doc)."""
    complete = bool(results) and len(results) >= started
    if complete:
        return worst(r["code"] for r in results.values())
    if stopped:
        return ExitCode.TEMPFAIL
    if torchrun_rc == 0 and not started:
        return ExitCode.OK            # not a wan-dist worker (e.g. torchrun --help): nothing recorded, nothing wrong
    return ExitCode.CRASH

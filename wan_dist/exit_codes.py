"""The exit codes of every wan-dist launcher (README "Exit codes"): one enum, one meaning each.

A Slurm script or a scheduler decides on these: 75 requeues, 2 fails fast, 3 is recorded and not retried forever.
"""
from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0             # every item ok (or already complete)
    CRASH = 1          # an unexpected internal error (a traceback is in the log); nothing half-written is kept
    USAGE = 2          # user error: bad config value or key, manifest row, image, size/frames, checkpoint, out_dir
    ITEMS_FAILED = 3   # the batch finished but some items failed (see results.jsonl)
    IOERR = 74         # EX_IOERR: out_dir cannot take more data (disk full, quota, read-only)
    TEMPFAIL = 75      # EX_TEMPFAIL: stopped by SIGTERM / SIGUSR1 / SIGINT at a safe point: requeue, it resumes

    @property
    def meaning(self) -> str:
        return _MEANING[self]


_MEANING = {
    ExitCode.OK: "every item ok",
    ExitCode.CRASH: "internal error (see the traceback in the log)",
    ExitCode.USAGE: "user error: nothing was run",
    ExitCode.ITEMS_FAILED: "some items failed (see results.jsonl)",
    ExitCode.IOERR: "out_dir cannot be written (disk full, quota, read-only)",
    ExitCode.TEMPFAIL: "stopped by a signal at a safe point; rerun to resume",
}

# When several ranks or replicas report different outcomes, the run reports the most urgent one.
SEVERITY = (ExitCode.CRASH, ExitCode.USAGE, ExitCode.IOERR, ExitCode.TEMPFAIL, ExitCode.ITEMS_FAILED, ExitCode.OK)


def worst(codes) -> ExitCode:
    codes = {ExitCode(int(c)) for c in codes}
    return next((c for c in SEVERITY if c in codes), ExitCode.OK)

"""A worker's outcome, recorded for the launcher that supervises it (`wan-dist torchrun`, wan_dist/supervise.py).

torchrun turns any non-zero worker exit into its own exit 1 with a ChildFailedError traceback, and with
`--max-restarts` it restarts the whole group for it. So a supervised worker writes its exit code and one-line
message to `$WAN_DIST_OUTCOME_DIR/rank<RANK>.json` and exits 0; the supervisor reads the files after torchrun ends
and exits with the code itself. Unsupervised (plain torchrun or python), the worker exits with the code directly.
Only a real crash (an exception, a signal that killed the process) still exits non-zero: torchrun may restart that.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

OUTCOME_ENV = "WAN_DIST_OUTCOME_DIR"


def _rank() -> int:
    return int(os.environ.get("RANK", 0))


def supervised() -> bool:
    return bool(os.environ.get(OUTCOME_ENV))


def write_file(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def mark_started() -> None:
    """The supervisor forwards stop signals to these pids (not to torchrun, which would print a traceback)."""
    d = os.environ.get(OUTCOME_ENV)
    if d:
        write_file(Path(d) / f"rank{_rank()}.pid", {"pid": os.getpid()})


def record(code: int, message: str = "") -> None:
    d = os.environ.get(OUTCOME_ENV)
    if d:
        write_file(Path(d) / f"rank{_rank()}.json", {"code": int(code), "message": message, "rank": _rank()})


def exit_with(code: int, message: str = ""):
    """Record the outcome and end the process at once: exit 0 under the supervisor, `code` otherwise.

    os._exit, not SystemExit: everything that matters is already closed (outputs fsynced and renamed, the ledger
    appended, W&B finished, the process group destroyed), and interpreter teardown would only finalise large objects
    one by one -- and, worse, reset the signal handlers to the default first, so a SIGTERM arriving then would kill
    the process instead of being the no-op it is after the run."""
    from .process import exit_now
    record(code, message)
    exit_now(0 if supervised() else int(code))


def read_all(d: Path) -> dict[int, dict]:
    out = {}
    for p in Path(d).glob("rank*.json"):
        try:
            data = json.loads(p.read_text())
            out[int(data["rank"])] = data
        except (OSError, ValueError, KeyError):
            continue
    return out


def pids(d: Path) -> list[int]:
    out = []
    for p in Path(d).glob("rank*.pid"):
        try:
            out.append(int(json.loads(p.read_text())["pid"]))
        except (OSError, ValueError, KeyError):
            continue
    return out

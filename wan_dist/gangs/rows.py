"""The driver's file-side helpers: the queue rebuilt from the ledger, a dead gang's claims and temp files released."""
from __future__ import annotations

import shutil

from ..batch.claims import Claims
from ..batch.outputs import PARTIAL, OutputDir
from ..batch.runner import COMPLETE, FAILED_BEFORE, KEPT, ledger_rule


def queue_rows(items, out: OutputDir, retry_failed: bool, on_change: str) -> tuple[list[tuple[int, str]], int, int]:
    """The queue rebuilt from the ledger: (rows to make, already complete, recorded failed and not retried). A row
    made (or failed) with other settings is queued unless batch.on_change=keep: the gang's batch runner then applies
    batch.on_change to it as on any launcher."""
    latest = out.ledger.latest(refresh=True)
    rows, complete, failed = [], 0, 0
    for it in items:
        rec = latest.get(it.request.id)
        what = ledger_rule(out.is_complete(it.request.id, rec), rec, it, retry_failed=retry_failed,
                           on_change=on_change)
        if what == COMPLETE or (what == KEPT and rec["status"] == "ok"):
            complete += 1
        elif what in (FAILED_BEFORE, KEPT):
            failed += 1
        else:                   # RUN; CHANGED (redo) and CONFLICT (stop): the gang's runner applies batch.on_change
            rows.append((it.index, it.request.id))
    return rows, complete, failed


def release_writer(out: OutputDir, writer: str | None) -> None:
    """A dead gang's claims and temp files: its processes are gone, so nobody needs to wait for the claim timeout."""
    if writer is None:
        return
    dead = Claims(out.root, writer)
    for item_id in dead.ids():
        dead.release(item_id)
    shutil.rmtree(out.root / PARTIAL / writer, ignore_errors=True)

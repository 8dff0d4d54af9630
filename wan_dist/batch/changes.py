"""Ids of this run that out_dir already holds with other settings (batch.on_change decides what happens to them).

Checked once per run on the main rank before any model work (`find_changes`, so `stop` costs nothing), and again by
the batch runner for each id it is about to skip (another run may have made it meanwhile). An id counts when its
latest ledger record would make this run skip it (ok with its mp4 present, or failed while batch.retry_failed is
off) and that record's settings hash differs from this run's; the changed fields come from the old sidecar's
`settings.fields` (a failed record carries its own `settings_fields`).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

from .settings import changed_fields, fields_record


@dataclass(frozen=True)
class Change:
    id: str
    status: str                  # the earlier attempt: ok | failed
    fields: tuple[str, ...]      # what differs
    writer: str                  # who made it


def describe_change(out, it, rec: dict, run: dict) -> Change:
    new = fields_record(run, it.request, it.image_digest)
    if rec.get("status") == "ok":
        old = ((out.read_sidecar(it.request.id) or {}).get("settings") or {}).get("fields")
    else:
        old = rec.get("settings_fields")
    return Change(it.request.id, str(rec.get("status")), tuple(changed_fields(old, new)), str(rec.get("writer", "?")))


def differs(rec: dict | None, it) -> bool:
    return rec is not None and it.settings is not None and rec.get("settings") != it.settings


def find_changes(out, items: list, run: dict, *, retry_failed: bool) -> list[Change]:
    latest = out.ledger.latest()
    found = []
    for it in items:
        rec = latest.get(it.request.id)
        if not differs(rec, it):
            continue
        status = rec.get("status")
        if status == "failed" and retry_failed:
            continue                             # it runs again anyway, with this run's settings
        if status == "ok" and not os.path.lexists(out.path_for(it.request.id, ".mp4")):
            continue                             # gone: redone anyway (no mp4 probe here: 100k ids stay cheap)
        if status in ("ok", "failed"):
            found.append(describe_change(out, it, rec, run))
    return found


def summarize(changes: list[Change], limit: int = 20) -> str:
    lines = [f"  {c.id}: {', '.join(c.fields)}" + (" (it failed then)" if c.status == "failed" else "")
             for c in changes[:limit]]
    if len(changes) > limit:
        lines.append(f"  ... and {len(changes) - limit} more")
    counts = Counter(f for c in changes for f in c.fields)
    lines.append("changed fields: " + ", ".join(f"{f} ({n} id{'s' if n > 1 else ''})" for f, n in counts.most_common()))
    return "\n".join(lines)


def stop_message(out_root, changes: list[Change]) -> str:
    n = len(changes)
    return (f"out_dir={str(out_root)!r}: {n} id{'s' if n > 1 else ''} of this run {'were' if n > 1 else 'was'} made "
            f"before with other settings; batch.on_change=stop (the default) neither skips nor redoes them "
            f"silently, so nothing was run:\n{summarize(changes)}\n"
            "rerun with batch.on_change=redo to make them again with this run's settings (the old files are "
            "replaced), batch.on_change=keep to keep the old videos, or use another out_dir")

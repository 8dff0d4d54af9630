"""The ledger: one record per finished attempt at an item (ok or failed), from many independent writers.

    out_dir/ledger/<writer>.jsonl   one file per writer process; only that process appends to it (fsync per line)
    out_dir/results.jsonl           the merged view of every writer's file, sorted by time, rewritten atomically at
                                    the end of every run (what other tools read; also read back, so a directory
                                    written by an older wan-dist keeps its history)

Nothing depends on O_APPEND being atomic across processes or hosts (it is not on NFS): no two processes ever append
to the same file. A record carries `writer` and `t_ns` (wall clock, ns); records are unique by (writer, t_ns) and an
id's state is its record with the largest t_ns. A torn last line (a writer killed mid-append) is skipped on read; no
writer ever appends to another process's file, so it stays the last line.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..files import write_bytes_atomic
from ..observability.redact import redact

LEDGER_DIR = "ledger"
MERGED = "results.jsonl"


def _parse(path: Path, default_writer: str) -> list[dict]:
    out = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return out
    for n, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("id"), str):
            rec.setdefault("writer", default_writer)
            rec.setdefault("t_ns", n)          # records of an older wan-dist: file order, older than any new one
            out.append(rec)
    return out


class Ledger:
    def __init__(self, root: Path, writer: str, tags: dict | None = None):
        self.root = Path(root)
        self.dir = self.root / LEDGER_DIR
        self.writer = writer
        self.tags = dict(tags or {})     # carried by every record of this writer (array task, Slurm job)
        self.own = self.dir / f"{writer}.jsonl"
        self._latest: dict[str, dict] | None = None

    # -- write --------------------------------------------------------------------------------------------------
    def append(self, record: dict) -> dict:
        """Append one record to this writer's own file (fsync). Returns the record as written."""
        t_ns = time.time_ns()
        rec = redact({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record, **self.tags}, keep=("id",),
                     literals=(record["id"],))   # the id is data, also inside the paths the record names
        rec.update(writer=self.writer, t_ns=t_ns)
        data = (json.dumps(rec, ensure_ascii=False, default=str) + "\n").encode()
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.own, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            n = os.write(fd, data)
            if n != len(data):
                raise OSError(f"short write to {self.own}: {n} of {len(data)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)
        if self._latest is not None:
            self._latest[rec["id"]] = rec
        return rec

    # -- read ---------------------------------------------------------------------------------------------------
    def records(self) -> list[dict]:
        """Every record of every writer (and of the merged view), each once, oldest first."""
        seen, out = set(), []
        sources = [(self.root / MERGED, MERGED)]
        if self.dir.is_dir():
            sources += [(p, p.stem) for p in sorted(self.dir.glob("*.jsonl"))]
        for path, writer in sources:
            for rec in _parse(path, writer):
                key = (rec["writer"], rec["t_ns"], rec["id"])
                if key not in seen:
                    seen.add(key)
                    out.append(rec)
        out.sort(key=lambda r: (r["t_ns"], r["writer"]))
        return out

    def latest(self, refresh: bool = False) -> dict[str, dict]:
        """id -> its newest record (read once and kept up to date with this writer's own appends)."""
        if self._latest is None or refresh:
            self._latest = {}
            for rec in self.records():
                self._latest[rec["id"]] = rec
        return self._latest

    def write_merged_view(self) -> None:
        """results.jsonl = every record, oldest first (atomic replace: a reader sees the old or the new view)."""
        lines = [json.dumps(r, ensure_ascii=False, default=str) for r in self.records()]
        write_bytes_atomic(self.root / MERGED, ("\n".join(lines) + ("\n" if lines else "")).encode())

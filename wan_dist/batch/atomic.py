"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.

A reader sees either the old file, no file, or the whole new file; never half of it. A failed write (ENOSPC, a
signal, an exception) removes its temp file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TMP_TAG = ".tmp-"  # temp names: .<name>.tmp-<pid>; a leftover one (crash, SIGKILL) is removed on resume


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_TAG}{os.getpid()}")


def remove_stale_temps(directory: Path, name: str) -> list[Path]:
    """Remove leftover temp files of `name` (e.g. `a.mp4`) in `directory`; returns what was removed."""
    removed = []
    for p in Path(directory).glob(f".{name}{TMP_TAG}*"):
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _write_all(fh, data: bytes) -> None:
    """One indirection so tests can simulate a disk that fills up half way through a write."""
    fh.write(data)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            _write_all(fh, data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n").encode())


def append_line_durable(path: Path, line: str) -> None:
    """Append one line with O_APPEND (atomic for one write on local filesystems) and fsync it."""
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        n = os.write(fd, data)
        if n != len(data):
            raise OSError(f"short write to {path}: {n} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)

"""Crash-safe file writes (used by every layer that writes into out_dir): temp file, fsync, rename, fsync the dir.

A reader sees either the old file, no file, or the whole new file; never half of it. A failed write (ENOSPC, a
signal, an exception) removes its temp file. Temp files live in the writer's own directory under
`out_dir/.partial/<writer>/` (same filesystem, so the rename is atomic), never next to the outputs: an item id can
never look like someone's temp file, and a crashed writer's leftovers are one directory to remove.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: Path, tmp_dir: Path | None = None) -> Path:
    name = f"{path.name}.{uuid.uuid4().hex[:8]}"
    return Path(tmp_dir) / name if tmp_dir is not None else path.with_name(f".{name}.tmp")


def _write_all(fh, data: bytes) -> None:
    """One indirection so tests can simulate a disk that fills up half way through a write."""
    fh.write(data)


def write_bytes_atomic(path: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp_dir is not None:
        Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, tmp_dir)
    try:
        with open(tmp, "xb") as fh:            # O_CREAT|O_EXCL: never follows a planted symlink
            _write_all(fh, data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, obj, tmp_dir: Path | None = None) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n").encode(), tmp_dir)


def not_a_regular_file(path) -> str | None:
    """None when `path` is a regular file this process may read; else what is there instead, in words.

    Why not `Path.is_file()`: a directory, a FIFO or a device is not "not found", and opening a FIFO would block."""
    import stat
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "is a symlink to a missing file" if os.path.islink(path) else "file not found"
    except NotADirectoryError:
        return "a component of the path is a file, not a directory"
    except PermissionError:
        return "cannot be read: permission denied on a directory of the path"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    for test, kind in kinds:
        if test(st.st_mode):
            return f"is {kind}, not a regular file"
    if not os.access(path, os.R_OK):
        return "cannot be read: permission denied"
    return None

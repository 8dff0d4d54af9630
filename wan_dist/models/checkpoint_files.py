"""File-level checks shared by the native and diffusers checkpoint validators (no tensor is ever loaded).

A safetensors file is: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
then the data block; `data_offsets` are relative to the end of the header. We read only the header and compare
the offsets with the file size, so a truncated 20 GB shard is caught in microseconds.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .dtypes import BYTES, FLOAT_CODES

_MAX_HEADER = 100 * 1024 * 1024  # safetensors itself refuses headers above 100 MB
MAX_LISTED = 10  # keys shown per category before "... and N more"


@dataclass(frozen=True)
class Problem:
    """One reason a checkpoint cannot be loaded; `path` is relative to the checkpoint directory."""
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class FileEntry:
    """A file that the loader will read: which component it feeds and the dtype(s) its header declares."""
    path: str
    what: str
    dtype: str = "-"


@dataclass
class Collector:
    """Accumulates problems and files for one checkpoint, prefixing every message with what/which model."""
    root: Path
    model: str
    problems: list[Problem] = field(default_factory=list)
    files: dict[str, list[FileEntry]] = field(default_factory=dict)

    def rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def add(self, path: Path | str, what: str, problem: str) -> None:
        rel = self.rel(path) if isinstance(path, Path) else path
        self.problems.append(Problem(rel, f"{what} needed by model {self.model}: {problem}"))

    def file(self, component: str, path: Path, what: str, dtype: str = "-") -> None:
        self.files.setdefault(component, []).append(FileEntry(self.rel(path), what, dtype))


def listing(names, limit: int = MAX_LISTED) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


def read_safetensors_header(path: Path) -> dict:
    """The tensor table of a safetensors file ({name: {dtype, shape, data_offsets}}, metadata dropped).

    Raises ValueError("truncated: ...") or ValueError("corrupt: ...") with the sizes involved.
    """
    return read_safetensors_table(path)[0]


def read_safetensors_table(path: Path) -> tuple[dict, int]:
    """(tensor table, byte offset where the data block starts): what the sharded loader needs to pread slices."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"truncated: file is {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:
            raise ValueError(f"corrupt: header length {n} bytes is not plausible (limit {_MAX_HEADER})")
        if 8 + n > size:
            raise ValueError(f"truncated: header claims {8 + n} bytes, file has {size} bytes")
        raw = f.read(n)
    try:
        table = json.loads(raw.decode("utf-8"))
        if not isinstance(table, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"corrupt: header is not valid safetensors JSON ({e})") from None
    table.pop("__metadata__", None)
    end = 0
    for name, info in table.items():
        try:
            dtype, shape, (lo, hi) = info["dtype"], list(info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"corrupt: header entry {name!r} lacks dtype/shape/data_offsets") from None
        if dtype in BYTES and hi - lo != math.prod(shape) * BYTES[dtype]:
            raise ValueError(f"corrupt: tensor {name!r} {dtype}{shape} spans {hi - lo} bytes")
        end = max(end, hi)
    if 8 + n + end > size:
        raise ValueError(f"truncated: header and data offsets need {8 + n + end} bytes, file has {size} bytes")
    return table, 8 + n


def dtype_summary(dtypes) -> str:
    return "+".join(sorted(set(dtypes))) or "-"


def collect_safetensors(col: Collector, folder: Path, stem: str, what: str, component: str,
                        shard_what: str, index_what: str) -> dict | None:
    """Read the headers of `<stem>.safetensors` or `<stem>.safetensors.index.json` + its shards in `folder`.

    Returns {name: (shape tuple, dtype, file relative to the root)} over all files (None when nothing usable was
    found); problems go to `col`.
    The index wins over a single file, as in diffusers' `from_pretrained`.
    """
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError("weight_map is empty or not an object")
        except (ValueError, KeyError, TypeError) as e:
            col.add(index, index_what, f"corrupt index ({type(e).__name__}: {e})")
            return None
        col.file(component, index, index_what)
        shards: dict[str, list[str]] = {}
        for key, fname in weight_map.items():
            shards.setdefault(fname, []).append(key)
        found: dict = {}
        for fname in sorted(shards):
            shard = folder / fname
            if "/" in fname or "\\" in fname or fname.startswith("."):
                col.add(index, index_what, f"names shard {fname!r} outside its folder")
                continue
            if not shard.is_file():
                col.add(shard, shard_what, f"missing {shard_what} (named by {col.rel(index)}, "
                        f"{len(shards[fname])} tensors)")
                continue
            table = _read_one(col, shard, shard_what, component)
            if table is None:
                continue
            lacking = set(shards[fname]) - set(table)
            if lacking:
                col.add(shard, shard_what, f"{len(lacking)} tensors that {col.rel(index)} assigns to this shard "
                        f"are not in it: {listing(lacking)}")
            unlisted = set(table) - set(weight_map)
            if unlisted:
                col.add(shard, shard_what, f"{len(unlisted)} tensors not listed in {col.rel(index)}: "
                        f"{listing(unlisted)}")
            found.update({k: (tuple(v["shape"]), v["dtype"], col.rel(shard)) for k, v in table.items()})
        return found
    if single.is_file():
        table = _read_one(col, single, what, component)
        return None if table is None else {k: (tuple(v["shape"]), v["dtype"], col.rel(single))
                                           for k, v in table.items()}
    orphans = sorted(p.name for p in folder.glob(f"{stem}-*-of-*.safetensors")) if folder.is_dir() else []
    if orphans:
        col.add(index, index_what, f"missing index: {len(orphans)} shard files ({listing(orphans, 3)}) but no "
                f"{index.name} to say which tensor is where")
    else:
        col.add(single, what, f"missing weights: expected {single.name} or {index.name} with its shards")
    return None


def _read_one(col: Collector, path: Path, what: str, component: str) -> dict | None:
    try:
        table = read_safetensors_header(path)
    except ValueError as e:
        col.add(path, what, str(e))
        return None
    except OSError as e:
        col.add(path, what, f"unreadable ({e})")
        return None
    col.file(component, path, what, dtype_summary(v["dtype"] for v in table.values()))
    return table


def compare_tensors(col: Collector, path: Path | str, what: str, found: dict, expected: dict,
                    dtypes=FLOAT_CODES) -> None:
    """Compare {name: (shape, dtype, file)} with {name: shape}: missing, unexpected, wrong shape, bad dtype.

    Missing tensors are reported against `path` (the index or the single file); the others against the file that
    holds them, so a bad shard is named.
    """
    missing = set(expected) - set(found)
    if missing:
        col.add(path, what, f"{len(missing)} missing tensors: {listing(missing)}")
    by_file: dict[str, list[str]] = {}
    for k, (_, _, f) in found.items():
        by_file.setdefault(f, []).append(k)
    for f in sorted(by_file):
        keys = by_file[f]
        unexpected = [k for k in keys if k not in expected]
        if unexpected:
            col.add(f, what, f"{len(unexpected)} unexpected tensors: {listing(unexpected)}")
        wrong = [f"{k} expected {list(expected[k])} found {list(found[k][0])}"
                 for k in sorted(keys) if k in expected and tuple(found[k][0]) != tuple(expected[k])]
        if wrong:
            more = f" ... and {len(wrong) - MAX_LISTED} more" if len(wrong) > MAX_LISTED else ""
            col.add(f, what, f"{len(wrong)} tensors with wrong shape: {'; '.join(wrong[:MAX_LISTED])}{more}")
        bad = [k for k in keys if dtypes is not None and found[k][1] not in dtypes]
        if bad:
            seen = dtype_summary(found[k][1] for k in bad)
            col.add(f, what, f"{len(bad)} tensors with dtype {seen}, allowed {'/'.join(dtypes)}: {listing(bad)}")

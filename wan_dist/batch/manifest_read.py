"""Reading a manifest file into raw records, strictly: no record lost, split or invented.

    CSV    RFC 4180 as Python's csv module reads it with `strict=True`: records end only at a line break outside
           quotes (\\n, \\r\\n or \\r); a quoted cell may hold line breaks, commas and any Unicode character
           (U+2028, U+0085, form feeds, ... are text, never record separators). A quote left open, a closing quote
           followed by anything but a comma or the end of the line, more cells than header columns, an empty or
           repeated header name: each is one problem `file:line: rule`. Cells may be as large as the file.
    JSONL  one JSON object per line, lines separated by \\n only (\\r\\n accepted); a raw U+2028 inside a JSON
           string is valid JSON and stays in the string. A repeated key, NaN / Infinity (not JSON), a value that
           is not an object: each is one problem.
Every problem is collected (with the line a record starts on) so the user sees them all at once.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

from ..files import not_a_regular_file

CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")


class ManifestError(ValueError):
    """Every problem of a manifest (or of one request given directly: `where`); the message lists the first SHOWN
    of them and counts the rest."""
    SHOWN = 100

    def __init__(self, problems: list[str], where: str = "the manifest"):
        self.problems = problems
        n = len(problems)
        more = f"\n  ... and {n - self.SHOWN} more problems" if n > self.SHOWN else ""
        super().__init__(f"{n} problem{'s' if n > 1 else ''} in {where} (nothing was run):\n  "
                         + "\n  ".join(problems[: self.SHOWN]) + more)


def read_records(path: Path) -> tuple[list[tuple[int, dict]], list[str]]:
    """[(line the record starts on, {column: raw value})] and the problems of records that could not be read."""
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + JSONL_SUFFIXES:
        hint = " (JSON Lines: one object per line, named .jsonl)" if suffix == ".json" else ""
        raise ValueError(f"manifest={str(path)!r}: must end in .csv or .jsonl{hint}")
    why = not_a_regular_file(path)
    if why:
        raise ValueError(f"manifest={str(path)!r}: {why}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise ManifestError([f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    except OSError as e:
        raise ValueError(f"manifest={str(path)!r}: cannot be read ({e.strerror})") from None
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path, text)
    return _read_csv(path, text)


# -- JSONL ----------------------------------------------------------------------------------------------------------
class _RecordProblem(ValueError):
    pass


def _object_without_repeats(pairs):
    seen = set()
    for k, _ in pairs:
        if k in seen:
            raise _RecordProblem(f"key {k!r} appears twice in the object (a repeated key would silently win)")
        seen.add(k)
    return dict(pairs)


def _no_constant(name):
    raise _RecordProblem(f"{name} is not a JSON number (write a finite number, or leave the key out)")


def _read_jsonl(path: Path, text: str) -> tuple[list[tuple[int, dict]], list[str]]:
    rows, problems = [], []
    for n, line in enumerate(text.split("\n"), 1):   # JSON Lines: \n is the only record separator
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip(" \t"):                   # JSON whitespace only; U+2028 alone is not a blank line
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_object_without_repeats, parse_constant=_no_constant)
        except _RecordProblem as e:
            problems.append(f"{path}:{n}: {e}")
            continue
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{path}:{n}: each line must be a JSON object, got {type(obj).__name__}")
            continue
        rows.append((n, obj))
    return rows, problems


# -- CSV ------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _field_limit(n: int):
    """csv's cell size limit is process-wide (131072 by default); a cell may be as large as the file itself."""
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, n))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _csv_rule(e: csv.Error) -> str:
    msg = str(e)
    if "unexpected end of data" in msg:
        return ("a quoted cell is never closed: the file ends inside quotes (every '\"' that opens a cell needs a "
                "closing '\"'; write a quote inside a quoted cell as \"\")")
    if "expected after" in msg:
        return ("a closing quote must be followed by a comma or the end of the line (write a quote inside a "
                "quoted cell as \"\", and quote the whole cell)")
    if "NUL" in msg:
        return "contains a NUL byte (not text)"
    return f"not valid CSV ({msg})"


def _read_csv(path: Path, text: str) -> tuple[list[tuple[int, dict]], list[str]]:
    rows, problems = [], []
    with _field_limit(len(text) + 1):
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)   # newline="": csv sees the raw breaks
        try:
            header = next(reader)
        except StopIteration:
            raise ManifestError([f"{path}:1: empty manifest (needs a header with at least 'prompt')"]) from None
        except csv.Error as e:
            raise ManifestError([f"{path}:1: {_csv_rule(e)}"]) from None
        header = [h.strip() for h in header]
        bad = [f"{path}:1: header column {k} has no name" + (" (a trailing comma at the end of the header?)"
                                                              if k == len(header) else "")
               for k, h in enumerate(header, 1) if h == ""]
        bad += [f"{path}:1 {h}: column appears more than once in the header"
                for h in sorted({h for h in header if h and header.count(h) > 1})]
        if bad:
            raise ManifestError(bad)
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as e:     # the reader resumes at the next physical line
                problems.append(f"{path}:{start}: {_csv_rule(e)}")
                continue
            if not cells or all(c.strip() == "" for c in cells):
                continue
            if len(cells) > len(header):
                problems.append(f"{path}:{start}: {len(cells)} cells but the header has {len(header)} columns "
                                "(quote cells that contain commas)")
                continue
            rows.append((start, dict(zip(header, cells))))   # missing trailing cells: not given
    return rows, problems

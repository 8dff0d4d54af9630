"""Which of DIR's files were verified against the hub's hash, so a rerun does not read 100 GB again.

A file whose content hash matched the listing (checked in DIR, or while it was fetched) is remembered in
DIR/.cache/wan-dist/verified.json with the hash it matched and its identity: size, mtime, ctime, inode and device.
A rerun skips hashing a file whose listed hash and identity are both unchanged. Writing to a file, replacing it or
setting its mtime back all change its ctime, which no user call can set, so a file changed in any way since is hashed
again. What this cannot see is corruption that changes no stat field: below the filesystem (a failing disk, bit rot),
or on the way to the disk of a file verified while it was fetched (its hash is of the bytes as they were written,
not read back): `wan-dist download --rehash` reads every file again. The record is only a cache: lost, unreadable
or stale, the files are simply hashed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

FILE = "verified.json"


def identity(path: Path) -> list[int] | None:
    """What a verified file is remembered by (size, mtime, ctime, inode, device), or None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class Verified:
    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / FILE
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            entries = {}
        if not isinstance(entries, dict):
            entries = {}
        self.entries: dict[str, list] = {p: e for p, e in entries.items()
                                         if isinstance(e, list) and len(e) == 6 and isinstance(e[0], str)}

    def holds(self, root: Path, rf) -> bool:
        """root/rf.path was verified as the hub's file `rf` and has not changed since."""
        rec = self.entries.get(rf.path)
        return bool(rec) and rf.key == rec[0] and rec[1:] == identity(root / rf.path)

    def add(self, root: Path, rf, before: list[int] | None = None) -> None:
        """root/rf.path has just been verified against rf's hash. `before`: its identity when the hashing began; a
        file that changed meanwhile (another process wrote it) is not remembered."""
        now = identity(root / rf.path)
        if now is None or (before is not None and before != now):
            self.entries.pop(rf.path, None)
        else:
            self.entries[rf.path] = [rf.key, *now]

    def save(self) -> None:
        tmp = self.path.with_name(f".{FILE}.tmp-{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.entries, indent=0, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
        except OSError:          # a cache: a full disk here only means hashing again next time
            tmp.unlink(missing_ok=True)

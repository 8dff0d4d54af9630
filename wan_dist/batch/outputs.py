"""The output directory: videos/<id>.mp4 + videos/<id>.json (+ optional latents / PNG frames), the ledger, claims.

    out_dir/videos/<id>.mp4, <id>.json          outputs (atomic: temp file in .partial/<writer>/, fsync, rename)
    out_dir/ledger/<writer>.jsonl, results.jsonl  the ledger (batch/ledger.py)
    out_dir/claims/<id>.claim                   who is making an id right now (batch/claims.py)
    out_dir/.partial/<writer>/                  each writer's temp files; a dead writer's are removed
    out_dir/config.yaml, config.history/<time>-<writer>.yaml   the latest run's config, and every run's
Only rank 0 of a replica writes. The ledger line is appended (fsync) after the files it names exist, so a ledger
line 'ok' always points at complete files.

Nothing is written through a symlink inside out_dir (out_dir itself may be one): `check()` refuses a link where one
of wan-dist's files or directories belongs, files are replaced by rename (which replaces a link, never follows it)
and read with O_NOFOLLOW. `prepare()` either sets the directory up or leaves nothing behind: ValueError (exit 2) when
out_dir is not a directory, OutputsUnwritable (exit 74) when it cannot be written (read-only, permission, disk full).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import stat
import time
from pathlib import Path

import numpy as np

from ..files import fsync_dir, write_bytes_atomic, write_json_atomic
from ..observability.redact import redact
from ..pipeline.video_io import encode_mp4, probe_mp4
from .claims import Claims, pid_alive, writer_name
from .ledger import Ledger
from .manifest import check_id

log = logging.getLogger(__name__)

PARTIAL = ".partial"
HISTORY = "config.history"
# what wan-dist creates in out_dir, and of which kind: a symlink (or the wrong kind) there is refused before any write
MANAGED = {"videos": "dir", "ledger": "dir", "claims": "dir", PARTIAL: "dir", HISTORY: "dir", "wandb": "dir",
           "inputs": "dir", "results.jsonl": "file", "config.yaml": "file"}   # inputs/: the UI's uploaded images
SCANNED = ("videos", "ledger", "claims")      # directories whose entries must not be symlinks either
# errors that mean "out_dir cannot take data" (exit 74), whatever was being written
UNWRITABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}


class OutputsUnwritable(RuntimeError):
    """The output directory cannot take more data (disk full, quota, read-only, permission). Exit 74."""


def unwritable_message(root: Path, e: OSError, what: str) -> str:
    name = errno.errorcode.get(e.errno, str(e.errno)) if e.errno else "?"
    return f"out_dir={str(root)!r}: cannot write {what}: {e.strerror or e} ({name})"


def read_nofollow(path: Path) -> bytes:
    """The bytes of a regular file, never through a symlink (OSError otherwise)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file", str(path))
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
# an id is data, never a secret: it passes the redactor unchanged (resume must recognise it), while a secret pasted
# into a prompt by mistake is still cut out
SIDECAR_DATA_KEYS = ("id",)


class OutputDir:
    def __init__(self, root: str | Path, writer: str | None = None, claim_timeout_s: float = 300.0,
                 tags: dict | None = None):
        """`tags`: carried by this writer's ledger records and claims (batch.work.writer_tags)."""
        self.root = Path(root).resolve()
        self.videos = self.root / "videos"
        self.writer = writer or writer_name()
        self.partial = self.root / PARTIAL / self.writer
        self.ledger = Ledger(self.root, self.writer, tags)
        self.claims = Claims(self.root, self.writer, claim_timeout_s, tags)

    # -- the directory ------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Read-only, before any model work: out_dir is a directory (or absent), and none of the entries wan-dist
        writes is a symlink or of the wrong kind. ValueError naming the entry otherwise."""
        root = self.root
        try:
            st = os.stat(root)
        except FileNotFoundError:
            return
        except NotADirectoryError:
            raise ValueError(f"out_dir={str(root)!r}: a component of the path is a file, not a directory") from None
        except OSError as e:
            raise ValueError(f"out_dir={str(root)!r}: cannot be inspected ({e.strerror})") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ValueError(f"out_dir={str(root)!r}: exists and is not a directory")
        bad = []
        for name, kind in MANAGED.items():
            try:
                st = os.lstat(root / name)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise ValueError(f"out_dir={str(root)!r}: {name} cannot be inspected ({e.strerror})") from None
            if stat.S_ISLNK(st.st_mode):
                bad.append(f"{name} is a symlink (to {os.readlink(root / name)})")
            elif (kind == "dir") != stat.S_ISDIR(st.st_mode) or (kind == "file" and not stat.S_ISREG(st.st_mode)):
                bad.append(f"{name} is not a {'directory' if kind == 'dir' else 'regular file'}")
        for name in SCANNED:
            d = root / name
            if d.is_dir() and not d.is_symlink():
                with os.scandir(d) as it:
                    bad += [f"{name}/{e.name} is a symlink (to {os.readlink(e.path)})" for e in it
                            if e.is_symlink()]
        if bad:
            shown = "; ".join(bad[:5]) + (f"; ... and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise ValueError(f"out_dir={str(root)!r}: {shown}. wan-dist writes only inside out_dir and never "
                             "through a link there: remove the link(s) (out_dir itself may be a symlink)")

    def prepare(self, config_doc: dict | None = None) -> None:
        """Main rank of each process, before any writer starts: check, create out_dir and videos/, remove the temp
        areas of writers that are gone, record the config. On failure nothing this call created is left:
        ValueError (not a directory, a symlink inside) or OutputsUnwritable (read-only, permission, disk full)."""
        self.check()
        created: list[Path] = []
        try:
            missing = []
            p = self.root
            while not os.path.lexists(p):
                missing.append(p)
                p = p.parent
            for d in list(reversed(missing)) + [self.videos, self.root / PARTIAL, self.partial]:
                if not os.path.lexists(d):
                    os.mkdir(d)
                    created.append(d)
            self.clean_partial()
            if config_doc is not None:
                self.write_config(config_doc, created)
            fsync_dir(self.root)
        except (NotADirectoryError, FileExistsError) as e:
            self._undo(created)
            raise ValueError(f"out_dir={str(self.root)!r}: {e.filename or self.root} is not a directory") from None
        except OSError as e:
            self._undo(created)
            raise OutputsUnwritable(unwritable_message(self.root, e, "to it") + "; nothing was written") from None
        except BaseException:
            self._undo(created)
            raise

    def _undo(self, created: list[Path]) -> None:
        """Remove what prepare() created, newest first. Directories go only when empty (another process may have
        started using one meanwhile), except this writer's own temp area."""
        for p in reversed(created):
            try:
                if p == self.partial:
                    shutil.rmtree(p)
                elif p.is_dir() and not p.is_symlink():
                    os.rmdir(p)
                else:
                    p.unlink(missing_ok=True)
            except OSError:
                pass

    def clean_partial(self) -> None:
        base = self.root / PARTIAL
        if not base.is_dir():
            return
        host = "".join(c if c.isalnum() or c in ".-" else "-" for c in socket.gethostname())[:64]
        for d in base.iterdir():
            if d.is_symlink() or not d.is_dir():      # planted: remove the entry itself, never what it points to
                d.unlink(missing_ok=True)
                continue
            parts = d.name.rsplit("-", 2)
            try:
                mine_host, pid = parts[0] == host, int(parts[1])
            except (IndexError, ValueError):
                mine_host, pid = False, -1
            gone = (mine_host and not pid_alive(pid)) or \
                (not mine_host and time.time() - d.stat().st_mtime > self.claims.timeout_s)
            if gone and d.name != self.writer:
                log.warning("removed the temp files of an interrupted writer: %s", d)
                shutil.rmtree(d, ignore_errors=True)

    def path_for(self, item_id: str, suffix: str) -> Path:
        """videos/<id><suffix>; the id rule (no '/', not '..') keeps it inside videos/. Not resolved: a symlink at
        that name is replaced by the atomic rename that writes it, never followed."""
        check_id(item_id)
        return self.videos / f"{item_id}{suffix}"

    # -- writing ------------------------------------------------------------------------------------------------
    def write_video(self, item_id: str, frames: np.ndarray, fps: int, *, lossless: bool, crf: int) -> dict:
        data, info = encode_mp4(frames, fps, lossless=lossless, crf=crf)
        write_bytes_atomic(self.path_for(item_id, ".mp4"), data, self.partial)
        info["bytes"] = len(data)
        return info

    def write_sidecar(self, item_id: str, sidecar: dict) -> Path:
        path = self.path_for(item_id, ".json")
        write_json_atomic(path, redact(sidecar, keep=SIDECAR_DATA_KEYS, literals=(item_id,)), self.partial)
        return path

    def drop_stale_extras(self, item_id: str, outputs: dict) -> None:
        """After an item is made again: remove the optional outputs an earlier attempt wrote and this one did not
        (videos/<id>.latents.safetensors, videos/<id>/), so every file of the id matches its new sidecar."""
        from .extras import LATENTS_SUFFIX
        stale = []
        if "latents" not in outputs:
            stale.append(self.path_for(item_id, LATENTS_SUFFIX))
        if "frames" not in outputs:
            stale.append(self.path_for(item_id, ""))
        for p in stale:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)

    def append_ledger(self, record: dict) -> dict:
        return self.ledger.append(record)

    def drop_partial(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)

    # -- resume -------------------------------------------------------------------------------------------------
    def has_leftovers(self, item_id: str) -> bool:
        return any(os.path.lexists(self.path_for(item_id, s)) for s in (".mp4", ".json"))

    def read_sidecar(self, item_id: str) -> dict | None:
        """The sidecar of `item_id` (never through a symlink), or None when absent, a link or unreadable."""
        try:
            sidecar = json.loads(read_nofollow(self.path_for(item_id, ".json")).decode("utf-8"))
        except (OSError, ValueError):
            return None
        return sidecar if isinstance(sidecar, dict) else None

    def is_complete(self, item_id: str, record: dict | None) -> bool:
        """ok in the ledger, the sidecar parses and names this id, the mp4 has exactly the byte count the sidecar
        recorded (a truncated file fails here) and opens with as many video packets as frames."""
        if not record or record.get("status") != "ok":
            return False
        try:
            sidecar = self.read_sidecar(item_id)
            if sidecar is None or sidecar.get("id") != item_id:
                return False
            mp4 = self.path_for(item_id, ".mp4")
            st = os.lstat(mp4)
            if not stat.S_ISREG(st.st_mode):          # a link or anything else is not a finished video
                return False
            video = sidecar.get("video") or {}
            if "bytes" in video and st.st_size != video["bytes"]:
                return False
            packets = probe_mp4(mp4)["packets"]
            return packets > 0 and packets == video.get("frames", packets)
        except Exception:
            return False

    def write_config(self, doc: dict, created: list[Path] | None = None) -> None:
        """config.yaml = this run's resolved config; config.history/<UTC time>-<writer>.yaml keeps every run's, so a
        directory made by several runs with different settings says which run used which. What it creates is added
        to `created` (prepare() removes it again on failure)."""
        import yaml
        data = yaml.safe_dump(redact(doc), sort_keys=False, allow_unicode=True).encode()
        created = [] if created is None else created
        hist = self.root / HISTORY
        if not os.path.lexists(hist):
            os.mkdir(hist)
            created.append(hist)
        now = time.time_ns()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9)) + f".{now % 10**9:09d}Z"   # sorts by time
        entry = hist / f"{stamp}-{self.writer}.yaml"
        created.append(entry)
        write_bytes_atomic(entry, data, self.partial)
        write_bytes_atomic(self.root / "config.yaml", data, self.partial)

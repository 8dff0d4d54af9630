"""The output directory: videos/<id>.mp4 + videos/<id>.json (+ optional latents / PNG frames), the ledger, claims.

    out_dir/videos/<id>.mp4, <id>.json          outputs (atomic: temp file in .partial/<writer>/, fsync, rename)
    out_dir/ledger/<writer>.jsonl, results.jsonl  the ledger (batch/ledger.py)
    out_dir/claims/<id>.claim                   who is making an id right now (batch/claims.py)
    out_dir/.partial/<writer>/                  each writer's temp files; a dead writer's are removed
Only rank 0 of a replica writes. The ledger line is appended (fsync) after the files it names exist, so a ledger
line 'ok' always points at complete files.
"""
from __future__ import annotations

import json
import logging
import shutil
import socket
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
# an id is data, never a secret: it passes the redactor unchanged (resume must recognise it), while a secret pasted
# into a prompt by mistake is still cut out
SIDECAR_DATA_KEYS = ("id",)


class OutputDir:
    def __init__(self, root: str | Path, writer: str | None = None, claim_timeout_s: float = 300.0):
        self.root = Path(root).resolve()
        self.videos = self.root / "videos"
        self.writer = writer or writer_name()
        self.partial = self.root / PARTIAL / self.writer
        self.ledger = Ledger(self.root, self.writer)
        self.claims = Claims(self.root, self.writer, claim_timeout_s)

    def prepare(self) -> None:
        """Main rank of each process, before any writer starts: create videos/ and remove the temp areas of writers
        that are gone (dead pid on this host, or idle longer than the claim timeout elsewhere)."""
        self.videos.mkdir(parents=True, exist_ok=True)
        self.clean_partial()
        fsync_dir(self.root)

    def clean_partial(self) -> None:
        base = self.root / PARTIAL
        if not base.is_dir():
            return
        host = "".join(c if c.isalnum() or c in ".-" else "-" for c in socket.gethostname())[:64]
        for d in base.iterdir():
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
        """videos/<id><suffix>, refusing anything that would land outside out_dir."""
        check_id(item_id)
        p = (self.videos / f"{item_id}{suffix}").resolve()
        if self.videos not in p.parents:
            raise ValueError(f"id={item_id!r}: output path {p} is outside {self.videos}")
        return p

    # -- writing ------------------------------------------------------------------------------------------------
    def write_video(self, item_id: str, frames: np.ndarray, fps: int, *, lossless: bool, crf: int) -> dict:
        data, info = encode_mp4(frames, fps, lossless=lossless, crf=crf)
        write_bytes_atomic(self.path_for(item_id, ".mp4"), data, self.partial)
        info["bytes"] = len(data)
        return info

    def write_sidecar(self, item_id: str, sidecar: dict) -> Path:
        path = self.path_for(item_id, ".json")
        write_json_atomic(path, redact(sidecar, keep=SIDECAR_DATA_KEYS), self.partial)
        return path

    def append_ledger(self, record: dict) -> dict:
        return self.ledger.append(record)

    def drop_partial(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)

    # -- resume -------------------------------------------------------------------------------------------------
    def has_leftovers(self, item_id: str) -> bool:
        return any(self.path_for(item_id, s).exists() for s in (".mp4", ".json"))

    def is_complete(self, item_id: str, record: dict | None) -> bool:
        """ok in the ledger, the sidecar parses and names this id, the mp4 has exactly the byte count the sidecar
        recorded (a truncated file fails here) and opens with as many video packets as frames."""
        if not record or record.get("status") != "ok":
            return False
        try:
            sidecar = json.loads(self.path_for(item_id, ".json").read_text(encoding="utf-8"))
            if not isinstance(sidecar, dict) or sidecar.get("id") != item_id:
                return False
            mp4 = self.path_for(item_id, ".mp4")
            video = sidecar.get("video") or {}
            if "bytes" in video and mp4.stat().st_size != video["bytes"]:
                return False
            packets = probe_mp4(mp4)["packets"]
            return packets > 0 and packets == video.get("frames", packets)
        except Exception:
            return False

    def write_config(self, doc: dict) -> None:
        import yaml
        write_bytes_atomic(self.root / "config.yaml",
                           yaml.safe_dump(redact(doc), sort_keys=False, allow_unicode=True).encode(), self.partial)

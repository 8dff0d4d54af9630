"""The output directory: videos/<id>.mp4 + videos/<id>.json (+ optional latents / PNG frames), results.jsonl.

Only rank 0 of a replica writes. Every file is written atomically; the ledger line is appended (fsync) after the
files it names exist, so a ledger line 'ok' always points at complete files.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..pipeline.video_io import encode_mp4, probe_mp4
from .atomic import append_line_durable, fsync_dir, remove_stale_temps, write_bytes_atomic, write_json_atomic
from .manifest import check_id
from .redact import redact

LEDGER = "results.jsonl"


class OutputDir:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.videos = self.root / "videos"
        self.ledger = self.root / LEDGER

    def prepare(self) -> None:
        """Main rank, before any writer starts: create videos/ and end a torn last ledger line (a crash during an
        append) with a newline, so the next append starts a line of its own."""
        self.videos.mkdir(parents=True, exist_ok=True)
        if self.ledger.exists() and self.ledger.stat().st_size:
            with open(self.ledger, "rb") as fh:
                fh.seek(-1, 2)
                torn = fh.read(1) != b"\n"
            if torn:
                append_line_durable(self.ledger, "")
        fsync_dir(self.root)

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
        path = self.path_for(item_id, ".mp4")
        write_bytes_atomic(path, data)
        info["bytes"] = len(data)
        return info

    def write_sidecar(self, item_id: str, sidecar: dict) -> Path:
        path = self.path_for(item_id, ".json")
        write_json_atomic(path, redact(sidecar))
        return path

    def append_ledger(self, record: dict) -> None:
        record = redact({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record})
        append_line_durable(self.ledger, json.dumps(record, ensure_ascii=False, default=str))

    # -- resume -------------------------------------------------------------------------------------------------
    def read_ledger(self) -> dict[str, dict]:
        """id -> last ledger record; a torn last line (crash mid-append) is ignored."""
        last: dict[str, dict] = {}
        if not self.ledger.exists():
            return last
        for line in self.ledger.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "id" in rec:
                last[rec["id"]] = rec
        return last

    def remove_stale_temps(self, item_id: str, suffix: str) -> list[Path]:
        return remove_stale_temps(self.videos, self.path_for(item_id, suffix).name)

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

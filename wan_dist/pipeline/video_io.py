"""mp4 writing and reading with PyAV.

Default: H.264 (libx264) yuv420p at the task's fps, crf from `output.crf` (yuv420p needs even sides; every Wan size
is a multiple of 16, so an odd side is a bug and is refused).
Lossless (`output.lossless=true`): libx264rgb, rgb24, qp 0, so decoded frames equal the uint8 frames bit for bit.
"""
from __future__ import annotations

import io

import av
import numpy as np


def encode_mp4(frames: np.ndarray, fps: int, *, lossless: bool = False, crf: int = 18) -> tuple[bytes, dict]:
    """uint8 [F, H, W, 3] -> (mp4 bytes, {codec, pix_fmt, ...}). Encoding into memory keeps the file write atomic."""
    f, h, w, c = frames.shape
    assert c == 3 and frames.dtype == np.uint8, (frames.shape, frames.dtype)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        if lossless:
            stream = out.add_stream("libx264rgb", rate=fps)
            stream.pix_fmt = "rgb24"
            stream.options = {"qp": "0", "preset": "medium"}
            info = {"codec": "h264 (libx264rgb)", "pix_fmt": "rgb24", "lossless": True, "qp": 0}
        else:
            if w % 2 or h % 2:
                raise ValueError(f"size={w}*{h}: H.264 yuv420p needs even width and height")
            stream = out.add_stream("libx264", rate=fps)
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": "medium"}
            info = {"codec": "h264 (libx264)", "pix_fmt": "yuv420p", "lossless": False, "crf": crf}
        stream.width, stream.height = w, h
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    info.update({"container": "mp4", "fps": fps, "frames": f, "width": w, "height": h})
    return buf.getvalue(), info


def read_mp4(path) -> np.ndarray:
    """mp4 -> uint8 [F, H, W, 3] (decoded with PyAV)."""
    with av.open(str(path)) as inp:
        return np.stack([fr.to_ndarray(format="rgb24") for fr in inp.decode(video=0)])


def probe_mp4(path) -> dict:
    """Cheap integrity check used by resume: the container opens and has a video stream with frames."""
    with av.open(str(path)) as inp:
        vs = inp.streams.video[0]
        n = sum(1 for p in inp.demux(vs) if p.size)
        return {"codec": vs.codec_context.name, "width": vs.codec_context.width, "height": vs.codec_context.height,
                "packets": n}

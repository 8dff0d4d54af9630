"""Optional per-video outputs: saved latents and PNG frames (output.save_latents, output.frames)."""
from __future__ import annotations


def write_extras(out, output_cfg, item_id: str, result) -> dict:
    return {}

"""The floor for one video end to end: the work `launch/run.py` does for a single prompt, with nothing around it.

Load the native checkpoint (wan-dist's loader: the same diffusers / transformers classes and key conversion), encode
the prompt, denoise, decode, write the mp4 with PyAV -- no Hydra, no config schema, no manifest or checkpoint
validation, no out_dir machinery, no sidecar, ledger or sink. It stands in for "a minimal script on the same
libraries" in bench/startup.py (the official Wan2.2 scripts need torchvision, decord, OpenCV, librosa, dashscope and
a umt5-xxl-sized T5 and cannot run on the tiny checkpoint without a harness; see docs/BENCHMARKS.md).

It prints `FLOOR item_start <time_ns>`, `FLOOR item_end <time_ns>` (wall clock, as the ledger's t_ns) and `FLOOR timings
<json>` (the generator's stage times, as in a sidecar) on stderr, and ends like a plain script (interpreter teardown
included).

    python bench/pipeline_floor.py CKPT_DIR OUT.mp4 [--model tiny-t2v] [--steps 4] [--frames 9] [--size 64*64]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("out")
    ap.add_argument("--model", default="tiny-t2v")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--size", default="64*64")
    ap.add_argument("--shift", type=float, default=5.0)
    ap.add_argument("--guide-scale", type=float, default=5.0)
    ap.add_argument("--fps", type=int, default=16)
    a = ap.parse_args()
    import torch

    from wan_dist.models.device import placement
    from wan_dist.models.loading import load_models
    from wan_dist.models.registry import NATIVE_NEGATIVE_PROMPT, get_model
    from wan_dist.observability.timer import StageTimer
    from wan_dist.pipeline.generator import WanGenerator
    from wan_dist.pipeline.request import GenerationRequest
    from wan_dist.pipeline.video_io import encode_mp4

    torch.set_grad_enabled(False)
    spec = get_model(a.model)
    place = placement(device="cpu", dtype="auto", t5_dtype="auto", vae_dtype="fp32", t5_cpu=False,
                      offload_model=False)
    gen = WanGenerator(load_models(spec, a.ckpt, place), place)
    w, h = (int(v) for v in a.size.split("*"))
    req = GenerationRequest(id="floor", prompt="a cat walking on grass", negative_prompt=NATIVE_NEGATIVE_PROMPT,
                            seed=42, size=(w, h), frame_num_requested=a.frames, frame_num=a.frames, steps=a.steps,
                            shift=a.shift, solver="unipc", guide_scale=a.guide_scale, guide_scale_high=None,
                            cfg_truncate_steps=0, cfg_truncate_high_noise_steps=0)
    print(f"FLOOR item_start {time.time_ns()}", file=sys.stderr, flush=True)
    timer = StageTimer(place.device)
    res = gen.generate(req, timer=timer)
    with timer.stage("save"):
        data, _ = encode_mp4(res.frames.numpy(), a.fps)
        Path(a.out).write_bytes(data)
    print(f"FLOOR timings {json.dumps(timer.as_dict())}", file=sys.stderr, flush=True)
    print(f"FLOOR item_end {time.time_ns()}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

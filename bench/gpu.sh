#!/usr/bin/env bash
# One prepared pass on a machine with one NVIDIA GPU (<= 8 minutes): bf16 vs fp32 tolerance of the one-GPU layouts,
# seconds per step of real-width Wan DiTs (t2v-1.3B and ti2v-5B widths, random weights built on the GPU, 480p and
# 720p token counts) per attention backend, cfg_batch, compile=regional and step cache, peak CUDA memory.
# What it measures and how: bench/gpu_speed.py. Results: runs/bench-gpu/gpu.json and a markdown table on stdout.
#
#   bench/gpu.sh              measure (needs a CUDA build of torch 2.13 with the project's requirements; set PY=...)
#   bench/gpu.sh --dry-run    list the planned measurements (no GPU needed)
#   bench/gpu.sh --cpu-smoke  the whole code path on CPU with tiny widths (no GPU needed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
case "${1:-}" in
  --dry-run|--cpu-smoke) ;;
  *) nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
       || { echo "bench/gpu.sh: no NVIDIA GPU here (try --dry-run or --cpu-smoke)" >&2; exit 2; } ;;
esac
# 400 s of measurements (later items are listed as skipped past it) + start-up, inside a hard 470 s limit
exec timeout 470 "$PY" bench/gpu_speed.py --budget 400 "$@"

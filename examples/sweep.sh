#!/usr/bin/env bash
# A CFG-truncation sweep on the tiny random-weight MoE model (the stand-in for t2v-A14B: two experts, both truncation
# windows), then its timing report and what each setting costs and changes against no truncation. One to two minutes
# on a CPU; the weights are random, so the videos are noise, but the machinery, files and plots are the real ones.
#
#   bash examples/sweep.sh                        # -> runs/examples/sweep/: one directory per setting,
#                                                 #    report/ (report.md, PNGs), compare/ (compare.md, PNG)
#   bash examples/sweep.sh sample.steps=20        # extra overrides go to every job of the sweep
#   OUT=/tmp/ex CKPT=/tmp/ckpt bash examples/sweep.sh   # other places (the tiny checkpoint is made when missing)
#
# The same on real weights, with the seed's grid (N 0,3,5,8 x M 0,2,3,5 x keep uncond,cond = 32 jobs, models loaded
# once; conf/experiment/cfg_truncation.yaml):
#   python launch/run.py experiment=cfg_truncation model=t2v-A14B ckpt_dir=./Wan2.2-T2V-A14B \
#       manifest=examples/text_prompts.csv out_dir=runs/trunc
#   wan-dist report runs/trunc && wan-dist compare runs/trunc
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/wan-dist ]; then PATH="$PWD/.venv/bin:$PATH"; fi   # the virtualenv `make install` made
OUT=${OUT:-runs/examples}
CKPT=${CKPT:-$OUT/ckpt-tiny-t2v-moe}
set -x
[ -d "$CKPT" ] || wan-dist tiny-checkpoint tiny-t2v-moe "$CKPT"
# 3 x 2 settings: N = the last N steps run one DiT forward (low-noise expert), M = the last M high-noise steps;
# lossless mp4s + saved latents make compare's PSNR/SSIM and latent distances exact
python launch/run.py -m model=tiny-t2v-moe ckpt_dir="$CKPT" manifest=examples/text_prompts.csv \
    out_dir="$OUT/sweep" output.lossless=true output.save_latents=true \
    sample.cfg_truncate_steps=0,1,2 sample.cfg_truncate_high_noise_steps=0,2 "$@"
wan-dist report "$OUT/sweep"
wan-dist compare "$OUT/sweep"

#!/usr/bin/env bash
# Multi-GPU commands to copy. docs/PARALLEL.md has the rules (dp x cfg x ulysses x ring = the number of ranks;
# parallel.dp=-1, the default, takes whatever the others leave) and which layout suits which model and GPU count.
#
#   bash examples/multi_gpu.sh                    # the first one: 2 CPU ranks, Ulysses 2, tiny random weights
#   CKPT=./Wan2.2-T2V-A14B MANIFEST=prompts.csv bash examples/multi_gpu.sh a14b-8gpu    # one of the others
#   DRY_RUN=1 bash examples/multi_gpu.sh a14b-8gpu                      # print the command instead of running it
#
# Extra arguments after the name are overrides for the run (e.g. sample.steps=20). Outputs: $OUT/<name>/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/wan-dist ]; then PATH="$PWD/.venv/bin:$PATH"; fi   # the virtualenv `make install` made
OUT=${OUT:-runs/examples}
NAME=${1:-tiny}
shift || true
case "$NAME" in i2v-*) MANIFEST=${MANIFEST:-examples/i2v/rows.csv} ;; *) MANIFEST=${MANIFEST:-examples/text_prompts.csv} ;; esac
run() { if [ -n "${DRY_RUN:-}" ]; then echo "$*"; else (set -x; "$@"); fi; }
TORCHRUN="wan-dist torchrun --standalone --nproc_per_node"

case "$NAME" in
tiny)       # one replica of 2 CPU ranks splitting each video's tokens (Ulysses 2); the tiny two-expert model
    CKPT=${CKPT:-$OUT/ckpt-tiny-t2v-moe}
    [ -d "$CKPT" ] || run wan-dist tiny-checkpoint tiny-t2v-moe "$CKPT"
    run $TORCHRUN 2 launch/run.py model=tiny-t2v-moe ckpt_dir="$CKPT" manifest="$MANIFEST" \
        parallel.ulysses=2 out_dir="$OUT/tiny" "$@" ;;
1.3b-8gpu)  # t2v-1.3B fits any GPU whole: 8 replicas of 1 rank (dp=-1 -> 8), the most videos per hour
    run $TORCHRUN 8 launch/run.py model=t2v-1.3B ckpt_dir="${CKPT:-./Wan2.1-T2V-1.3B}" manifest="$MANIFEST" \
        out_dir="$OUT/1.3b-8gpu" "$@" ;;
5b-2gpu)    # ti2v-5B on two 24 GB GPUs: FSDP halves the DiT per GPU, Ulysses halves the activations
    run $TORCHRUN 2 launch/run.py model=ti2v-5B ckpt_dir="${CKPT:-./Wan2.2-TI2V-5B}" manifest="$MANIFEST" \
        parallel.ulysses=2 parallel.fsdp=true out_dir="$OUT/5b-2gpu" "$@" ;;
14b-4gpu)   # t2v-14B (28 GB of bf16 weights) on 4 GPUs: one replica, DiT and T5 sharded 4 ways
    run $TORCHRUN 4 launch/run.py model=t2v-14B ckpt_dir="${CKPT:-./Wan2.1-T2V-14B}" manifest="$MANIFEST" \
        parallel.ulysses=4 parallel.fsdp=true parallel.t5_fsdp=true out_dir="$OUT/14b-4gpu" "$@" ;;
a14b-2gpu)  # t2v-A14B (two 28 GB experts) on 2 x 80 GB: each GPU holds half of every expert and of T5
    run $TORCHRUN 2 launch/run.py model=t2v-A14B ckpt_dir="${CKPT:-./Wan2.2-T2V-A14B}" manifest="$MANIFEST" \
        parallel.ulysses=2 parallel.fsdp=true parallel.t5_fsdp=true out_dir="$OUT/a14b-2gpu" "$@" ;;
a14b-4gpu-cfg)  # 4 GPUs, lowest latency per video: cond and uncond passes at once (cfg=2) x Ulysses 2, FSDP over all 4
    run $TORCHRUN 4 launch/run.py model=t2v-A14B ckpt_dir="${CKPT:-./Wan2.2-T2V-A14B}" manifest="$MANIFEST" \
        parallel.cfg=2 parallel.ulysses=2 parallel.fsdp=true out_dir="$OUT/a14b-4gpu-cfg" "$@" ;;
a14b-8gpu)  # one node of 8: one replica of 8 (the official 8-GPU recipe): fastest single video
    run $TORCHRUN 8 launch/run.py model=t2v-A14B ckpt_dir="${CKPT:-./Wan2.2-T2V-A14B}" manifest="$MANIFEST" \
        parallel.ulysses=8 parallel.fsdp=true parallel.t5_fsdp=true out_dir="$OUT/a14b-8gpu" "$@" ;;
a14b-8gpu-throughput)  # the same node for throughput: 2 replicas of 4 (dp=-1 -> 2), each makes its own videos
    run $TORCHRUN 8 launch/run.py model=t2v-A14B ckpt_dir="${CKPT:-./Wan2.2-T2V-A14B}" manifest="$MANIFEST" \
        parallel.ulysses=4 parallel.fsdp=true out_dir="$OUT/a14b-8gpu-throughput" "$@" ;;
i2v-a14b-8gpu)  # image to video: an image per row (default manifest: examples/i2v/rows.csv)
    run $TORCHRUN 8 launch/run.py model=i2v-A14B ckpt_dir="${CKPT:-./Wan2.2-I2V-A14B}" manifest="$MANIFEST" \
        parallel.ulysses=8 parallel.fsdp=true parallel.t5_fsdp=true out_dir="$OUT/i2v-a14b-8gpu" "$@" ;;
a14b-2nodes)  # 2 nodes x 8 GPUs: Ulysses inside a node (NVLink), one replica per node (dp=-1 -> 2 across nodes).
    # Run it on every node with NODE_RANK=0 / 1 and HEAD=<node 0's address>; under Slurm, srun sets these up.
    run wan-dist torchrun --nnodes 2 --nproc_per_node 8 --node_rank "${NODE_RANK:-0}" --rdzv-backend c10d \
        --rdzv-endpoint "${HEAD:-node0}:29500" --rdzv-id "${JOB_ID:-wan-a14b}" launch/run.py model=t2v-A14B \
        ckpt_dir="${CKPT:-/shared/Wan2.2-T2V-A14B}" manifest="$MANIFEST" parallel.ulysses=8 parallel.fsdp=true \
        parallel.t5_fsdp=true out_dir="$OUT/a14b-2nodes" "$@" ;;
*)
    echo "unknown name '$NAME'; one of: $(grep -oE '^[a-z0-9.-]+\)' "$0" | tr -d ')' | tr '\n' ' ')" >&2
    exit 2 ;;
esac

#!/usr/bin/env bash
# The benchmarks on a CUDA machine: in-process stages and limit, then ours against the peers
# over HTTP, ending with the same table as `python -m bench.compare`.
#
#   bash bench/gpu.sh                       # from anywhere; runs in the repository root
#
# Environment (all optional):
#   PYTHON       interpreter with torch+CUDA (default .venv/bin/python, else python3)
#   CHECKPOINT   model file (default model/weights/catdog.safetensors, else random weights)
#   IMAGES       JPEG directory (default ../shared/data/catdog/val or shared/data/catdog/val,
#                else synthetic JPEGs)
#   CONCURRENCY  levels for the HTTP runs (default 1,8,32,64)
#   DURATION     measured seconds per level (default 10)
#   BATCH_SIZES  in-process batch sizes (default 1,8,32,64)
#   COMPILE      1 = also measure torch.compile and serve ours compiled (default 1)
#   SERVERS      subset of ours,naive,litserve (default all three)
# Sized for about 10 minutes on one H100 with the defaults; results go to bench/out/gpu/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT=bench/out/gpu
CONCURRENCY=${CONCURRENCY:-1,8,32,64}
DURATION=${DURATION:-10}
BATCH_SIZES=${BATCH_SIZES:-1,8,32,64}
COMPILE=${COMPILE:-1}
SERVERS=${SERVERS:-ours,naive,litserve}

"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "bench/gpu.sh: CUDA is not available")'
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export ALEXNET_DEVICE=cuda

CHECKPOINT=${CHECKPOINT:-model/weights/catdog.safetensors}
if [[ ! -f $CHECKPOINT ]]; then
    CHECKPOINT=$OUT/random-catdog.safetensors
    echo "no shipped checkpoint: benchmarking random weights ($CHECKPOINT)"
    "$PYTHON" -c 'import sys; from pathlib import Path; from bench.common import random_checkpoint; random_checkpoint(Path(sys.argv[1]))' "$CHECKPOINT"
fi

if [[ -z ${IMAGES:-} ]]; then
    IMAGES=$OUT/no-photos  # a missing directory makes the tools generate synthetic JPEGs
    for candidate in ../shared/data/catdog/val shared/data/catdog/val; do
        if [[ -d $candidate ]]; then IMAGES=$candidate; break; fi
    done
fi

compile_flag=()
if [[ $COMPILE == 1 ]]; then compile_flag=(--compile); fi

phase() { echo; echo "### $* ($(date -u +%H:%M:%S))"; }

phase "in-process, eager: fp32/bf16/fp16, channels-last on/off"
"$PYTHON" -m bench.inprocess --device cuda --checkpoint "$CHECKPOINT" --images "$IMAGES" \
    --batch-sizes "$BATCH_SIZES" --dtypes fp32,bf16,fp16 --pipeline-seconds 8 \
    --out "$OUT/inprocess-cuda-eager.json"

inprocess_json=$OUT/inprocess-cuda-eager.json
if [[ $COMPILE == 1 ]]; then
    phase "in-process, torch.compile (the auto dtype only, to bound compile time)"
    auto_dtype=$("$PYTHON" -c 'import torch; from model.precision import auto_dtype; print({torch.bfloat16: "bf16", torch.float16: "fp16"}.get(auto_dtype(torch.device("cuda")), "fp32"))')
    "$PYTHON" -m bench.inprocess --device cuda --checkpoint "$CHECKPOINT" --images "$IMAGES" \
        --batch-sizes "$BATCH_SIZES" --dtypes "$auto_dtype" --no-stock-lrn "${compile_flag[@]}" \
        --pipeline-seconds 8 --out "$OUT/inprocess-cuda-compiled.json"
    inprocess_json=$OUT/inprocess-cuda-compiled.json
fi

phase "HTTP: ours (ALEXNET_COMPILE=$COMPILE) vs naive vs LitServe"
"$PYTHON" -m bench.compare --device cuda --checkpoint "$CHECKPOINT" --images "$IMAGES" \
    --concurrency "$CONCURRENCY" --duration "$DURATION" --servers "$SERVERS" \
    --ours-env "ALEXNET_COMPILE=$COMPILE" --inprocess "$inprocess_json" --out "$OUT/compare-cuda.json"
phase "done: results in $OUT"

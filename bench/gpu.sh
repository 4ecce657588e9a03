#!/usr/bin/env bash
# The GPU path proved in one command: versions, correctness against CPU fp32, model-only and
# end-to-end throughput, JSON + PNG + table (python -m bench.gpu_run --help lists every flag).
#
#   bash bench/gpu.sh                # on a CUDA machine: at most --budget-s (480 s), trimmed to fit;
#                                    # results in bench/results/gpu-<gpu>-<date>/
#   bash bench/gpu.sh --rehearse     # the same five steps on the CPU at small sizes (< 5 minutes);
#                                    # results in bench/out/gpu-rehearsal/ (git-ignored)
#   bash bench/gpu.sh --prepare      # only install what bench/out/gpu-carry/setup holds, print versions
#
# Exit codes: 0 passed; 1 correctness missed or a step failed (every number is still saved);
# 2 refused before any work (no CUDA without --rehearse, missing packages).
#
# On a bare GPU machine: `python -m bench.gpu_carry` here packs bench/out/gpu-carry/setup (the
# server's wheels the device image lacks, and wrk) and bench/out/gpu-carry/photos (500 val
# photos); carry setup with `--prepare`, then photos with the run (64 MiB per call: see there).
# Environment: PYTHON (default .venv/bin/python, else python3); ALEXNET_* settings reach every
# server started (ALEXNET_DEVICE, _COMPILE, _GPU_DECODE, _WORKERS are set per run by the script).
# wrk comes from PATH or the setup folder (apt-get install -y wrk); without it the project's
# Python load generator runs instead, and the JSON says which one did.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

setup=bench/out/gpu-carry/setup
if [[ -x $setup/bin/wrk ]] && ! command -v wrk >/dev/null; then
    # carried from another machine: use it only if it runs here (`wrk -v` exits 1 even then)
    if LD_LIBRARY_PATH="$PWD/$setup/lib" "$setup/bin/wrk" -v 2>&1 | grep -q '^wrk '; then
        export PATH="$PWD/$setup/bin:$PATH"
        export LD_LIBRARY_PATH="$PWD/$setup/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    else
        echo "note: the carried wrk does not run here" >&2
    fi
fi
server_packages='import fastapi, fastapi_offline, uvicorn, httptools, multipart, pydantic_settings, platformdirs'
if [[ -d $setup/wheels ]] && ! "$PYTHON" -c "$server_packages" 2>/dev/null; then
    echo "installing the server's packages from $setup/wheels" >&2
    "$PYTHON" -m pip install --quiet --no-index --no-deps "$setup"/wheels/*.whl
fi
if ! command -v wrk >/dev/null; then
    echo "note: wrk is not installed (apt-get install -y wrk); the Python load generator will stand in" >&2
fi

if [[ ${1:-} == --prepare ]]; then
    "$PYTHON" -c "$server_packages"
    "$PYTHON" -c 'from bench import gpu_facts; import torch
print(gpu_facts.describe(gpu_facts.versions(torch.device("cuda" if torch.cuda.is_available() else "cpu"))))'
    exit 0
fi

images=()
if [[ ! -d ../shared/data/catdog/val && -d bench/out/gpu-carry/photos ]]; then
    images=(--images bench/out/gpu-carry/photos)
fi

exec "$PYTHON" -m bench.gpu_run "${images[@]}" "$@"

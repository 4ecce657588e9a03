#!/usr/bin/env bash
# Container smoke test: build the image, start it with docker compose (adding the CPU
# override when the host has no usable NVIDIA GPU), wait for /readyz, POST a photo to
# /predict, check that the JSON answer has a "label", and tear everything down.
#
# IT CANNOT RUN ON OUR DEV MACHINES OR IN CI: they have no Docker engine. CI only checks
# this script statically (bash -n and shellcheck, in tests/test_deploy.py). Run it on a
# machine with Docker Engine, Compose >= 2.24 and curl (plus the NVIDIA Container Toolkit
# for the GPU path), from anywhere in the checkout. Port 8000 must be free.
#
# Usage:  deploy/smoke.sh [PHOTO]        (no PHOTO: a JPEG generated inside the container)
# Env:    SMOKE_DEVICE=auto|gpu|cpu      auto (default): gpu when nvidia-smi lists a GPU and
#                                        Docker has the nvidia runtime, else cpu
#         SMOKE_TIMEOUT_S=600            how long to wait for /readyz (build time not counted)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
photo=${1:-}
device=${SMOKE_DEVICE:-auto}
timeout_s=${SMOKE_TIMEOUT_S:-600}
url=http://127.0.0.1:8000
project=alexnet-smoke

die() {
    echo "smoke: $*" >&2
    exit 1
}

for tool in docker curl; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
docker compose version >/dev/null 2>&1 || die "needs the docker compose plugin"
if [[ -n $photo ]]; then
    [[ -f $photo ]] || die "no such photo: $photo"
    photo=$(cd "$(dirname "$photo")" && pwd)/$(basename "$photo")
fi

if [[ $device == auto ]]; then
    device=cpu
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 \
        && docker info --format '{{json .Runtimes}}' | grep -q nvidia; then
        device=gpu
    fi
fi
files=(-f "$repo/docker-compose.yml")
case $device in
    gpu) ;;
    cpu) files+=(-f "$repo/docker-compose.cpu.yml") ;;
    *) die "SMOKE_DEVICE must be auto, gpu or cpu, not '$device'" ;;
esac

compose() {
    docker compose --project-name "$project" --project-directory "$repo" "${files[@]}" "$@"
}

workdir=$(mktemp -d)
cleanup() {
    local status=$?
    if [[ $status -ne 0 ]]; then
        echo "smoke: FAILED; last server logs:" >&2
        compose logs --no-color --tail 80 alexnet >&2 || true
    fi
    compose down --volumes --remove-orphans >/dev/null 2>&1 || true
    rm -rf "$workdir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "smoke: building and starting ($device)"
compose up --build --detach

echo "smoke: waiting up to ${timeout_s}s for $url/readyz"
deadline=$((SECONDS + timeout_s))
until curl -fsS -o /dev/null "$url/readyz" 2>/dev/null; do
    [[ -n $(compose ps --quiet --status running alexnet) ]] || die "the container stopped"
    ((SECONDS < deadline)) || die "not ready after ${timeout_s}s"
    sleep 2
done

if [[ -z $photo ]]; then
    photo=$workdir/photo.jpg
    # Pillow is in the image; the host needs nothing but Docker and curl.
    compose exec -T alexnet python -c '
import io, sys
from PIL import Image
size = (320, 240)
bands = [Image.linear_gradient("L").resize(size), Image.radial_gradient("L").resize(size), Image.new("L", size, 90)]
out = io.BytesIO()
Image.merge("RGB", bands).save(out, "JPEG", quality=90)
sys.stdout.buffer.write(out.getvalue())
' >"$photo"
fi

echo "smoke: POST $photo to /predict"
curl -fsS -F "file=@$photo" "$url/predict" >"$workdir/answer.json"
curl -fsS "$url/models" >"$workdir/models.json"
{
    tr -d '\n' <"$workdir/answer.json"
    echo
    tr -d '\n' <"$workdir/models.json"
    echo
} | compose exec -T -e SMOKE_DEVICE="$device" alexnet python -c '
import json, os, sys
answer, models = (json.loads(line) for line in sys.stdin)
label, probability = answer.get("label"), answer.get("probability")
assert isinstance(label, str), f"no label in the answer: {answer}"
device = models["models"][0]["device"]
if os.environ["SMOKE_DEVICE"] == "gpu":
    assert device.startswith("cuda"), f"expected a GPU, the model runs on {device}"
print(f"smoke: label={label!r} probability={probability} device={device}")
'

echo "smoke: OK"

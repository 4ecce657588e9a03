#!/usr/bin/env bash
# Container smoke test: build the image, start it, wait for /readyz, POST a photo to /predict,
# check that the JSON answer has a "label", and tear everything down.
#
#   deploy/smoke.sh [PHOTO]              with docker compose (adding the CPU override when the
#                                        host has no usable NVIDIA GPU), as deploy/README.md says
#   deploy/smoke.sh --like-k8s [PHOTO]   with `docker run` the way deploy/k8s/deployment.yaml runs
#                                        the container: read-only root, a tmpfs /tmp (noexec, as
#                                        Docker makes it), every capability dropped, no privilege
#                                        escalation, user 10001, the compile cache on a volume.
#                                        Then it restarts the container and checks it again: the
#                                        first start compiles (cold), the second finds the cache
#                                        (warm); it prints both ready times.
#
# It needs a Docker engine: it does not run in CI, which checks it statically and against
# stand-ins for docker and curl (tests/test_deploy.py). Needs Docker Engine, Compose >= 2.24
# and curl (plus the NVIDIA Container Toolkit for the GPU path); run it from anywhere in the
# checkout. On a development machine without an engine, ../shared/tools/docker-engine.sh up
# starts one.
#
# No PHOTO: a JPEG generated inside the container.
# Env:    SMOKE_DEVICE=auto|gpu|cpu      auto (default): gpu when nvidia-smi lists a GPU and
#                                        Docker has the nvidia runtime, else cpu
#         SMOKE_TIMEOUT_S=600            how long to wait for /readyz (build time not counted)
#         SMOKE_PORT=8000                the host port to publish on (must be free)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mode=compose
if [[ ${1:-} == --like-k8s ]]; then
    mode=k8s
    shift
fi
photo=${1:-}
device=${SMOKE_DEVICE:-auto}
timeout_s=${SMOKE_TIMEOUT_S:-600}
port=${SMOKE_PORT:-8000}
url=http://127.0.0.1:$port
export ALEXNET_HOST_PORT=$port  # read by docker-compose.yml
project=alexnet-smoke
image=alexnet-serving:0.1.0
container=alexnet-smoke-k8s
cache_volume=alexnet-smoke-compile-cache

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

# in_container SCRIPT [OPTION...]: Python inside the running container, stdin passed on (the
# host needs nothing but Docker and curl); OPTIONs go to `exec` (e.g. -e NAME=VALUE).
in_container() {
    local script=$1
    shift
    if [[ $mode == k8s ]]; then
        docker exec -i "$@" "$container" python -c "$script"
    else
        compose exec -T "$@" alexnet python -c "$script"
    fi
}

server_logs() {
    if [[ $mode == k8s ]]; then
        docker logs --tail 80 "$container"
    else
        compose logs --no-color --tail 80 alexnet
    fi
}

running() {
    if [[ $mode == k8s ]]; then
        [[ $(docker inspect --format '{{.State.Running}}' "$container" 2>/dev/null) == true ]]
    else
        [[ -n $(compose ps --quiet --status running alexnet) ]]
    fi
}

workdir=$(mktemp -d)
cleanup() {
    local status=$?
    if [[ $status -ne 0 ]]; then
        echo "smoke: FAILED; last server logs:" >&2
        server_logs >&2 || true
    fi
    if [[ $mode == k8s ]]; then
        docker rm --force "$container" >/dev/null 2>&1 || true
        docker volume rm "$cache_volume" >/dev/null 2>&1 || true
    else
        compose down --volumes --remove-orphans >/dev/null 2>&1 || true
    fi
    rm -rf "$workdir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_ready() {
    local started=$SECONDS deadline=$((SECONDS + timeout_s))
    echo "smoke: waiting up to ${timeout_s}s for $url/readyz"
    until curl -fsS -o /dev/null "$url/readyz" 2>/dev/null; do
        running || die "the container stopped"
        ((SECONDS < deadline)) || die "not ready after ${timeout_s}s"
        sleep 1
    done
    ready_s=$((SECONDS - started))
    # the server's own count, from its process start ("ready in 12.3 s: http://...")
    app_ready=$(server_logs 2>&1 | grep -o 'ready in [0-9.]* s' | tail -n 1 || true)
    echo "smoke: ready after ${ready_s}s${app_ready:+ (server log: $app_ready)}"
}

start_like_k8s() {
    # Mirrors deploy/k8s/deployment.yaml (tests/test_deploy.py checks that they agree).
    local gpus=()
    [[ $device == gpu ]] && gpus=(--gpus all)
    docker run --detach --name "$container" "${gpus[@]}" \
        --read-only --tmpfs /tmp \
        --cap-drop ALL --security-opt no-new-privileges:true \
        --user 10001:10001 \
        --env ALEXNET_HOST=0.0.0.0 --env ALEXNET_PORT=8000 --env ALEXNET_DEVICE=auto \
        --env ALEXNET_LOG_LEVEL=info --env ALEXNET_CACHE_DIR=/var/cache/alexnet --env HOME=/tmp \
        --env ALEXNET_MAX_QUEUE=96 --env ALEXNET_DRAIN_TIMEOUT_S=30 \
        --mount "type=volume,source=$cache_volume,target=/var/cache/alexnet" \
        --publish "127.0.0.1:$port:8000" \
        "$image" >/dev/null
}

if [[ $mode == k8s ]]; then
    echo "smoke: building; then starting like deploy/k8s ($device)"
    compose build
    docker rm --force "$container" >/dev/null 2>&1 || true
    docker volume rm "$cache_volume" >/dev/null 2>&1 || true
    start_like_k8s
else
    echo "smoke: building and starting ($device)"
    compose up --build --detach
fi
wait_ready
cold_s=$ready_s

if [[ -z $photo ]]; then
    photo=$workdir/photo.jpg
    in_container '
import io, sys
from PIL import Image
size = (320, 240)
bands = [Image.linear_gradient("L").resize(size), Image.radial_gradient("L").resize(size), Image.new("L", size, 90)]
out = io.BytesIO()
Image.merge("RGB", bands).save(out, "JPEG", quality=90)
sys.stdout.buffer.write(out.getvalue())
' </dev/null >"$photo"
fi

check_answer() {
    echo "smoke: POST $photo to /predict"
    curl -fsS -F "file=@$photo" "$url/predict" >"$workdir/answer.json"
    curl -fsS "$url/models" >"$workdir/models.json"
    {
        tr -d '\n' <"$workdir/answer.json"
        echo
        tr -d '\n' <"$workdir/models.json"
        echo
    } | in_container '
import json, os, sys
answer, models = (json.loads(line) for line in sys.stdin)
label, probability = answer.get("label"), answer.get("probability")
assert isinstance(label, str), f"no label in the answer: {answer}"
device = models["models"][0]["device"]
if os.environ["SMOKE_DEVICE"] == "gpu":
    assert device.startswith("cuda"), f"expected a GPU, the model runs on {device}"
print(f"smoke: label={label!r} probability={probability} device={device}")
' -e SMOKE_DEVICE="$device"
}
check_answer

if [[ $mode == k8s ]]; then
    echo "smoke: restarting the container (same compile-cache volume, a fresh /tmp)"
    docker restart --time 45 "$container" >/dev/null
    wait_ready
    check_answer
    echo "smoke: ready after ${cold_s}s cold (empty compile cache), ${ready_s}s warm (after a restart)"
fi
echo "smoke: OK"

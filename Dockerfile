# AlexNet serving image. Uses an NVIDIA GPU when the host's NVIDIA Container Toolkit
# exposes one (`docker run --gpus all`, compose's GPU reservation, or k8s nvidia.com/gpu),
# and falls back to CPU otherwise (the app's ALEXNET_DEVICE=auto does that).
#
#   docker build -t alexnet-serving:0.1.0 .
#   docker run --rm --gpus all -p 8000:8000 alexnet-serving:0.1.0
#
# No `# syntax=` line on purpose: it makes BuildKit pull a frontend image from Docker Hub on
# every build, which fails offline and behind registry mirrors. Docker's built-in frontend
# (Engine >= 23, or 20.10 with DOCKER_BUILDKIT=1; Compose builds with BuildKit) handles the
# RUN --mount options used here.
#
# Why nvidia/cuda:13.0.2-base-ubuntu24.04 and not another base:
#   * The PyPI torch 2.14.1 / torchvision 0.29.1 wheels are CUDA 13.0 builds that bring their
#     own CUDA user-space libraries as nvidia-* wheels (cuBLAS, cuDNN, NCCL, ...). So the
#     image needs no CUDA toolkit: "base" (cudart plus NVIDIA's env) is NVIDIA's smallest image.
#     "runtime"/"cudnn-runtime" would add a second copy of those libraries (gigabytes), and
#     "devel" adds nvcc and headers that we never use.
#   * Its CUDA major version matches torch's (13): the base image sets NVIDIA_REQUIRE_CUDA, so
#     the NVIDIA toolkit refuses to start the container on a host driver too old for CUDA 13
#     with a clear error, instead of torch quietly running on the CPU. The build also checks
#     that the torch it installed is a CUDA 13 build (see the deps stage).
#   * python:3.x-slim would work as well (torch brings the CUDA libraries) but loses that
#     driver check; pytorch/pytorch images are conda-based and carry their own torch.
#   * Ubuntu 24.04 comes with Python 3.12 (the project needs >= 3.10).
#
# Settings come only from ALEXNET_* environment variables (app/config.py); the server is
# PID 1 (exec-form ENTRYPOINT), so `docker stop` / a pod's SIGTERM makes uvicorn drain.

FROM nvidia/cuda:13.0.2-base-ubuntu24.04 AS base
ARG DEBIAN_FRONTEND=noninteractive
# g++ and python3-dev are there for torch.compile (on by default on the CPU, ALEXNET_COMPILE=true
# on CUDA): Inductor and Triton compile C++ and a Python extension at run time. ~250 MB.
# Versions are not pinned: Ubuntu's archive drops superseded versions, so exact pins break
# rebuilds; the base tag fixes the Ubuntu release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ \
    && rm -rf /var/lib/apt/lists/*

# ---- deps: the heavy layers. torch (with its CUDA libraries, ~5 GB) first and alone: it
# depends on the two versions below only, so neither a code change nor a new dependency in
# pyproject.toml downloads or reinstalls it. pip's cache is a BuildKit cache mount: kept
# between builds on this machine, never in a layer.
FROM base AS deps
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && python -c "import sys, torch; sys.exit(None if (torch.version.cuda or '').startswith('13.') else f'need a CUDA 13 build of torch for this base image, got {torch.__version__} (CUDA {torch.version.cuda})')"
WORKDIR /build
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install -r requirements.txt "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
# What no library here links or loads, ~0.2 GB (deploy/README.md lists the size of the rest):
# cuSOLVER's multi-GPU variant, NVRTC's alternative build, Triton's AMD backend.
RUN site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
    && rm -r "$site"/nvidia/cu13/lib/libcusolverMg.so.* "$site"/nvidia/cu13/lib/libnvrtc*.alt.so.* \
        "$site"/triton/backends/amd

# ---- wheel: the project itself, built from the source (`pip wheel .` builds exactly what
# `pip install .` installs, including the shipped checkpoint model/weights/catdog.safetensors).
FROM deps AS wheel
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- runtime
FROM base AS runtime
LABEL org.opencontainers.image.title="alexnet-serving" \
      org.opencontainers.image.description="AlexNet image classification behind a batching HTTP API (FastAPI + PyTorch, CUDA 13 or CPU)"
# UID/GID 10001: numeric, so Kubernetes' runAsNonRoot can verify it (deploy/k8s uses the same).
# /var/cache/alexnet: torch.compile's cache (ALEXNET_CACHE_DIR). Mount a volume there (compose
# and the Kubernetes manifests do) and a restarted container skips compiling: ready in seconds.
RUN groupadd --system --gid 10001 app \
    && useradd --system --no-log-init --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && install -d -o 10001 -g 10001 /var/cache/alexnet
COPY --from=deps /opt/venv /opt/venv
# Install the wheel without keeping it in a layer; then check that the default checkpoint
# was baked in (Settings() fails when ALEXNET_CHECKPOINT's default file is missing).
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/*.whl \
    && /opt/venv/bin/python -c "from app.config import Settings; print('default checkpoint:', Settings().checkpoint)"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_WAIT_POLICY=PASSIVE \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    ALEXNET_HOST=0.0.0.0 \
    ALEXNET_PORT=8000 \
    ALEXNET_CACHE_DIR=/var/cache/alexnet

USER 10001:10001
WORKDIR /home/app
EXPOSE 8000
# Healthy = ready to serve (/readyz), not merely alive (/healthz). Docker never restarts a
# container for being unhealthy: its health feeds `depends_on: condition: service_healthy`,
# `docker ps` and proxies that route only to healthy containers, all of which want "can take
# requests". The stuck state a liveness check would catch cannot happen: a server that can never
# become ready (bad checkpoint, failed warm-up) exits with status 3, and `restart:` acts on that.
# Kubernetes ignores HEALTHCHECK (deploy/k8s has its own startup/readiness/liveness probes).
# The start period covers a cold torch.compile (about a minute on 2 cores; seconds with the
# cache volume). curl is not in the image; Python is.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('ALEXNET_PORT', '8000'), timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["alexnet-serve"]

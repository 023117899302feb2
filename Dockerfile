# syntax=docker/dockerfile:1
# fusionguard serving image: the monitor on ONNX Runtime with CUDA.
# Only the `serve` and `gpu` extras are installed (prometheus-client, the ASGI stack and
# onnxruntime-gpu): no torch, and none of the gate's data stack (pandas, pyarrow, scipy,
# great-expectations, matplotlib). Gate in CI with `pip install "fusionguard[gate,cpu]"` instead.
# Versions come from requirements/serve-gpu.txt, a constraints file written by `make lock`
# (scripts/lock.py resolves the extras for this image's CPython 3.12 on x86_64 manylinux).
#
# onnxruntime-gpu 1.31 wheels on PyPI are built against CUDA 13.x and cuDNN 9.x (the wheel's
# `cuda` extra pins nvidia-cuda-runtime~=13.0 and its `cudnn` extra nvidia-cudnn-cu13~=9.0), so
# both stages start from NVIDIA's CUDA 13.0 runtime image with cuDNN 9.
#
#   docker build -t fusionguard:latest .
#   docker run --gpus all -p 127.0.0.1:8000:8000 -v /path/to/registry:/models:ro fusionguard:latest
#
# The base image is pinned by digest, so a re-pushed tag cannot change the image underneath. The
# digest is the one published for this tag (multi-arch index) as recorded in public Dockerfiles;
# this machine cannot pull images to re-check it. To refresh it, on a machine with registry access:
#   docker buildx imagetools inspect nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 | grep -m1 Digest
# (or `crane digest nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04`) and paste it after the `@`.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04@sha256:14d94b039cb94bbd5da559f303b46bc4b0d5d6c24ab1a9d7b186e566ed3400dc

# ---- build: a virtual environment with fusionguard[serve,gpu] --------------------------------
FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/fusionguard
WORKDIR /src
COPY requirements/serve-gpu.txt ./constraints.txt
RUN /opt/fusionguard/bin/pip install --upgrade pip
COPY pyproject.toml README.md ./
COPY fusionguard/ fusionguard/
COPY gate/ gate/
COPY monitor/ monitor/
COPY export/ export/
COPY training/ training/
COPY recipes/ recipes/
RUN /opt/fusionguard/bin/pip install -c constraints.txt ".[serve,gpu]"
# WITH_RAY=1 builds the gate-on-Ray image instead (deploy/ray/rayjob-gate.yaml): gate and ray extras on top.
ARG WITH_RAY=0
RUN if [ "$WITH_RAY" = 1 ]; then /opt/fusionguard/bin/pip install -c constraints.txt ".[serve,gpu,gate,ray]"; fi
# Fail the build if a dependency dragged torch in, or (serving image) the gate's data stack.
RUN WITH_RAY=$WITH_RAY /opt/fusionguard/bin/python -c "import importlib.util, os, sys; gate = () if os.environ['WITH_RAY'] == '1' else ('pandas', 'pyarrow', 'scipy', 'great_expectations', 'matplotlib'); heavy = [m for m in ('torch', *gate) if importlib.util.find_spec(m)]; sys.exit(f'{heavy} must not be in this image' if heavy else 0)"

# ---- runtime: the CUDA runtime, Python and the virtual environment, nothing else -------------
FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/fusionguard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 fusionguard \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin fusionguard
COPY --from=build /opt/fusionguard /opt/fusionguard
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
# Ready means a model is loaded; urlopen raises (exit 1) on a refused connection or a non-2xx answer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
ENTRYPOINT ["fusionguard"]
CMD ["monitor", "serve", "--registry", "/models", "--host", "0.0.0.0"]

# syntax=docker/dockerfile:1
# fusionguard serving and gating image: the monitor and the gate on ONNX Runtime with CUDA.
# No torch in it: only the `gpu` extra (onnxruntime-gpu) is installed, never `train`.
#
# onnxruntime-gpu 1.31 wheels on PyPI are built against CUDA 13.x and cuDNN 9.x (the wheel's
# `cuda` extra pins nvidia-cuda-runtime~=13.0 and its `cudnn` extra nvidia-cudnn-cu13~=9.0), so
# both stages start from NVIDIA's CUDA 13.0 runtime image with cuDNN 9.
#
#   docker build -t fusionguard:latest .
#   docker run --gpus all -p 127.0.0.1:8000:8000 -v /path/to/registry:/models:ro fusionguard:latest
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

# ---- build: a virtual environment with fusionguard[gpu] --------------------------------------
FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/fusionguard
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fusionguard/ fusionguard/
COPY gate/ gate/
COPY monitor/ monitor/
RUN /opt/fusionguard/bin/pip install --upgrade pip \
 && /opt/fusionguard/bin/pip install ".[gpu]"
# WITH_RAY=1 adds the `ray` extra: the image deploy/ray/rayjob-gate.yaml runs (the gate on Ray).
ARG WITH_RAY=0
RUN if [ "$WITH_RAY" = 1 ]; then /opt/fusionguard/bin/pip install ".[gpu,ray]"; fi
# Fail the build if a dependency dragged torch in.
RUN /opt/fusionguard/bin/python -c "import importlib.util, sys; sys.exit('torch must not be in this image' if importlib.util.find_spec('torch') else 0)"

# ---- runtime: the CUDA runtime, Python and the virtual environment, nothing else -------------
FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/fusionguard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
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

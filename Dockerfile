# petseg inference service: official PyTorch CUDA runtime base, the project installed, non-root, healthy once
# /ready answers 200 (model loaded and warmed up).
#   docker build -t petseg:latest .
#   docker run --gpus all -p 8000:8000 petseg:latest
# The base is an ARG so another CUDA/torch pairing can be chosen without editing this file, e.g. for an older
# driver:  docker build --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime -t petseg:latest .
ARG BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="petseg" \
      org.opencontainers.image.description="Binary pet/background segmentation service (UNet / ResNet34-UNet, FastAPI)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/petseg

# Dependency layer, rebuilt only when pyproject.toml or README.md change. Empty stand-in packages let
# `pip install .` resolve and install every dependency; the stand-in distribution is then removed. torch is NOT
# downloaded again: the base image's CUDA build already satisfies torch>=2.4, and pip leaves satisfied
# requirements alone (never pass --upgrade / --force-reinstall here). The openvino extra (OpenVINO, ONNX Runtime,
# the ONNX exporter) is what PETSEG_RUNTIME=auto serves with on a CPU without AMX when the image runs without a
# GPU: int8, 1.7-2x the PyTorch engine there (README, "Runtimes"); the first start on such a host exports the model
# to ONNX (a minute or so) into the cache under /tmp.
COPY pyproject.toml README.md ./
RUN mkdir -p models training app \
    && touch models/__init__.py training/__init__.py app/__init__.py \
    && pip install ".[openvino]" \
    && pip uninstall -y petseg \
    && rm -rf build models training app ./*.egg-info

# Code layer: cheap to rebuild. --no-deps because the layer above installed them. The embedded default model
# (models/weights/default.pt) is package data, so it is installed with the package.
COPY models ./models
COPY training ./training
COPY app ./app
# The last step fails the build early if the embedded model was not installed or this torch cannot read it; it
# runs from / so it imports the installed package, not the source tree in the working directory.
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info \
    && cd / && python -c "import torch, app.main; from app.config import DEFAULT_CHECKPOINT as c; \
from models.checkpoint import load_checkpoint as l; l(c); print('torch', torch.__version__, 'cuda', torch.version.cuda, c)"

# A fixed, unprivileged uid so bind-mounted checkpoints only need to be world-readable (or owned by 10001).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin petseg
USER petseg
# Run from the home directory, not the source tree, so `python -m app` imports the installed package too.
WORKDIR /home/petseg

ENV PETSEG_DEVICE=auto
EXPOSE 8000

# /ready (not /health) so "healthy" means the model can serve. No curl in the base image and no apt layer for
# it: the image's own Python does the request; an HTTP error (503 while loading) or a refused connection raises,
# and the non-zero exit marks the check failed. Failures during --start-period (model load, CUDA init, warm-up)
# do not count against --retries.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]

CMD ["petseg-serve", "--host", "0.0.0.0", "--port", "8000"]

# petseg service image: CUDA PyTorch base, the project installed, non-root, healthy once /ready answers.
#   docker build -t petseg:latest .
#   docker run --gpus all -p 8000:8000 petseg:latest
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="petseg" \
      org.opencontainers.image.description="Binary pet/background segmentation service (UNet / ResNet34-UNet)" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PETSEG_DEVICE=auto

WORKDIR /opt/petseg

# Dependencies first, so a code change does not reinstall them. torch comes from the base image: the
# requirement torch>=2.4 is already satisfied, so pip keeps the CUDA build instead of pulling another one.
COPY pyproject.toml README.md ./
RUN mkdir -p models training app \
    && touch models/__init__.py training/__init__.py app/__init__.py \
    && pip install . \
    && pip uninstall -y petseg

COPY models ./models
COPY training ./training
COPY app ./app
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 petseg

USER petseg
EXPOSE 8000

# The model loads and warms up before /ready turns 200; give it time on first start.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4).status == 200 else 1)"]

CMD ["petseg-serve", "--host", "0.0.0.0", "--port", "8000"]

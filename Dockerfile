# cnnpipe with onnxruntime-gpu, CUDA and cuDNN from pip. Not built in CI (no Docker engine
# there); CI lints it with hadolint. torch and onnxruntime-gpu[cuda,cudnn] bring the CUDA 13
# libraries as pip packages, so a plain Python image serves (the host's NVIDIA container
# toolkit provides the driver). Python 3.11, the Python requirements.lock is resolved for:
# every package is installed by its hash.
FROM python:3.11-slim-bookworm

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# gcc: torch.compile (Triton) builds small launchers at run time.
# Debian's archive keeps only the current build of each package, so apt versions are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv /opt/venv

WORKDIR /opt/cnnpipe
COPY pyproject.toml README.md requirements.lock ./
COPY pipeline ./pipeline
RUN pip install --require-hashes -r requirements.lock \
    && pip install --no-deps . \
    && useradd --create-home --uid 10001 cnnpipe

USER 10001
WORKDIR /home/cnnpipe/work
HEALTHCHECK --interval=60s --timeout=20s --retries=3 CMD ["python", "-c", "import onnxruntime"]
ENTRYPOINT ["cnnpipe"]
CMD ["--help"]

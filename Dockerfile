# cnnpipe with onnxruntime-gpu on a CUDA runtime image. Not built in CI (no Docker engine
# there); CI lints it with hadolint. torch and onnxruntime-gpu from PyPI both use CUDA 13
# and bring its libraries as pip packages; requirements.lock pins every Python package.
FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# gcc and the Python headers: torch.compile (Triton) builds small launchers at run time.
# Ubuntu's archive keeps only the current build of each package, so apt versions are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /opt/cnnpipe
COPY pyproject.toml README.md requirements.lock ./
COPY pipeline ./pipeline
RUN pip install --constraint requirements.lock ".[gpu]" \
    && useradd --create-home --uid 10001 cnnpipe

USER 10001
WORKDIR /home/cnnpipe/work
HEALTHCHECK --interval=60s --timeout=20s --retries=3 CMD ["python", "-c", "import onnxruntime"]
ENTRYPOINT ["cnnpipe"]
CMD ["--help"]

# cnnpipe with onnxruntime-gpu on a CUDA runtime image. Not built in CI (no Docker engine there).
# torch and onnxruntime-gpu from PyPI both use CUDA 13 and bring its libraries as pip packages.
FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
# gcc and the Python headers: torch.compile (Triton) builds small launchers at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /opt/cnnpipe
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
RUN pip install ".[gpu]"

RUN useradd --create-home --uid 10001 cnnpipe
USER cnnpipe
WORKDIR /home/cnnpipe/work
ENTRYPOINT ["cnnpipe"]
CMD ["--help"]

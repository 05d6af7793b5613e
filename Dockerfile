# syntax=docker/dockerfile:1
# Chorus server image. CPU torch by default; for NVIDIA GPUs build with a CUDA wheel index, e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t chorus:cuda .
# and run with `--gpus all -e CHORUS_DEVICE=cuda` (see docs/deploy.md).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

# Which torch wheel, from which index. The CPU index keeps the image ~1 GB instead of several.
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 1000 --user-group chorus \
    && mkdir -p /data && chown chorus:chorus /data
WORKDIR /app

# Dependency layer: only pyproject.toml is copied, so editing the source does not reinstall torch. The
# requirement list is read from pyproject itself, so the image cannot drift from it.
COPY pyproject.toml ./
RUN pip install --index-url "$TORCH_INDEX" "$TORCH_SPEC" \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
       > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Source layer.
COPY README.md ./
COPY server ./server
COPY adapter_store ./adapter_store
COPY clients ./clients
RUN pip install --no-deps . && rm -rf build *.egg-info

USER chorus
# The adapter store (and a generated random backbone when none is configured) live on the data volume.
WORKDIR /data
ENV CHORUS_STORE=/data/store \
    CHORUS_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["chorus"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

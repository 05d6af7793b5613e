# syntax=docker/dockerfile:1
# Chorus server image. CPU torch by default; for NVIDIA GPUs build with a CUDA wheel index, e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t chorus:cuda .
# and run with `--gpus all -e CHORUS_DEVICE=cuda` (see docs/deploy.md).
# Air-gapped builds: fill deploy/wheelhouse/ (tools/fill-wheelhouse.sh) and pass --build-arg WHEELHOUSE=1; pip
# then installs from those wheels only, never from an index (`make image-smoke` builds this way with podman).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

# Which torch wheel, from which index. The CPU index keeps the image ~1 GB instead of several.
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"
ARG WHEELHOUSE=""

# Chorus lives in its own virtual environment: works the same on python:3.11-slim and on a Debian python3 base
# (whose system Python refuses pip installs).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/chorus \
    PATH=/opt/chorus/bin:$PATH

RUN useradd --create-home --uid 1000 --user-group chorus \
    && mkdir -p /data && chown chorus:chorus /data \
    && python3 -m venv /opt/chorus
WORKDIR /app

# Dependency layer: only the two pyproject files are copied, so editing the source does not reinstall torch. The
# requirement list is read from them (less the client, installed from source below), so it cannot drift; with the
# `postgres` extra, so that the image runs on a shared tenant database (CHORUS_DATABASE_URL, docker-compose.yml).
COPY pyproject.toml ./
COPY clients/pyproject.toml ./clients/
RUN --mount=type=bind,source=deploy/wheelhouse,target=/wheelhouse \
    if [ -n "$WHEELHOUSE" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse; fi \
    && pip install --index-url "$TORCH_INDEX" "$TORCH_SPEC" \
    && python -c "import tomllib; c, s = (tomllib.load(open(f, 'rb'))['project'] for f in ('clients/pyproject.toml', 'pyproject.toml')); print('\n'.join(d for d in c['dependencies'] + s['dependencies'] + s['optional-dependencies']['postgres'] + s['optional-dependencies']['lm'] if not d.startswith('chorus-client')))" \
       > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt "setuptools>=77" \
    && rm /tmp/requirements.txt

# Source layer: the client distribution (clients/) and the server distribution (server/, adapter_store/).
COPY README.md ./
COPY clients ./clients
COPY server ./server
COPY adapter_store ./adapter_store
RUN pip install --no-deps --no-build-isolation ./clients . && rm -rf build clients/build *.egg-info clients/*.egg-info

USER chorus
# The adapter store (and a generated random backbone when none is configured) live on the data volume.
WORKDIR /data
# PYTORCH_CUDA_ALLOC_CONF: batches of changing shapes grow and shrink segments instead of fragmenting (CUDA only).
ENV CHORUS_STORE=/data/store \
    CHORUS_DATA_DIR=/data \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["chorus"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

# Chorus image (CPU torch by default). The server entry point lands with the server issue; today the image
# carries the engine and the `chorus` CLI.
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"

RUN useradd --create-home --uid 1000 chorus
WORKDIR /app

# Dependency layer, cached separately from the source.
COPY pyproject.toml README.md ./
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" "$TORCH_SPEC" \
    && pip install --no-cache-dir numpy safetensors fastapi uvicorn pydantic pydantic-settings \
       prometheus-client soundfile soxr

COPY server ./server
COPY adapter_store ./adapter_store
COPY clients ./clients
RUN pip install --no-cache-dir --no-deps .

USER chorus
VOLUME ["/data"]
ENTRYPOINT ["chorus"]
CMD ["--help"]

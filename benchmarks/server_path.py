"""Server path: end to end over HTTP on loopback vs the direct call, with 1, 4 and 16 concurrent clients.

The server (`uvicorn --factory server.app:create_app`, default settings, the random wav2vec2-base as backbone)
runs in a child process; the direct path is the same engine and batching worker (server defaults) in this
process, without HTTP. 5 s clips. At c=1 the two paths alternate request by request.

    python -m benchmarks.server_path [--requests 16] [--device cpu] [--out result.json]
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import soundfile

from benchmarks.common import clip, device_of, finish, median, model_dir, parser, percentile
from benchmarks.swap import closed_loop
from server.batching import WorkItem
from server.engine import Engine
from server.metrics import Metrics
from server.runtime import resolve_batch_limits, resolve_dtype
from server.settings import BatchSettings
from server.worker import Worker

CONCURRENCY = (1, 4, 16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(backbone: Path, store: Path, device: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "CHORUS_BACKBONE": str(backbone), "CHORUS_STORE": str(store), "CHORUS_DEVICE": device}
    command = [sys.executable, "-m", "uvicorn", "--factory", "server.app:create_app", "--port", str(port)]
    proc = subprocess.Popen([*command, "--log-level", "warning"], env=env)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not become ready in 5 minutes")


def http_client(port: int, wav: bytes) -> Callable[[int, str], None]:
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300, limits=httpx.Limits(max_connections=32))

    def serve(_: int, model: str) -> None:
        files = {"file": ("clip.wav", wav, "audio/wav")}
        client.post("/v1/audio/transcriptions", files=files, data={"model": model}).raise_for_status()

    return serve


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--requests", type=int, default=16, help="requests per concurrency level (default 16)")
    args = p.parse_args()
    device = device_of(args)
    path = model_dir(args.models, "tiny" if args.quick else "base")
    requests, seconds = (4, 1.0) if args.quick else (args.requests, 5.0)
    audio = clip(seconds)[0].numpy()
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, 16000, format="WAV", subtype="FLOAT")
    loaded = Engine.from_pretrained(path, device=str(device), dtype=resolve_dtype("auto", device))
    engine, head = loaded.engine, loaded.default_adapter
    assert head is not None
    worker = Worker(engine, resolve_batch_limits(BatchSettings(), device, 16000), Metrics())
    worker.start()

    def direct(_: int, __: str) -> None:
        item = WorkItem(audio, head, time.monotonic(), float("inf"))
        worker.submit([item])
        item.future.result()

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start_server(path, Path(tmp) / "store", str(device), port)
        try:
            http = http_client(port, buffer.getvalue())
            http(0, "default")  # warm-up both paths
            direct(0, "default")
            pairs: dict[str, list[float]] = {"http": [], "direct": []}
            for i in range(requests):
                for name, call in (("http", http), ("direct", direct)):
                    start = time.perf_counter()
                    call(i, "default")
                    pairs[name].append(time.perf_counter() - start)
            levels = {
                name: {str(c): closed_loop(serve, ["default"], c, max(requests, c)) for c in CONCURRENCY[1:]}
                for name, serve in (("http", http), ("direct_worker", direct))
            }
        finally:
            proc.terminate()
            proc.wait(30)
            worker.stop()
    c1 = {name: {"p50_s": median(v), "p95_s": percentile(v, 0.95)} for name, v in pairs.items()}
    finish(
        "server_path",
        args,
        {
            "clip_seconds": seconds,
            "c1": c1,
            "overhead_c1": c1["http"]["p50_s"] / c1["direct"]["p50_s"] - 1,
            "levels": levels,
        },
    )


if __name__ == "__main__":
    main()

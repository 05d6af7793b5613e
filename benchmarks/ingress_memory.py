"""Resident memory of a `chorus serve --ray` ingress and of a worker, on a local Ray cluster (this machine).

Deploys the cluster with one worker on the configured backbone (CHORUS_BACKBONE; else the embedded demo model),
waits until it answers, transcribes one clip (so the ingress has served a request), then reads VmRSS of the
ingress and worker replica processes from /proc.

    python -m benchmarks.ingress_memory [--workers 1]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile

from chorus_server.background import free_port
from chorus_server.settings import Settings


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def replica_pids() -> dict[str, int]:
    """Ray titles a replica's process `ray::ServeReplica:<app>:<deployment>` (no dashboard needed to find it)."""
    found: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        for role in ("chorus-ingress", "chorus-worker"):
            if f"ServeReplica:chorus:{role}" in title:
                found.setdefault(role, int(proc.name))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    import ray
    from ray import serve

    from chorus_server.cluster.app import build

    data = Path(tempfile.mkdtemp(prefix="chorus-ingress-memory-"))
    settings = Settings(data_dir=data, store=str(data / "store"), device="cpu")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build(settings, workers=args.workers), name="chorus", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while httpx.get(f"{url}/readyz", timeout=30).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become ready")
            time.sleep(0.5)
        buffer = io.BytesIO()
        soundfile.write(buffer, np.zeros(16000 * 3, np.float32), 16000, format="WAV", subtype="PCM_16")
        files = {"file": ("a.wav", buffer.getvalue(), "audio/wav")}
        answer = httpx.post(f"{url}/v1/audio/transcriptions", files=files, data={"model": "whisper-1"}, timeout=120)
        answer.raise_for_status()
        found = {role: rss_mib(pid) for role, pid in replica_pids().items()}
        print(json.dumps({"rss_mib": {k: round(v) for k, v in found.items()}}))
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()

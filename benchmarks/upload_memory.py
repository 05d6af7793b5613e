"""Server memory under a burst of long uploads: N parallel uploads of one long clip from one tenant against
`chorus serve` on a tiny random model; the server's peak RSS during the burst and its RSS after it.

The clip is 8 kHz 16-bit mono WAV (871 s is 13.9 MB, under the 25 MiB upload limit; the server resamples it to
16 kHz). Every client sends once and does not retry: the point is what the server holds, not throughput. Bounded:
one burst, each request bounded by the server's deadline (CHORUS_LIMITS__REQUEST_TIMEOUT_SECONDS).

    python -m benchmarks.upload_memory [--uploads 64] [--seconds 871] [--out result.json]
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile

from benchmarks.common import finish, parser
from chorus_server.background import ServerProcess
from chorus_server.engine.random_model import write_random_model

RATE = 8000
SETTLE_SECONDS = 5.0  # after the last answer: what the server still holds once its work is done


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory in MiB: VmRSS (all), or RssAnon (heap: what malloc holds) / RssFile (mapped files)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def clip(seconds: float) -> bytes:
    gen = np.random.default_rng(0)
    samples = (0.1 * gen.standard_normal(int(seconds * RATE))).astype(np.float32)
    out = io.BytesIO()
    soundfile.write(out, samples, RATE, format="WAV", subtype="PCM_16")
    return out.getvalue()


def burst(url: str, data: bytes, uploads: int) -> collections.Counter[str]:
    def post(_: int) -> str:
        files = {"file": ("long.wav", data, "audio/wav")}
        try:
            answer = httpx.post(f"{url}/v1/audio/transcriptions", files=files, data={"model": "default"}, timeout=300)
            return str(answer.status_code)
        except httpx.HTTPError as exc:
            return type(exc).__name__

    with concurrent.futures.ThreadPoolExecutor(uploads) as pool:
        return collections.Counter(pool.map(post, range(uploads)))


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--uploads", type=int, default=64)
    args.add_argument("--seconds", type=float, default=871.0)
    args.add_argument("--env", action="append", default=[], help="extra CHORUS_*=value settings for the server")
    options = args.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_random_model(root / "model", "tiny", num_adapters=1, seed=0, num_layers=1)
        env = {
            "CHORUS_BACKBONE": str(root / "model"),
            "CHORUS_STORE": str(root / "store"),
            "CHORUS_DATA_DIR": str(root / "data"),
            "CHORUS_DEVICE": "cpu",
            "CHORUS_DTYPE": "float32",
            "CHORUS_VAD__ENABLED": "false",  # the noise clip holds no speech: with VAD nothing would run
            "CHORUS_LIMITS__REQUEST_TIMEOUT_SECONDS": "60",
            **dict(item.split("=", 1) for item in options.env),
        }
        data = clip(options.seconds)
        with ServerProcess(env, root, start_timeout=120) as server:
            assert server.process is not None
            pid = server.process.pid
            idle = rss_mib(pid)
            peak, stop = [idle], threading.Event()

            def sample() -> None:
                while not stop.wait(0.05):
                    peak.append(rss_mib(pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.monotonic()
            answers = burst(server.url, data, options.uploads)
            elapsed = time.monotonic() - started
            time.sleep(SETTLE_SECONDS)  # the server's own cleanup, not a timing measurement
            stop.set()
            sampler.join()
            after, after_anon = rss_mib(pid), rss_mib(pid, "RssAnon")
    result = {
        "uploads": options.uploads,
        "clip_seconds": options.seconds,
        "clip_mb": round(len(data) / 1e6, 1),
        "answers": dict(answers),
        "burst_seconds": round(elapsed, 1),
        "rss_idle_mib": round(idle),
        "rss_peak_mib": round(max(peak)),
        "rss_after_mib": round(after),
        "rss_anon_after_mib": round(after_anon),
        "settings": options.env,
    }
    finish("upload_memory", options, result)


if __name__ == "__main__":
    main()

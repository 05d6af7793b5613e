"""Audio for the client integration tests; the real server is `chorus_server.background.ServerProcess`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]


def write_wav(path: Path, seconds: float, seed: int = 0, rate: int = 16000) -> Path:
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32), rate, subtype="PCM_16")
    return path

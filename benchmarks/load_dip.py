"""Throughput of running adapters while cold loads happen: does loading disturb inference?

The inference thread runs batches (4 × 4 s clips, other adapters); before every second batch, 10 MMS-size
adapters are requested cold from a `LocalStore` through an `AdapterCache`, whose loader threads read, check
and build them while the batch runs. Batches with and without loads alternate; the ratio of their medians is
the dip, and the ratio between the quiet batches of odd and even rounds is the noise it is judged against.

    python -m benchmarks.load_dip [--reps 6] [--device cpu] [--out result.json]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from benchmarks.adapter_cold_load import FINGERPRINT, MMS
from benchmarks.common import clip, device_of, finish, median, model_dir, parser, sync
from chorus_server.engine import Engine
from chorus_server.engine.adapter_format import save_adapter
from chorus_server.engine.cache import AdapterCache
from chorus_server.engine.random_model import random_adapter
from chorus_server.runtime import choose_dtype
from chorus_server.validation import BackboneValidator
from chorus_store import LocalStore
from chorus_store.loader import make_loader

LOADS = 10


def main() -> None:
    args = parser(__doc__).parse_args()
    device = device_of(args)
    dtype = choose_dtype("auto", device)
    reps, batch, seconds, loads = (1, 2, 1.0, 2) if args.quick else (args.reps, 4, 4.0, LOADS)
    loaded = Engine.from_pretrained(model_dir(args.models, "tiny" if args.quick else "base"), str(device), dtype)
    engine, head = loaded.engine, loaded.default_adapter
    assert head is not None
    x = clip(seconds, batch)
    lengths = torch.full((batch,), x.shape[1])
    validator = BackboneValidator(MMS.hidden_size, MMS.num_hidden_layers, FINGERPRINT)
    quiet: list[float] = []
    busy: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "store", validator, max_bytes=64 * 1024 * 1024)
        template = random_adapter(MMS, "mms", "t", 16, list(range(MMS.num_hidden_layers)), 145, 0, FINGERPRINT)
        save_adapter(template, Path(tmp) / "upload.safetensors")
        for i in range(reps * loads):
            store.publish(f"bench/a{i}", Path(tmp) / "upload.safetensors")
        cache = AdapterCache(
            make_loader(store, validator.load_version),
            lambda a: a.to(device=device, dtype=engine.dtype),
            device,
            10**12,
            10**12,
        )
        with cache.acquire("a0@1"):  # warm-up: imports and the loader threads
            pass
        engine.forward(x, lengths, [head] * batch)
        for rep in range(reps):
            for phase in ("quiet", "busy"):
                futures = [cache.lease(f"bench/a{rep * loads + i}@1") for i in range(loads)] if phase == "busy" else []
                sync(device)
                start = time.perf_counter()
                engine.forward(x, lengths, [head] * batch)
                sync(device)
                (busy if futures else quiet).append(time.perf_counter() - start)
                for future in futures:
                    future.result().release()
    noise = median(quiet[0::2]) / median(quiet[1::2]) if len(quiet) > 1 else 1.0
    finish(
        "load_dip",
        args,
        {
            "dtype": dtype,
            "loads_per_busy_batch": loads,
            "batch_seconds_quiet": median(quiet),
            "batch_seconds_busy": median(busy),
            "throughput_ratio_busy_vs_quiet": median(quiet) / median(busy),
            "quiet_odd_vs_even": noise,
        },
    )


if __name__ == "__main__":
    main()

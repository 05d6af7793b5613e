"""Multi-tenant overhead: throughput with 1 adapter vs 8, 64, 512 distinct ones under uniform random traffic.

All adapters are resident (prepared on the device): this measures the cost of mixing adapters inside one
backbone pass (per-segment bottlenecks), not loading. Each batch draws its adapters uniformly at random.

    python -m benchmarks.multi_tenant [--reps 5] [--device cpu] [--out result.json]
"""

from __future__ import annotations

import random

import torch

from benchmarks.common import clip, device_of, finish, interleaved, median, model_dir, parser
from chorus_server.engine import Engine
from chorus_server.engine.random_model import random_adapter
from chorus_server.runtime import choose_dtype


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=8, help="items per batch (default 8)")
    p.add_argument("--seconds", type=float, default=4.0, help="clip length (default 4 s)")
    args = p.parse_args()
    device = device_of(args)
    dtype = choose_dtype("auto", device)
    path = model_dir(args.models, "tiny" if args.quick else "base")
    counts, reps, batch, seconds = (
        ((1, 4), 1, 2, 1.0) if args.quick else ((1, 8, 64, 512), args.reps, args.batch, args.seconds)
    )
    engine = Engine.from_pretrained(path, device=str(device), dtype=dtype).engine
    cfg = engine.config
    layers = list(range(cfg.num_hidden_layers))
    bank = [
        engine.prepare(random_adapter(cfg, "houlsby", f"t{i}", 16, layers, 26, i, engine.fingerprint))
        for i in range(max(counts))
    ]
    x = clip(seconds, batch)
    lengths = torch.full((batch,), x.shape[1])
    rng = random.Random(0)

    def traffic(n: int) -> None:
        engine.forward(x, lengths, [bank[rng.randrange(n)] for _ in range(batch)])

    times = interleaved({str(n): (lambda n=n: traffic(n)) for n in counts}, reps, device)
    throughput = {n: batch * seconds / median(times[str(n)]) for n in counts}
    finish(
        "multi_tenant",
        args,
        {
            "dtype": dtype,
            "batch": batch,
            "clip_seconds": seconds,
            "adapter_params": bank[0].num_parameters(),
            "throughput_xrt": {str(n): v for n, v in throughput.items()},
            "ratio_to_one_adapter": {str(n): v / throughput[1] for n, v in throughput.items()},
        },
    )


if __name__ == "__main__":
    main()

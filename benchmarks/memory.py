"""vs one fine-tuned model per task: host bytes for N tasks as N full MMS-1b-size models vs one backbone plus N
MMS-size adapters (N = 10, 100, 1000), in float32 (bf16 halves both sides).

Sizes are parameter bytes, counted on the meta device (nothing is allocated); that the process holds no more
than these bytes per resident adapter is measured by `benchmarks.adapter_cold_load` (RSS growth / tensor bytes).

    python -m benchmarks.memory [--out result.json]
"""

from __future__ import annotations

import torch

from benchmarks.common import finish, parser
from chorus_server.engine.adapters import Adapter, AdapterInfo, Vocabulary
from chorus_server.engine.backbone import Backbone
from chorus_server.engine.random_model import PRESETS

COUNTS = (10, 100, 1000)
VOCAB = 150  # MMS heads have about this many tokens


def main() -> None:
    args = parser(__doc__).parse_args()
    config = PRESETS["large-mms"]
    with torch.device("meta"):
        backbone = sum(p.numel() for p in Backbone(config).parameters())
        vocab = Vocabulary(tuple(f"t{i}" for i in range(VOCAB)), blank_id=0, word_delimiter_id=1)
        info = AdapterInfo(name="x", kind="mms")
        adapter = Adapter(info, vocab, config.hidden_size, 16, range(config.num_hidden_layers)).num_parameters()
    full = backbone + adapter  # a fine-tuned model is the backbone with its adapter (or its own weights) built in
    rows = [
        {"tasks": n, "full_models_bytes": 4 * n * full, "chorus_bytes": 4 * (backbone + n * adapter)} for n in COUNTS
    ]
    for row in rows:
        row["ratio"] = row["full_models_bytes"] / row["chorus_bytes"]
    finish(
        "memory",
        args,
        {"backbone_params": backbone, "adapter_params": adapter, "dtype": "float32", "rows": rows},
    )


if __name__ == "__main__":
    main()

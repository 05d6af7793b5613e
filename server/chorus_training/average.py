"""`chorus dev average-adapters`: one adapter whose every tensor is the mean of several adapter files' ("model soup").

Runs continued from one starting point (`train-classifier --init`, different seeds or augmentations) stay in one
basin of the loss, and the average of their weights is often more robust to data unlike the training data than
any one of them (Wortsman et al., 2022, "Model soups"): the shipped `lid` is such an average (docs/demo-model.md).
The files must agree on everything but their tensors' values: kind, labels or vocabulary, shapes and backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from chorus_server.engine.adapter_format import adapter_metadata, load_adapter
from chorus_server.engine.adapters import Adapter
from chorus_server.engine.tensor_file import write_safetensors


def _structure(adapter: Adapter) -> tuple[object, ...]:
    info = adapter.info
    return (
        info.kind,
        info.backbone_fingerprint,
        adapter.vocab.tokens,
        adapter.normalize_states,
        adapter.expected_shapes(),
    )


def average_adapters(paths: Sequence[Path], out: Path) -> Adapter:
    """Write the element-wise mean of the adapter files `paths` (metadata of the first) to `out`; returns it loaded."""
    if len(paths) < 2:
        raise ValueError("averaging needs at least two adapter files")
    adapters = [load_adapter(path) for path in paths]
    first = adapters[0]
    for path, adapter in zip(paths[1:], adapters[1:], strict=True):
        if _structure(adapter) != _structure(first):
            raise ValueError(f"{path} differs from {paths[0]} in kind, labels, shapes or backbone: cannot average")
    names = first.tensors()
    tensors = {
        name: (torch.stack([a.tensors()[name].detach().float() for a in adapters]).mean(dim=0)).contiguous()
        for name in names
    }
    meta = {k: v for k, v in adapter_metadata(first).items() if not k.startswith("x-")}  # scores were the first's
    meta["x-averaged"] = str(len(paths))
    write_safetensors(out, tensors, meta)
    return load_adapter(out)

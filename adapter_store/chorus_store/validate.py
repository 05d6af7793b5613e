"""Validation of an uploaded adapter file against the backbone it will run on, before it becomes visible."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file

from chorus_server.engine.adapter_format import adapter_from_metadata, check_fit, load_tensors_into
from chorus_server.engine.errors import AdapterError
from chorus_store.errors import AdapterRejected
from chorus_store.safetensors_header import FLOAT_DTYPES, read_header


@dataclass(frozen=True)
class AdapterSpec:
    """What the serving backbone accepts: its geometry and fingerprint."""

    hidden_size: int
    num_layers: int
    fingerprint: str


@dataclass(frozen=True)
class ValidatedAdapter:
    kind: str
    language: str
    task: str
    vocab_size: int
    bottleneck_dim: int
    layers: list[int]
    backbone_fingerprint: str


def validate_file(path: Path, spec: AdapterSpec, allow_fingerprint_mismatch: bool = False) -> ValidatedAdapter:
    """Header bounds first (nothing allocated), then names, dtypes, shapes, finiteness, vocabulary and fit."""
    size = path.stat().st_size
    with path.open("rb") as f:
        header = read_header(f, size)
    for entry in header.tensors.values():
        if entry.dtype not in FLOAT_DTYPES:
            raise AdapterRejected(f"tensor {entry.name!r} has dtype {entry.dtype}; adapters hold F32, F16 or BF16")
    try:
        adapter = adapter_from_metadata(header.metadata)
        load_tensors_into(adapter, load_file(str(path)))
        check_fit(adapter, spec.hidden_size, spec.num_layers, None if allow_fingerprint_mismatch else spec.fingerprint)
    except AdapterError as exc:
        raise AdapterRejected(str(exc)) from exc
    return ValidatedAdapter(
        kind=adapter.info.kind,
        language=adapter.info.language,
        task=adapter.info.task,
        vocab_size=len(adapter.vocab),
        bottleneck_dim=adapter.bottleneck_dim,
        layers=list(adapter.layer_ids),
        backbone_fingerprint=adapter.info.backbone_fingerprint,
    )

"""The native adapter file (one self-describing `.safetensors`) and conversions from HF / MMS layouts.

Native tensor names: `layers.{i}.{site}.{norm|down|up}.{weight|bias}` and `head.{weight|bias}` (+ `layer_weights`
for a classifier). `__metadata__` (all strings): format, format_version, kind, name, language, task, vocab (JSON
list), blank_id, word_delimiter_id, hidden_size, bottleneck_dim, layers (JSON list), backbone_fingerprint; a
classifier has labels (JSON list), num_states, state_norm ("none" or "layer"; absent: "none") and pooling ("mean"
or "attentive" with tensor `pool.weight`; absent: "mean") instead of vocab, blank_id and word_delimiter_id. CNN adapters
(any kind, optional): tensors `cnn.{i}.{down|conv|up}.{weight|bias}`, metadata cnn_layers, cnn_channels (JSON
lists, one entry per adapted conv layer) and cnn_dim.
See docs/adapter-format.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chorus_server.engine.adapters import CLASSIFIER, KIND_SITES, POOLINGS, Adapter, AdapterInfo, Vocabulary
from chorus_server.engine.checkpoint import split_checkpoint
from chorus_server.engine.errors import AdapterError
from chorus_server.engine.tensor_file import DTYPE_NAMES, TensorViews, parse_safetensors, write_safetensors

FORMAT = "chorus-adapter"
ADAPTER_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FORMAT_VERSION = "1"
# MMS / HF `adapter_layer` parameter names -> native bottleneck names (site "output").
MMS_RENAMES = {"norm": "norm", "linear_1": "down", "linear_2": "up"}


def adapter_metadata(adapter: Adapter) -> dict[str, str]:
    info, vocab = adapter.info, adapter.vocab
    outputs = (
        {
            "labels": json.dumps(list(adapter.labels), ensure_ascii=False),
            "num_states": str(adapter.num_states),
            "state_norm": "layer" if adapter.normalize_states else "none",
            "pooling": adapter.pooling,
        }
        if adapter.is_classifier
        else {
            "vocab": json.dumps(list(vocab.tokens), ensure_ascii=False),
            "blank_id": str(vocab.blank_id),
            "word_delimiter_id": "" if vocab.word_delimiter_id is None else str(vocab.word_delimiter_id),
        }
    )
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": info.kind,
        "name": info.name,
        "language": info.language,
        "task": info.task,
        **outputs,
        "hidden_size": str(adapter.hidden_size),
        "bottleneck_dim": str(adapter.bottleneck_dim),
        "layers": json.dumps(list(adapter.layer_ids)),
        "backbone_fingerprint": info.backbone_fingerprint,
        **(
            {
                "cnn_layers": json.dumps(list(adapter.cnn_channels)),
                "cnn_channels": json.dumps(list(adapter.cnn_channels.values())),
                "cnn_dim": str(adapter.cnn_dim),
            }
            if adapter.cnn_channels
            else {}
        ),
        **{f"x-{k}": v for k, v in info.extra.items()},
    }


def save_adapter(adapter: Adapter, path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> None:
    """Write the native file; each (site, part)'s layers lie back to back, so loading stacks them as one view."""
    tensors = {k: v.detach().to(dtype).contiguous().cpu() for k, v in adapter.tensors().items()}
    write_safetensors(Path(path), tensors, adapter_metadata(adapter))


def _field(meta: dict[str, str], key: str) -> str:
    if key not in meta:
        raise AdapterError(f"adapter metadata is missing {key!r}")
    return meta[key]


def adapter_from_metadata(meta: dict[str, str]) -> Adapter:
    """An adapter with the shapes the metadata declares, on the meta device (no memory, no init cost)."""
    if meta.get("format") != FORMAT:
        raise AdapterError(f"not a Chorus adapter: metadata format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise AdapterError(f"unsupported adapter format_version {meta.get('format_version')!r}")
    try:
        classifier = meta.get("kind") == CLASSIFIER
        tokens = json.loads(_field(meta, "labels" if classifier else "vocab"))
        layers = json.loads(_field(meta, "layers"))
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise AdapterError(f"adapter {'labels' if classifier else 'vocab'} must be a JSON list of strings")
        if classifier:
            vocab = Vocabulary.of_labels(tokens)
            num_states = int(_field(meta, "num_states"))
            if meta.get("state_norm", "none") not in ("none", "layer"):
                raise AdapterError(f"state_norm must be 'none' or 'layer', got {meta['state_norm']!r}")
            if meta.get("pooling", "mean") not in POOLINGS:
                raise AdapterError(f"pooling must be one of {list(POOLINGS)}, got {meta['pooling']!r}")
        else:
            delimiter = _field(meta, "word_delimiter_id")
            vocab = Vocabulary(tuple(tokens), int(_field(meta, "blank_id")), int(delimiter) if delimiter else None)
            num_states = 0
        info = AdapterInfo(
            name=_field(meta, "name"),
            kind=_field(meta, "kind"),
            language=meta.get("language", ""),
            task=meta.get("task", "classify" if classifier else "transcribe"),
            backbone_fingerprint=meta.get("backbone_fingerprint", ""),
            extra={k[2:]: v for k, v in meta.items() if k.startswith("x-")},
        )
        if not isinstance(layers, list) or not all(isinstance(i, int) for i in layers):
            raise AdapterError("adapter layers must be a JSON list of integers")
        cnn_channels = _cnn_channels(meta)
        hidden, dim = int(_field(meta, "hidden_size")), int(_field(meta, "bottleneck_dim"))
        cnn_dim, norm = int(meta.get("cnn_dim", "0")), meta.get("state_norm") == "layer"
        pooling = meta.get("pooling", "mean") if classifier else "mean"
        return Adapter(info, vocab, hidden, dim, layers, num_states, cnn_channels, cnn_dim, norm, pooling, "meta")
    except AdapterError:
        raise
    except (ValueError, TypeError) as exc:  # bad JSON, bad ints, Vocabulary/Adapter validation
        raise AdapterError(f"invalid adapter metadata: {exc}") from exc


def _cnn_channels(meta: dict[str, str]) -> dict[int, int]:
    """conv layer -> channels of the CNN adapters the metadata declares ({} when it declares none)."""
    if "cnn_layers" not in meta:
        return {}
    layers, channels = json.loads(meta["cnn_layers"]), json.loads(_field(meta, "cnn_channels"))
    if (
        not isinstance(layers, list)
        or not isinstance(channels, list)
        or len(layers) != len(channels)
        or not all(isinstance(v, int) for v in [*layers, *channels])
        or len(set(layers)) != len(layers)
    ):
        raise AdapterError("cnn_layers and cnn_channels must be JSON lists of integers, one per distinct layer")
    return dict(zip(layers, channels, strict=True))


def check_fit(
    adapter: Adapter,
    hidden_size: int,
    num_layers: int,
    fingerprint: str | None,
    conv_dims: tuple[int, ...] | None = None,
) -> None:
    """Reject an adapter that cannot run on this backbone. `fingerprint=None` skips the fingerprint check;
    `conv_dims`: the front end's channels per conv layer, which CNN adapters must match."""
    if adapter.hidden_size != hidden_size:
        raise AdapterError(f"adapter {adapter.name!r} has hidden size {adapter.hidden_size}, backbone {hidden_size}")
    bad = [i for i in adapter.layer_ids if not 0 <= i < num_layers]
    if bad:
        raise AdapterError(f"adapter {adapter.name!r} names layers {bad} but the backbone has {num_layers}")
    if adapter.is_classifier and not 2 <= adapter.num_states <= num_layers + 1:
        raise AdapterError(
            f"classifier {adapter.name!r} mixes {adapter.num_states} hidden states, "
            f"the backbone has {num_layers + 1} ({num_layers} layers + its input)"
        )
    if adapter.cnn_channels:
        fits = conv_dims is not None and all(
            0 <= layer < len(conv_dims) and conv_dims[layer] == channels
            for layer, channels in adapter.cnn_channels.items()
        )
        if not fits:
            raise AdapterError(
                f"adapter {adapter.name!r} has CNN adapters for conv layers {adapter.cnn_channels} (layer: channels), "
                f"the backbone's conv layers have {list(conv_dims or [])} channels"
            )
    if fingerprint is not None and adapter.info.backbone_fingerprint != fingerprint:
        raise AdapterError(
            f"adapter {adapter.name!r} was trained for backbone {adapter.info.backbone_fingerprint or '(none)'}, "
            f"this backbone is {fingerprint}"
        )


def all_finite(t: torch.Tensor) -> bool:
    """No NaN/Inf in a float32 CPU tensor. A sum is finite iff every value is (NaN and Inf propagate), unless
    finite values overflow it, then the exact check decides. numpy: single-threaded, so a load on the loader
    thread never waits on the intra-op thread pool that the inference thread keeps busy."""
    values = t.numpy()
    return bool(np.isfinite(values.sum())) or bool(np.isfinite(values).all())


def load_tensors_into(adapter: Adapter, tensors: Mapping[str, torch.Tensor], check_finite: bool = True) -> Adapter:
    """Strictly load tensors (file names), naming every missing/unexpected key, wrong shape and (unless not
    `check_finite`) non-finite value.

    Each site's per-layer tensors become one (layers, ...) float32 stack that the adapter adopts: a view of the file
    buffer when the file lays them out back to back in float32 (as Chorus writes them), else one copy.
    """
    expected = adapter.expected_shapes()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterError(f"adapter {adapter.name!r}: missing keys {missing[:8]}, unexpected keys {unexpected[:8]}")
    specs = (
        tensors.specs()
        if isinstance(tensors, TensorViews)
        else {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}
    )
    for key, (dtype, shape) in specs.items():
        if shape != expected[key]:
            raise AdapterError(f"adapter {adapter.name!r}: {key} has shape {shape}, expected {expected[key]}")
        if dtype not in ADAPTER_DTYPES:
            raise AdapterError(
                f"adapter {adapter.name!r}: {key} has dtype {DTYPE_NAMES[dtype]}; adapters hold F32, F16 or BF16"
            )

    def stack(names: list[str]) -> torch.Tensor:
        if isinstance(tensors, TensorViews):
            return tensors.stack(names)
        return torch.stack([tensors[name] for name in names])

    stacks = {
        (site, part): stack([f"layers.{i}.{site}.{part}" for i in adapter.layer_ids]).float()
        for site, part in adapter.stack_keys()
    }  # each (layers, *part shape)
    # numpy copies on the calling thread; a torch copy this size would wait for the busy intra-op thread pool.
    heads = ["head.weight", "head.bias", *(["layer_weights"] if adapter.is_classifier else [])]
    head = [torch.from_numpy(tensors[k].float().numpy().copy()) for k in heads]
    extra_names = [name for name in expected if name.startswith("cnn.") or name == "pool.weight"]
    extras = {name: torch.from_numpy(tensors[name].float().numpy().copy()) for name in extra_names}
    if check_finite and not all(all_finite(t) for t in [*stacks.values(), *head, *extras.values()]):
        bad = next(k for k, t in sorted(tensors.items()) if not bool(torch.isfinite(t).all()))
        raise AdapterError(f"adapter {adapter.name!r}: {bad} contains NaN or Inf")
    layer_weights = head[2] if adapter.is_classifier else None
    return adapter.adopt(stacks, head[0], head[1], layer_weights, extras).eval().requires_grad_(False)


def read_adapter_file(path: str | os.PathLike[str]) -> tuple[dict[str, str], TensorViews]:
    path = Path(path)
    try:
        with path.open("rb") as f:  # straight into a writable buffer: the tensors view it without a copy
            data = bytearray(path.stat().st_size)
            f.readinto(data)
    except OSError as exc:
        raise AdapterError(f"cannot read adapter file {path.name}: {exc}") from exc
    return parse_safetensors(data, f"adapter file {path.name}")


def adapter_from_bytes(data: bytes | bytearray, check_finite: bool = True) -> Adapter:
    """A native adapter from the bytes of its file (as the store returns them), validated; `check_finite=False`
    skips the scan for NaN/Inf (a full read of the weights) for bytes known to have passed it."""
    meta, tensors = parse_safetensors(data, "adapter file")
    return load_tensors_into(adapter_from_metadata(meta), tensors, check_finite)


def load_adapter(path: str | os.PathLike[str]) -> Adapter:
    """Read a native adapter file (validated, not yet checked against a backbone: see `check_fit`)."""
    meta, tensors = read_adapter_file(path)
    return load_tensors_into(adapter_from_metadata(meta), tensors)


def mms_vocab(vocab_json: dict[str, Any], language: str) -> Vocabulary:
    """MMS `vocab.json` is nested {lang: {token: id}}; a fine-tuned model's is flat {token: id}."""
    if all(isinstance(v, dict) for v in vocab_json.values()):
        if language not in vocab_json:
            raise AdapterError(f"vocab.json has no entry for language {language!r}")
        vocab_json = vocab_json[language]
    try:
        return Vocabulary.from_hf(vocab_json)
    except ValueError as exc:
        raise AdapterError(f"vocab.json for {language!r}: {exc}") from exc


def adapter_from_hf(
    name: str,
    language: str,
    vocab: Vocabulary,
    head: dict[str, torch.Tensor],
    adapter_layers: dict[int, dict[str, torch.Tensor]],
    hidden_size: int,
    fingerprint: str,
) -> Adapter:
    """HF tensors (`lm_head.*` + per-layer `adapter_layer.*`) -> a native adapter (kind mms or head)."""
    kind = "mms" if adapter_layers else "head"
    dim = 0
    if adapter_layers:
        first = adapter_layers[min(adapter_layers)]
        if "linear_1.weight" not in first:
            raise AdapterError(f"adapter {name!r}: adapter_layer is missing linear_1.weight")
        dim = first["linear_1.weight"].shape[0]
    if "weight" not in head or "bias" not in head:
        raise AdapterError(f"adapter {name!r}: lm_head.weight / lm_head.bias missing")
    if head["weight"].shape[0] != len(vocab):
        raise AdapterError(
            f"adapter {name!r}: lm_head has {head['weight'].shape[0]} outputs "
            f"but the vocabulary has {len(vocab)} tokens"
        )
    info = AdapterInfo(name=name, kind=kind, language=language, backbone_fingerprint=fingerprint)
    adapter = Adapter(info, vocab, hidden_size, dim, sorted(adapter_layers))
    tensors = {f"head.{k}": v for k, v in head.items()}
    site = KIND_SITES["mms"][0]
    for layer, params in adapter_layers.items():
        for key, value in params.items():
            module, _, param = key.partition(".")
            if module not in MMS_RENAMES:
                raise AdapterError(f"adapter {name!r}: unexpected MMS tensor adapter_layer.{key}")
            tensors[f"layers.{layer}.{site}.{MMS_RENAMES[module]}.{param}"] = value
    return load_tensors_into(adapter, tensors)


def load_mms_adapter(
    path: str | os.PathLike[str], vocab_json: dict[str, Any], language: str, hidden_size: int, fingerprint: str
) -> Adapter:
    """An MMS `adapter.<lang>.safetensors` (keys `wav2vec2.encoder.layers.N.adapter_layer.*` + `lm_head.*`)."""
    path = Path(path)
    _, tensors = read_adapter_file(path)
    rest, head, layers = split_checkpoint(dict(tensors))
    if rest:
        raise AdapterError(f"{path.name}: unexpected tensors for an MMS adapter: {sorted(rest)[:8]}")
    if not layers:
        raise AdapterError(f"{path.name}: no adapter_layer tensors found")
    return adapter_from_hf(language, language, mms_vocab(vocab_json, language), head, layers, hidden_size, fingerprint)

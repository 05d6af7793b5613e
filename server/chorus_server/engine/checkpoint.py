"""Hugging Face wav2vec 2.0 checkpoint directories: the reader (`load_backbone`) and the writer (`write_checkpoint`).

The mapping from checkpoint keys to Chorus modules is a plain table (below): strip the `wav2vec2.` prefix, fold
the positional conv's weight norm, route `lm_head.*` and `adapter_layer.*` to the checkpoint's own adapter, and
ignore pre-training-only tensors. Everything else must match `Backbone.state_dict()` exactly (strict load). The
writer is the inverse (weight norm un-folded), so what it writes reads back as the same backbone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from chorus_server.engine.adapters import Vocabulary
from chorus_server.engine.backbone import Backbone
from chorus_server.engine.config import BackboneConfig, PreprocessConfig
from chorus_server.engine.errors import CheckpointError

logger = logging.getLogger(__name__)

PREFIX = "wav2vec2."
# Tensors that exist in HF checkpoints but play no part in CTC inference.
IGNORED_KEYS = re.compile(r"^(masked_spec_embed|quantizer\..*|project_hid\..*|project_q\..*|dropout_features.*)$")
# Weight-norm parameter names (old `weight_g/weight_v` and new parametrizations) -> (g, v).
POS_CONV = "encoder.pos_conv_embed.conv."
WEIGHT_NORM_NAMES = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)
ADAPTER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.adapter_layer\.(.+)$")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint directory: safetensors (single or sharded) or a `.bin` loaded weights-only."""
    path = Path(path)
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    legacy = path / "pytorch_model.bin"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(load_file(str(path / shard)))
        return tensors
    if legacy.is_file():
        # weights_only refuses arbitrary pickled objects: only tensors and plain containers load.
        loaded = torch.load(str(legacy), map_location="cpu", weights_only=True)
        if not isinstance(loaded, dict):
            raise CheckpointError(f"{legacy} does not hold a state dict")
        return loaded
    raise CheckpointError(f"no weights in {path}: expected model.safetensors, its index, or pytorch_model.bin")


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """weight = g * v / ||v||, the norm over every dim but the one g keeps (dim 2 for the positional conv)."""
    keep = [d for d in range(v.dim()) if g.shape[d] != 1]
    dims = [d for d in range(v.dim()) if d not in keep]
    return g * v / v.norm(dim=dims, keepdim=True)


def split_checkpoint(
    raw: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[int, dict[str, torch.Tensor]]]:
    """Raw HF tensors -> (backbone state dict, lm_head tensors, MMS adapter tensors per layer)."""
    backbone: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    adapter_layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in raw.items():
        name = key.removeprefix(PREFIX)
        if name.startswith("lm_head."):
            head[name.removeprefix("lm_head.")] = tensor
        elif match := ADAPTER_KEY.match(name):
            adapter_layers.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
        elif IGNORED_KEYS.match(name):
            continue
        else:
            backbone[name] = tensor
    for g_name, v_name in WEIGHT_NORM_NAMES:
        g, v = backbone.pop(POS_CONV + g_name, None), backbone.pop(POS_CONV + v_name, None)
        if g is not None and v is not None:
            backbone[POS_CONV + "weight"] = fold_weight_norm(g.float(), v.float()).to(v.dtype)
    return backbone, head, adapter_layers


def load_backbone(
    path: str | os.PathLike[str], config: BackboneConfig
) -> tuple[Backbone, dict[str, torch.Tensor], dict]:
    """Build the backbone and load weights strictly. Returns (backbone, lm_head tensors, MMS adapter tensors)."""
    state, head, adapter_layers = split_checkpoint(read_state_dict(path))
    model = Backbone(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match the config: missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"checkpoint {path}: {key} has shape {tuple(tensor.shape)}, config expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model, head, adapter_layers


def hf_backbone_tensors(backbone: Backbone) -> dict[str, torch.Tensor]:
    """Backbone state dict -> HF key names, the positional conv weight un-folded into weight-norm (g, v)."""
    tensors = {PREFIX + k: v.detach().clone().contiguous() for k, v in backbone.state_dict().items()}
    weight = tensors.pop(PREFIX + POS_CONV + "weight")
    g = weight.norm(dim=(0, 1), keepdim=True)  # weight_norm(dim=2): one norm per kernel tap
    tensors[PREFIX + POS_CONV + "parametrizations.weight.original0"] = g
    tensors[PREFIX + POS_CONV + "parametrizations.weight.original1"] = weight
    return tensors


def hf_vocab(vocab: Vocabulary) -> dict[str, int]:
    """A vocabulary as HF's flat `vocab.json` ({token: id})."""
    return {token: i for i, token in enumerate(vocab.tokens)}


def write_checkpoint(
    out: str | os.PathLike[str],
    backbone: Backbone,
    extra: dict[str, torch.Tensor],
    vocab_json: dict,
    dtype: torch.dtype | None = None,
) -> None:
    """Write an HF-layout directory that `load_backbone` / `Engine.from_pretrained` read back: config.json,
    preprocessor_config.json, model.safetensors (the backbone + `extra`, tensors under their HF names such as
    `lm_head.*` or MMS `adapter_layer.*`, cast to `dtype` if given) and vocab.json (flat, or nested by language).

    Every file is written in full beside `out` first and then moved in, so a reader never sees a partial file;
    other files in `out` are left alone.
    """
    out = Path(out)
    tensors = {**hf_backbone_tensors(backbone), **extra}
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    config = backbone.config.to_hf_dict()
    if "lm_head.weight" in extra:
        config["vocab_size"] = extra["lm_head.weight"].shape[0]
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(staging / "model.safetensors"))
        (staging / "config.json").write_text(json.dumps(config, indent=1))
        (staging / "preprocessor_config.json").write_text(json.dumps(PreprocessConfig().to_hf_dict(), indent=1))
        (staging / "vocab.json").write_text(json.dumps(vocab_json, ensure_ascii=False, indent=1))
        for name in ("model.safetensors", "config.json", "preprocessor_config.json", "vocab.json"):
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fingerprint(model: Backbone) -> str:
    """Identity of a backbone's weights: architecture + every tensor's name, shape and a strided value sample.

    Cheap (no full hash of a multi-GB model) yet any retraining changes it. Adapters record it so they are
    never applied to a backbone they were not trained for.
    """
    digest = hashlib.sha256(json.dumps(model.config.architecture_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1).float().cpu()
        step = max(1, flat.numel() // 256)
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(flat[::step].numpy().tobytes())
    return "w2v2-" + digest.hexdigest()[:24]

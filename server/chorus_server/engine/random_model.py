"""`chorus dev random-model`: a random-weight backbone in HF layout plus random adapters of every kind.

Random weights are fine for speed measurements and for exactness checks (batch invariance, parity), which is
what tests, benchmarks and smoke runs use this for. Norm parameters and adapter up-projections are perturbed
away from identity so that a mistake in any of them changes the output.
"""

from __future__ import annotations

import dataclasses
import os
import string
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from chorus_server.engine.adapter_format import MMS_RENAMES, save_adapter
from chorus_server.engine.adapters import Adapter, AdapterInfo, Vocabulary
from chorus_server.engine.backbone import Backbone
from chorus_server.engine.checkpoint import PREFIX, fingerprint, hf_vocab, load_backbone, write_checkpoint
from chorus_server.engine.config import BackboneConfig

PRESETS: dict[str, BackboneConfig] = {
    # Post-LN, GroupNorm front end: wav2vec2-base layout at toy size.
    "tiny": BackboneConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    ),
    # Pre-LN, LayerNorm front end, conv bias, MMS adapter slots: MMS layout at toy size.
    "tiny-mms": BackboneConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=15,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
        adapter_attn_dim=8,
    ),
    "base": BackboneConfig(),  # facebook/wav2vec2-base geometry
    # wav2vec2-base geometry in the MMS layout (pre-LN, LayerNorm front end, 16-wide adapter slots): the
    # swap-per-request benchmark runs transformers' `load_adapter` on it (353 k-parameter adapters).
    "base-mms": BackboneConfig(
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, adapter_attn_dim=16
    ),
    "large-mms": BackboneConfig(  # facebook/mms-1b-all geometry (about 1 B parameters, 4 GB in fp32)
        hidden_size=1280,
        num_hidden_layers=48,
        num_attention_heads=16,
        intermediate_size=5120,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
        adapter_attn_dim=16,
    ),
}
LANGUAGES = ("eng", "fra", "deu", "spa", "ita", "nld", "pol", "por", "swe", "fin")


def random_vocab(generator: torch.Generator, size: int) -> Vocabulary:
    """HF-style CTC vocabulary: <pad> (blank) first, specials, the word delimiter, then `size` letters."""
    letters = list(string.ascii_lowercase + "àâçéèêëîïôûùüÿñäöß'")
    order = torch.randperm(len(letters), generator=generator).tolist()
    chosen = sorted(letters[i] for i in order[: max(1, min(size, len(letters)))])
    return Vocabulary(("<pad>", "<s>", "</s>", "<unk>", "|", *chosen), blank_id=0, word_delimiter_id=4)


def randomize_(module: torch.nn.Module, generator: torch.Generator, scale: float = 1.0) -> None:
    """Re-draw every parameter: linear/conv weights ~ U(±scale/sqrt(fan_in)), norm weights ~ 1 ± 0.2."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            owner_name = name.rsplit(".", 1)[0]
            owner = module.get_submodule(owner_name)
            if isinstance(owner, torch.nn.LayerNorm | torch.nn.GroupNorm) or owner_name.endswith("norm"):
                base = 1.0 if name.endswith("weight") else 0.0
                param.copy_(base + 0.2 * torch.randn(param.shape, generator=generator))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
            else:
                fan_in = param[0].numel()
                bound = scale / fan_in**0.5
                param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * bound)


def randomize_tensors_(tensors: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    """Adapter tensors by file name (views): norms ~ 1 ± 0.2, biases ~ N(0, 0.1²), matrices ~ U(±1/sqrt(fan_in))."""
    with torch.no_grad():
        for name, param in tensors.items():
            if ".norm." in name:
                base = 1.0 if name.endswith("weight") else 0.0
                param.copy_(base + 0.2 * torch.randn(param.shape, generator=generator))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
            else:
                bound = 1.0 / param[0].numel() ** 0.5
                param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * bound)


def random_adapter(
    config: BackboneConfig, kind: str, name: str, dim: int, layers: list[int], vocab_size: int, seed: int, fp: str
) -> Adapter:
    generator = torch.Generator().manual_seed(seed)
    info = AdapterInfo(name=name, kind=kind, language=name.split("-")[0], backbone_fingerprint=fp)
    adapter = Adapter(info, random_vocab(generator, vocab_size), config.hidden_size, dim, layers)
    randomize_tensors_(adapter.tensors(), generator)
    return adapter


def random_classifier(
    config: BackboneConfig,
    name: str,
    labels: list[str],
    dim: int,
    layers: list[int],
    seed: int,
    fp: str,
    cnn_dim: int = 0,
    cnn_layers: Sequence[int] = (),
    normalize_states: bool = False,
    pooling: str = "mean",
    num_states: int | None = None,
) -> Adapter:
    """A classifier adapter (kind `classifier`) over `labels`; `dim=0` and no layers: no bottlenecks. `cnn_layers`:
    conv layers with CNN adapters of size `cnn_dim` after them; `num_states`: mixes the first N hidden states only
    (default: all)."""
    generator = torch.Generator().manual_seed(seed)
    info = AdapterInfo(name=name, kind="classifier", task="classify", backbone_fingerprint=fp)
    vocab = Vocabulary.of_labels(labels)
    cnn = {i: config.conv_dim[i] for i in cnn_layers}
    states = num_states or config.num_hidden_layers + 1
    adapter = Adapter(info, vocab, config.hidden_size, dim, layers, states, cnn, cnn_dim, normalize_states, pooling)
    randomize_tensors_(adapter.tensors(), generator)
    return adapter


def mms_tensors(adapter: Adapter) -> dict[str, torch.Tensor]:
    """Native MMS-kind adapter -> HF/MMS key names (`wav2vec2.encoder.layers.N.adapter_layer.*`, `lm_head.*`)."""
    back = {v: k for k, v in MMS_RENAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in adapter.tensors().items():
        if key.startswith("head."):
            out["lm_head." + key.removeprefix("head.")] = value.contiguous()
            continue
        _, layer, _site, module, param = key.split(".")
        out[f"{PREFIX}encoder.layers.{layer}.adapter_layer.{back[module]}.{param}"] = value.contiguous()
    return out


def write_random_model(
    out: str | os.PathLike[str], preset: str, num_adapters: int, seed: int = 0, num_layers: int | None = None
) -> list[Path]:
    """Write the backbone to `out` (config.json, preprocessor_config.json, model.safetensors, vocab.json) and
    `num_adapters` native adapters to `out/adapters/`. Pre-LN presets with MMS slots also get MMS-layout
    `adapter.<lang>.safetensors` files beside the model. Returns the native adapter paths."""
    out = Path(out)
    config = PRESETS[preset]
    if num_layers is not None:
        config = dataclasses.replace(config, num_hidden_layers=num_layers)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    backbone = Backbone(config)
    randomize_(backbone, generator)

    head_adapter = random_adapter(
        config,
        "mms" if config.adapter_attn_dim else "head",
        "eng",
        config.adapter_attn_dim or 0,
        list(range(config.num_hidden_layers)) if config.adapter_attn_dim else [],
        26,
        seed + 1,
        "",
    )
    vocab_json: dict = hf_vocab(head_adapter.vocab)
    if config.adapter_attn_dim:  # MMS layout: nested vocab and adapter.<lang>.safetensors files (no fingerprint)
        vocab_json = {"eng": vocab_json}
        for k, lang in enumerate(LANGUAGES[1:4]):
            dim = config.adapter_attn_dim
            mms = random_adapter(
                config, "mms", lang, dim, list(range(config.num_hidden_layers)), 12 + 5 * k, seed + 100 + k, ""
            )
            save_file(mms_tensors(mms), str(out / f"adapter.{lang}.safetensors"))
            vocab_json[lang] = hf_vocab(mms.vocab)
    write_checkpoint(out, backbone, mms_tensors(head_adapter), vocab_json)
    # The fingerprint is defined by what the loader builds from the files (weight norm folded back).
    fp = fingerprint(load_backbone(out, config)[0])

    adapter_dir = out / "adapters"
    adapter_dir.mkdir(exist_ok=True)
    kinds = ["houlsby", "mms"] if config.do_stable_layer_norm else ["houlsby"]
    paths = []
    n_layers = config.num_hidden_layers
    for i in range(num_adapters):
        kind = kinds[i % len(kinds)]
        top_k = n_layers if i % 3 else max(1, n_layers // 2)  # every third adapter: top half of the layers only
        dim = (4, 8, 16, 32, 64)[i % 5] if config.hidden_size <= 64 else (16, 32, 64, 128, 256)[i % 5]
        name = f"{LANGUAGES[i % len(LANGUAGES)]}-{i}"
        adapter = random_adapter(
            config, kind, name, dim, list(range(n_layers - top_k, n_layers)), 8 + 3 * (i % 7), seed + 1000 + i, fp
        )
        path = adapter_dir / f"{name}.safetensors"
        save_adapter(adapter, path)
        paths.append(path)
    return paths

"""Backbone configuration, read from a Hugging Face `config.json` (+ `preprocessor_config.json`)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chorus_server.engine.errors import CheckpointError
from chorus_server.engine.layers import ACTIVATIONS


@dataclass(frozen=True)
class BackboneConfig:
    """The subset of `Wav2Vec2Config` that defines the backbone's computation (field names follow HF)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"  # "group": GroupNorm in conv 0 only; "layer": LayerNorm in every conv
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False  # True: pre-LN layers (large / XLS-R / MMS); False: post-LN (base)
    adapter_attn_dim: int | None = None  # MMS adapters inside the checkpoint, if any
    vocab_size: int = 32
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.feat_extract_norm not in ("group", "layer"):
            raise CheckpointError(f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}")
        if not (len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel)) or not self.conv_dim:
            raise CheckpointError(
                f"conv_dim, conv_stride and conv_kernel must have the same non-zero length, got "
                f"{len(self.conv_dim)}, {len(self.conv_stride)}, {len(self.conv_kernel)}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise CheckpointError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        for name in ("hidden_act", "feat_extract_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise CheckpointError(f"{name}={getattr(self, name)!r} is not one of {sorted(ACTIVATIONS)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def receptive_field(self) -> int:
        """Samples needed for one output frame (400 for the standard front end)."""
        field_ = 1
        for kernel, stride in reversed(list(zip(self.conv_kernel, self.conv_stride, strict=True))):
            field_ = (field_ - 1) * stride + kernel
        return field_

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Samples per output frame (320 for the standard front end: 20 ms at 16 kHz)."""
        ratio = 1
        for stride in self.conv_stride:
            ratio *= stride
        return ratio

    def architecture_dict(self) -> dict[str, Any]:
        """Fields that define the computation; part of the backbone fingerprint."""
        fields = asdict(self)
        fields.pop("vocab_size")
        fields.pop("pad_token_id")
        return fields

    def to_hf_dict(self) -> dict[str, Any]:
        """A `config.json` body that transformers' `Wav2Vec2Config` accepts."""
        body: dict[str, Any] = {
            "model_type": "wav2vec2",
            "architectures": ["Wav2Vec2ForCTC"],
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()},
            "num_feat_extract_layers": len(self.conv_dim),
            "hidden_dropout": 0.0,
            "activation_dropout": 0.0,
            "attention_dropout": 0.0,
            "feat_proj_dropout": 0.0,
            "final_dropout": 0.0,
            "layerdrop": 0.0,
            "mask_time_prob": 0.0,
            "ctc_loss_reduction": "mean",
        }
        return body

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any]) -> BackboneConfig:
        if raw.get("add_adapter"):
            raise CheckpointError("config has add_adapter=true (seq2seq conv adapter); Chorus serves CTC models only")
        if raw.get("model_type", "wav2vec2") != "wav2vec2":
            raise CheckpointError(f"model_type must be 'wav2vec2', got {raw.get('model_type')!r}")
        known = {f for f in cls.__dataclass_fields__}
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if key in known:
                kwargs[key] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> BackboneConfig:
        config_file = Path(path) / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{config_file} not found; a backbone directory needs config.json")
        try:
            raw = json.loads(config_file.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{config_file} is not valid JSON: {exc}") from exc
        return cls.from_hf_dict(raw)


@dataclass(frozen=True)
class PreprocessConfig:
    """What transformers' `Wav2Vec2FeatureExtractor` does before the model (from `preprocessor_config.json`)."""

    sampling_rate: int = 16_000
    do_normalize: bool = True
    padding_value: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> PreprocessConfig:
        file = Path(path) / "preprocessor_config.json"
        if not file.is_file():
            return cls()
        raw = json.loads(file.read_text())
        return cls(
            sampling_rate=int(raw.get("sampling_rate", 16_000)),
            do_normalize=bool(raw.get("do_normalize", True)),
            padding_value=float(raw.get("padding_value", 0.0)),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        return {
            "feature_extractor_type": "Wav2Vec2FeatureExtractor",
            "feature_size": 1,
            "sampling_rate": self.sampling_rate,
            "do_normalize": self.do_normalize,
            "padding_value": self.padding_value,
            "padding_side": "right",
            "return_attention_mask": True,
        }

"""Train a small wav2vec 2.0-architecture backbone from scratch with CTC and write it in HF layout.

The result is an ordinary checkpoint directory (config.json, preprocessor_config.json, model.safetensors with
`lm_head.*`, vocab.json) that `Engine.from_pretrained` loads; its CTC head becomes the default adapter.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from chorus_server.engine.adapters import Vocabulary
from chorus_server.engine.backbone import Backbone
from chorus_server.engine.checkpoint import hf_vocab, load_backbone, write_checkpoint
from chorus_server.engine.config import BackboneConfig
from chorus_training.loop import TrainConfig, train_ctc
from chorus_training.manifest import build_vocab, load_examples
from chorus_training.model import CTCModel, Masking

logger = logging.getLogger(__name__)

# About 3 M parameters, sized for a CPU budget of well under one core-hour: a narrow front end with GroupNorm in its
# first conv only (on CPU most of a wav2vec 2.0 front end's cost is its wide early convs and per-layer norms at
# high frame rates), standard strides (20 ms frames), and six pre-LN transformer layers of width 192.
DEMO_CONFIG = BackboneConfig(
    hidden_size=192,
    num_hidden_layers=6,
    num_attention_heads=4,
    intermediate_size=768,
    feat_extract_norm="group",
    do_stable_layer_norm=True,
    conv_bias=True,
    conv_dim=(32, 64, 96, 128, 192, 192, 192),
    num_conv_pos_embeddings=32,
    num_conv_pos_embedding_groups=16,
)


def write_hf_dir(
    backbone: Backbone, head: nn.Linear, vocab: Vocabulary, out: Path, dtype: torch.dtype = torch.float16
) -> None:
    """Export a trained backbone and CTC head as an HF-layout checkpoint directory."""
    head_tensors = {"lm_head.weight": head.weight.detach().clone(), "lm_head.bias": head.bias.detach().clone()}
    write_checkpoint(out, backbone, head_tensors, hf_vocab(vocab), dtype=dtype)


def load_initial(init: Path, vocab: Vocabulary) -> tuple[Backbone, nn.Linear]:
    """Backbone and CTC head from an HF-layout directory (an earlier export) to continue training from.

    The directory's vocabulary must be the one built from the training transcripts, so every head row keeps its
    meaning."""
    config = BackboneConfig.from_dir(init)
    backbone, head_tensors, _ = load_backbone(init, config)
    vocab_file = init / "vocab.json"
    if not head_tensors or not vocab_file.is_file():
        raise ValueError(f"{init} has no CTC head (lm_head + vocab.json) to continue from")
    if json.loads(vocab_file.read_text()) != hf_vocab(vocab):
        raise ValueError(f"{init}/vocab.json differs from the vocabulary of the training transcripts")
    head = nn.Linear(config.hidden_size, len(vocab))
    with torch.no_grad():
        head.weight.copy_(head_tensors["weight"].float())
        head.bias.copy_(head_tensors["bias"].float())
    return backbone, head


def train_backbone(
    train_manifest: Path,
    valid_manifest: Path,
    out: Path,
    config: TrainConfig,
    run_dir: Path,
    architecture: BackboneConfig = DEMO_CONFIG,
    threads: int | None = None,
    init: Path | None = None,
) -> float:
    """Train backbone + CTC head on a manifest; the best (validation CER) weights are written to `out`.

    `init`: start from the weights of an HF-layout directory (e.g. the shipped demo backbone) instead of random
    ones; its architecture replaces `architecture`, and those weights stay the export unless training beats them. A
    run directory's saved state still takes precedence."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    train = load_examples(train_manifest)
    valid = load_examples(valid_manifest)
    vocab = build_vocab(e.text for e in train)
    logger.info("%d train / %d valid utterances, vocabulary of %d", len(train), len(valid), len(vocab))
    if init is not None:
        backbone, head = load_initial(init, vocab)
        logger.info("starting from the weights in %s", init)
    else:
        backbone = Backbone(architecture)
        head = nn.Linear(architecture.hidden_size, len(vocab))
    model = CTCModel(backbone, head, masking=Masking())
    logger.info("backbone: %.2f M parameters", sum(p.numel() for p in backbone.parameters()) / 1e6)

    def export(cer: float) -> None:
        write_hf_dir(backbone, head, vocab, out)
        (run_dir / "best.json").write_text(json.dumps({"valid_cer": cer}))
        logger.info("wrote %s (valid CER %.4f)", out, cer)

    return train_ctc(model, train, valid, vocab, config, run_dir, export, evaluate_first=init is not None)

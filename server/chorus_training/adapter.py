"""`chorus train-adapter`: the seed paper's recipe on a frozen backbone.

Houlsby-style bottleneck adapters (after attention and after the feed-forward block of every layer, or only the
top K layers) plus a new CTC head over a vocabulary built from the training transcripts; the backbone is
frozen. The best weights by validation CER are written as a native adapter file carrying the backbone's
fingerprint, ready for the adapter store. `full_finetune=True` instead trains the whole transformer (not the
convolutional front end) with a new head, the baseline of the seed paper's comparison, and writes a complete
fine-tuned model directory (HF layout) instead of an adapter file.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from chorus_server.engine.adapter_format import save_adapter
from chorus_server.engine.adapters import Adapter, AdapterInfo
from chorus_server.engine.engine import Engine
from chorus_training.backbone import write_hf_dir
from chorus_training.loop import TrainConfig, train_ctc
from chorus_training.manifest import build_vocab, error_rate, load_examples
from chorus_training.model import CTCModel, Masking

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterSpec:
    lang: str
    name: str = ""  # defaults to the language
    bottleneck_dim: int = 64
    top_k: int | None = None  # adapters in the top K layers only; None: every layer
    full_finetune: bool = False
    head_from_backbone: bool = True  # start head rows of shared tokens from the backbone's own CTC head


@dataclass(frozen=True)
class AdapterResult:
    valid_cer: float
    trainable_parameters: int
    backbone_parameters: int
    minutes: float = 0.0

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_parameters / self.backbone_parameters


def build_adapter(engine: Engine, spec: AdapterSpec, vocab_texts: list[str], seed: int) -> Adapter:
    layers = engine.config.num_hidden_layers
    top_k = layers if spec.top_k is None else spec.top_k
    if not 1 <= top_k <= layers:
        raise ValueError(f"--top-k must lie in [1, {layers}] for this backbone, got {top_k}")
    info = AdapterInfo(
        name=spec.name or spec.lang,
        kind="head" if spec.full_finetune else "houlsby",
        language=spec.lang,
        backbone_fingerprint=engine.fingerprint,
    )
    adapter = Adapter(
        info,
        build_vocab(vocab_texts),
        engine.config.hidden_size,
        spec.bottleneck_dim,
        range(layers - top_k, layers),
    )
    return adapter.reset_parameters(torch.Generator().manual_seed(seed))


@torch.no_grad()
def copy_shared_head_rows(adapter: Adapter, source: Adapter) -> int:
    """Initialise the head rows of tokens the source head also has (letters shared with the backbone's language,
    blank, delimiter) from the source head. Returns the number of rows copied."""
    source_ids = {token: i for i, token in enumerate(source.vocab.tokens)}
    copied = 0
    for i, token in enumerate(adapter.vocab.tokens):
        j = source_ids.get(token)
        if j is not None:
            adapter.head.weight[i] = source.head.weight[j].to(adapter.head.weight.dtype)
            adapter.head.bias[i] = source.head.bias[j].to(adapter.head.bias.dtype)
            copied += 1
    return copied


def train_adapter(
    backbone_dir: Path,
    train_manifest: Path,
    valid_manifest: Path,
    spec: AdapterSpec,
    out: Path | None,
    config: TrainConfig,
    run_dir: Path,
) -> AdapterResult:
    """Train an adapter (or, with `spec.full_finetune`, the whole transformer) and write the best to `out`."""
    torch.manual_seed(config.seed)
    loaded = Engine.from_pretrained(backbone_dir, device="cpu", dtype="float32")
    engine = loaded.engine
    train = load_examples(train_manifest)
    valid = load_examples(valid_manifest)
    adapter = build_adapter(engine, spec, [e.text for e in train], config.seed)
    if spec.head_from_backbone and loaded.default_adapter is not None:
        copied = copy_shared_head_rows(adapter, loaded.default_adapter)
        logger.info("head: %d of %d rows start from the backbone's CTC head", copied, len(adapter.vocab))
    backbone = engine.backbone
    backbone_parameters = sum(p.numel() for p in backbone.parameters())
    if spec.full_finetune:
        backbone = copy.deepcopy(backbone)
        backbone.encoder.requires_grad_(True)
    model = CTCModel(backbone, adapter.head, None if spec.full_finetune else adapter, Masking())
    adapter.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "%s: %d train / %d valid utterances, vocabulary of %d, %d trainable parameters (%.1f%% of the backbone)",
        spec.name or spec.lang,
        len(train),
        len(valid),
        len(adapter.vocab),
        trainable,
        100 * trainable / backbone_parameters,
    )

    def export(cer: float) -> None:
        (run_dir / "best.json").write_text(json.dumps({"valid_cer": cer}))
        if out is None:
            return
        if spec.full_finetune:
            write_hf_dir(backbone, adapter.head, adapter.vocab, out, dtype=torch.float32)
        else:
            adapter.info = dataclasses.replace(adapter.info, extra={**adapter.info.extra, "valid_cer": f"{cer:.4f}"})
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            save_adapter(adapter, tmp)
            tmp.replace(out)
        logger.info("wrote %s (valid CER %.4f)", out, cer)

    best = train_ctc(model, train, valid, adapter.vocab, config, run_dir, export)
    return AdapterResult(best, trainable, backbone_parameters)


def transcribe_manifest(
    backbone_dir: Path, manifest: Path, adapter_file: Path | None = None, batch_size: int = 16
) -> tuple[list[str], list[str]]:
    """(references, hypotheses) for a manifest through the serving engine: the given adapter file, or the
    checkpoint's own CTC head when `adapter_file` is None."""
    from chorus_server.engine.adapter_format import load_adapter

    loaded = Engine.from_pretrained(backbone_dir, device="cpu", dtype="float32")
    adapter = loaded.engine.prepare(load_adapter(adapter_file)) if adapter_file else loaded.default_adapter
    if adapter is None:
        raise ValueError(f"{backbone_dir} has no CTC head; pass an adapter file")
    examples = load_examples(manifest)
    hypotheses: list[str] = []
    for start in range(0, len(examples), batch_size):
        chunk = [e.audio.astype("float32") / 32768.0 for e in examples[start : start + batch_size]]
        hypotheses += [t.text for t in loaded.engine.transcribe(chunk, [adapter] * len(chunk))]
    return [e.text for e in examples], hypotheses


def test_cer(backbone_dir: Path, manifest: Path, adapter_file: Path | None = None) -> float:
    """Corpus CER of the engine (with `adapter_file`, or the checkpoint's own head) on a manifest."""
    return error_rate(*transcribe_manifest(backbone_dir, manifest, adapter_file))
